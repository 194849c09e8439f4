"""The functions of the public API; see the package docstring."""
from __future__ import annotations

import os

import onnx

from graphprune.analysis import Analysis, Group, analyse_graph, fingerprint
from graphprune.counting import Counts, count
from graphprune.inputs import check_input_shapes
from graphprune.modelio import read_model, write_model
from graphprune.passes import NormalizePass, PruneChannelsPass
from graphprune.passes.normalize import pinned_shapes
from graphprune.selection import PruningPlan, choose
from graphprune.verify import VerifyReport, verify

__all__ = ["load", "analyse", "choose", "prune", "verify", "count", "save", "Analysis", "Group",
           "PruningPlan", "VerifyReport", "Counts"]

# fingerprints of models `load` produced, so `analyse` does not normalise them again
_NORMALISED: set[str] = set()


def load(model: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """Read (if a path) and normalise a model; the input object is never modified."""
    proto = model if isinstance(model, onnx.ModelProto) else read_model(model)
    out = NormalizePass().run(proto)
    _NORMALISED.add(fingerprint(out))
    return out


def analyse(model: onnx.ModelProto, allow_inexact: bool = False,
            input_shapes: dict[str, list[int]] | None = None) -> Analysis:
    """Find the channel groups of `model` (normalised first unless it came from `load`).

    `input_shapes` ({input name: dims}) pins dynamic dims for the analysis only, so shapes
    that depend on them are known; the plan still prunes the model with its dynamic dims."""
    if fingerprint(model) not in _NORMALISED:
        model = load(model)
    check_input_shapes(model, input_shapes)
    shaped = pinned_shapes(model, input_shapes) if input_shapes else None
    return analyse_graph(model, allow_inexact=allow_inexact, shaped=shaped)


def prune(model: onnx.ModelProto, plan: PruningPlan, check: bool = True) -> onnx.ModelProto:
    """Apply `plan` to `model` (the model it was made for) and return the smaller model."""
    if fingerprint(model) != plan.analysis.fingerprint and fingerprint(load(model)) == plan.analysis.fingerprint:
        model = plan.analysis.model  # the raw model whose normalised form the plan describes
    return PruneChannelsPass(plan, check=check).run(model)  # any other model: a clear error


def save(model: onnx.ModelProto, path: str | os.PathLike, source: str | os.PathLike | None = None):
    """Write atomically; refuses to overwrite `source`."""
    return write_model(model, path, source=source)
