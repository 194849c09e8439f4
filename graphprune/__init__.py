"""graphprune: hardware-aware filter pruning of CNNs as ONNX graph transformations.

The Python API mirrors the CLI, on `onnx.ModelProto`:

    m = graphprune.load("model.onnx")            # read + normalise
    an = graphprune.analyse(m)                   # channel groups
    plan = graphprune.choose(an, ratio=0.3)      # which channels to keep
    pruned = graphprune.prune(m, plan)           # smaller, valid ONNX
    report = graphprune.verify(m, plan, pruned)  # exactness proof
"""
from graphprune.api import Analysis, Counts, Group, PruningPlan, VerifyReport, analyse, choose, count, load, prune, save, verify
from graphprune.errors import GraphpruneError

__version__ = "0.1.0"
__all__ = ["load", "analyse", "choose", "prune", "verify", "count", "save", "Analysis", "Group",
           "PruningPlan", "VerifyReport", "Counts", "GraphpruneError"]
