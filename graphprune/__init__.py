"""graphprune: hardware-aware filter pruning of CNNs as ONNX graph transformations.

The Python API mirrors the CLI, on `onnx.ModelProto`:

    m = graphprune.load("model.onnx")            # read + normalise
    an = graphprune.analyse(m)                   # channel groups
    plan = graphprune.choose(an, ratio=0.3)      # which channels to keep
    pruned = graphprune.prune(m, plan)           # smaller, valid ONNX
    report = graphprune.verify(m, plan, pruned)  # exactness proof

The API names are resolved on first use (PEP 562): `import graphprune` alone, which
every `graphprune` command and `--help` does, does not import onnx, onnx-graphsurgeon,
onnxruntime or scipy (seconds of start-up on a small machine).
"""
import sys
import types

from graphprune.errors import GraphpruneError

__version__ = "0.1.0"
__all__ = ["load", "analyse", "choose", "prune", "verify", "count", "save", "Analysis", "Group",
           "PruningPlan", "VerifyReport", "Counts", "GraphpruneError"]
_API = frozenset(__all__) - {"GraphpruneError"}


def __getattr__(name: str):
    if name in _API:
        from graphprune import api
        value = getattr(api, name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'graphprune' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _API)


class _Package(types.ModuleType):
    """Importing the submodule graphprune.verify sets the package attribute `verify` to that module;
    the API function of the same name must win, as it did when this file imported the API eagerly."""

    def __setattr__(self, name, value):
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
