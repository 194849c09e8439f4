"""Dynamic, class-conditional filter pruning (DyFiP): an early coarse branch, per-class XAI
importance, and one deployable ONNX model with an early exit and per-input gated filters.

    from graphprune.dynamic import build_dynamic, DynamicOptions
    result = build_dynamic("model.onnx", (x, y), DynamicOptions(k=3, threshold=0.9, budget=0.5))
    graphprune.save(result.model, "dynamic.onnx")

Modules, one job each: `graph` (branch point, trunk/rest split, which convs can be gated;
no torch), `selection` (per-class importance as exact integer tables, top-N rule),
`gated` (the torch model, head training, fine-tuning with the gating in place), `export`
(the ONNX assembly: If, TopK, Gather), `subsets` (the same model with one constant-weight
rest per class subset), `probe` (path latencies measured on shape-only probes; the budget
from a latency target), `branch_search` (candidates tried and picked), `plan` (the choices
made before training), `build` (the recipe end to end), `measure` (accuracy and latency over
data with onnxruntime/TVM, as `graphprune bench` times).
Heavy modules load on first use so that the CLI's parser stays light.
"""
__all__ = ["build_dynamic", "DynamicOptions", "DynamicResult"]

_LAZY = {"build_dynamic": "build", "DynamicOptions": "build", "DynamicResult": "build"}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f"graphprune.dynamic.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'graphprune.dynamic' has no attribute {name!r}")
