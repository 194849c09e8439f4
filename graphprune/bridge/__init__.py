"""ONNX -> torch.nn.Module bridge (see graphprune.bridge.module for the mapping rules).

Split in three because the three change for different reasons: `module` walks the
graph and owns the name <-> module mapping and write-back, `layers` builds the nodes
that must be real nn modules (so zennit/captum can find and hook them), `ops` runs
every other operator as a small torch function.
"""
from graphprune.bridge.layers import Sum
from graphprune.bridge.module import OnnxModule, to_torch

__all__ = ["OnnxModule", "to_torch", "Sum"]
