"""The functions of the public API; see the package docstring."""
from __future__ import annotations

import os

import onnx

from graphprune.analysis import Analysis, Group, analyse_graph, fingerprint
from graphprune.counting import Counts, count
from graphprune.errors import GraphpruneError
from graphprune.inputs import checked_shapes
from graphprune.modelio import parse_model, read_model, write_model
from graphprune.passes import NormalizePass, PruneChannelsPass
from graphprune.passes.normalize import pinned_shapes
from graphprune.plan_target import model_for_plan
from graphprune.selection import PruningPlan, choose
from graphprune.smoke import check_pruned_runs
from graphprune.verify import VerifyReport, verify
from graphprune.weights import check_finite_weights

__all__ = ["load", "analyse", "choose", "prune", "verify", "count", "save", "Analysis", "Group",
           "PruningPlan", "VerifyReport", "Counts"]

# fingerprints of models `load` produced, so `analyse` does not normalise them again
_NORMALISED: set[str] = set()


def load(model: str | os.PathLike | bytes | onnx.ModelProto) -> onnx.ModelProto:
    """Read (a path), parse (serialized bytes) or take a ModelProto, and normalise it;
    the input object is never modified.

    Models with NaN weights (or Inf in a layer's parameters) are refused here, after
    normalisation folded weights computed by Constant nodes, so every path (analyse, prune,
    importance criteria) sees only finite weights."""
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
    check_finite_weights(out)
    _NORMALISED.add(fingerprint(out))
    return out


def analyse(model: onnx.ModelProto, allow_inexact: bool = False,
            input_shapes: dict[str, list[int]] | None = None) -> Analysis:
    """Find the channel groups of `model` (normalised first unless it came from `load`).

    `input_shapes` ({input name: dims}) pins dynamic dims for the analysis only, so shapes
    that depend on them are known; the plan still prunes the model with its dynamic dims."""
    if fingerprint(model) not in _NORMALISED:
        model = load(model)
    else:
        check_finite_weights(model)  # same structure as a loaded model, but maybe other weights
    input_shapes = checked_shapes(model, input_shapes)
    shaped = pinned_shapes(model, input_shapes) if input_shapes else None
    return analyse_graph(model, allow_inexact=allow_inexact, shaped=shaped)


def prune(model: onnx.ModelProto, plan: PruningPlan, check: bool = True, *,
          input_shapes: dict[str, list[int]] | None = None) -> onnx.ModelProto:
    """Apply `plan` to `model` and return the smaller model; `model` is never modified.

    `model` is the model the plan was made for (raw or from `load`) or another model with
    exactly its structure, e.g. a fine-tuned checkpoint: its OWN weights are pruned, with
    the plan's channel choice. A model of another structure is refused, naming the first
    difference. With `check` (the default) the pruned model must pass the ONNX checker and
    onnxruntime must load it and run it once on random inputs (shaped by `input_shapes`,
    default: batch 1, other dynamic dims 64) with the original's output shapes; a model
    onnxruntime cannot run even before pruning is refused as such. `verify` proves values.
    """
    base = model_for_plan(model, plan)
    shapes = checked_shapes(base, input_shapes)
    pruned = PruneChannelsPass(plan, check=check).run(base)
    if check:
        check_pruned_runs(base, pruned, shapes, exact=not plan.inexact())
    return pruned


def save(model: onnx.ModelProto, path: str | os.PathLike, source: str | os.PathLike | None = None):
    """Write atomically; refuses to overwrite `source`."""
    return write_model(model, path, source=source)
