"""The names of the importance methods, with no heavy import.

Kept apart from the scorers so that `graphprune --help` (the CLI registers its
`--method` choices from here) does not import torch, zennit or captum.
"""
DATA_FREE = ("l1", "l2", "bn")
XAI = ("lrp", "deeplift", "ig", "gradcam", "conductance", "taylor")
ACTIVATION = ("energy",)          # data-driven, any model, no class: graphprune.importance.energy
DATA_DRIVEN = XAI + ACTIVATION
METHODS = DATA_FREE + DATA_DRIVEN
# XAI methods attribute with respect to a class: these need a target per sample
NEEDS_TARGET = XAI
