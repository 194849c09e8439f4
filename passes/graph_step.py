"""What the graph-level normalisation steps share: running one as a pass, rewiring readers.

The steps (fold_constants, control_flow) work on one imported gs graph so NormalizePass
imports and exports a model once; `graph_pass` wraps a step as a model-in, model-out pass
for callers that want only that step.
"""
from __future__ import annotations

from typing import Callable

import onnx
import onnx_graphsurgeon as gs

from graphprune.analysis import import_graph
from graphprune.passes.rewrite import export
from graphprune.shapes import infer_shapes


def graph_pass(model: onnx.ModelProto, step: Callable[[gs.Graph], bool]) -> onnx.ModelProto:
    """Run a graph-level step on a copy of `model` (shapes inferred before and after)."""
    graph = import_graph(infer_shapes(model))
    step(graph)
    return infer_shapes(export(graph, model))


def replace_uses(old: gs.Tensor, new: gs.Tensor) -> None:
    """Every node that reads `old` (in any scope) reads `new` instead."""
    for consumer in list(old.outputs):
        for i, t in enumerate(consumer.inputs):
            if t is old:
                consumer.inputs[i] = new
