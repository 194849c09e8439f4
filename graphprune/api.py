"""The functions of the public API; see the package docstring."""
from __future__ import annotations

import os

import onnx

from graphprune.analysis import Analysis, Group, analyse_graph, fingerprint
from graphprune.counting import Counts, count
from graphprune.errors import GraphpruneError
from graphprune.modelio import parse_model, read_model, write_model
from graphprune.passes import NormalizePass, PruneChannelsPass
from graphprune.selection import PruningPlan, choose
from graphprune.verify import VerifyReport, verify

__all__ = ["load", "analyse", "choose", "prune", "verify", "count", "save", "Analysis", "Group",
           "PruningPlan", "VerifyReport", "Counts"]

# fingerprints of models `load` produced, so `analyse` does not normalise them again
_NORMALISED: set[str] = set()


def load(model: str | os.PathLike | bytes | onnx.ModelProto) -> onnx.ModelProto:
    """Read (a path), parse (serialized bytes) or take a ModelProto, and normalise it;
    the input object is never modified."""
    if isinstance(model, onnx.ModelProto):
        proto = model
    elif isinstance(model, (bytes, bytearray, memoryview)):
        proto = parse_model(model)
    elif isinstance(model, (str, os.PathLike)):
        proto = read_model(model)
    else:
        raise GraphpruneError(f"load() takes a file path, serialized model bytes or an onnx.ModelProto, "
                              f"not {type(model).__name__}")
    out = NormalizePass().run(proto)
    _NORMALISED.add(fingerprint(out))
    return out


def analyse(model: onnx.ModelProto, allow_inexact: bool = False) -> Analysis:
    """Find the channel groups of `model` (normalised first unless it came from `load`)."""
    if fingerprint(model) not in _NORMALISED:
        model = load(model)
    return analyse_graph(model, allow_inexact=allow_inexact)


def prune(model: onnx.ModelProto, plan: PruningPlan, check: bool = True) -> onnx.ModelProto:
    """Apply `plan` to `model` (the model it was made for) and return the smaller model."""
    if fingerprint(model) != plan.analysis.fingerprint and fingerprint(load(model)) == plan.analysis.fingerprint:
        model = plan.analysis.model  # the raw model whose normalised form the plan describes
    return PruneChannelsPass(plan, check=check).run(model)  # any other model: a clear error


def save(model: onnx.ModelProto, path: str | os.PathLike, source: str | os.PathLike | None = None):
    """Write atomically; refuses to overwrite `source`."""
    return write_model(model, path, source=source)
