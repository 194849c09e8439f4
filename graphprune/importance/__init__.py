"""Per-channel importance scores (data-free and XAI criteria), stored in the model's metadata.

    from graphprune.importance import compute_importance
    imp = compute_importance(model, data, "lrp")
    scored = imp.to_model(model)

Modules: `methods` (the method names, no heavy import: the CLI reads them),
`core` (compute_importance, Importance, normalisation), `data_free` (which layers
are scored; l1/l2/bn), `xai` (LRP/Taylor and the batching loop), `captum_layers`
(captum's layer methods at all layers in one pass), `checks` (refusing bad
options and non-finite weights), `naming` (node names of the written model).
The heavy names are imported on first use so that importing the package (as
the CLI does for METHODS) does not import torch.
"""
from graphprune.importance.methods import DATA_DRIVEN, DATA_FREE, METHODS

__all__ = ["METHODS", "DATA_FREE", "DATA_DRIVEN", "compute_importance", "Importance", "read_per_class",
           "normalise", "producer_modules", "conv_modules"]

_LAZY = {"compute_importance": "core", "Importance": "core", "read_per_class": "core", "normalise": "core",
         "data_hash": "core", "producer_modules": "data_free", "conv_modules": "data_free"}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f"graphprune.importance.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'graphprune.importance' has no attribute {name!r}")
