"""Shared driver of the plan-driven rewrites: walk the graph, let each op's rule act."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper

from graphprune.arrays import constant_values
from graphprune.analysis import fingerprint, import_graph, walk_graphs
from graphprune.channel_rules import rule_for
from graphprune.channels import RewriteContext
from graphprune.errors import GraphpruneError
from graphprune.passes.base import copy_model_fields
from graphprune.selection import PruningPlan


def apply_rules(model: onnx.ModelProto, plan: PruningPlan, method: str) -> gs.Graph:
    """Import `model`, call `rule.<method>` on every node with the plan's masks."""
    if fingerprint(model) != plan.analysis.fingerprint:
        raise GraphpruneError("the pruning plan was made for another model (analyse this model first)")
    graph = import_graph(model)
    rctx = RewriteContext(plan.analysis.maps, plan.keep_elems, opset=graph.opset)
    for g in walk_graphs(graph):  # convs inside If/Loop bodies are rewritten in place
        for node in g.nodes:
            getattr(rule_for(node), method)(node, rctx)
    return graph


def export(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """Export with the model-level fields (IR version, opsets, metadata) of `like`.

    Weights are written straight into the output's initializer list: gs's own export
    copies each weight two or three times, which dominated pruning time on large models.
    Constants of If/Loop bodies go there too (bodies read them from the outer scope), so
    every weight of the result is a main-graph initializer.
    """
    graph.cleanup(remove_unused_graph_inputs=False)
    constants = _all_constants(graph)
    stand_ins = [gs.Variable(c.name) for c in constants]
    for c, v in zip(constants, stand_ins):  # stand-ins carry the name only: gs exports no weights
        _swap(c, v)
    try:
        out = gs.export_onnx(graph, do_type_check=False)
    finally:
        for c, v in zip(constants, stand_ins):
            _swap(v, c)
    del out.graph.value_info[:]  # intermediate shapes are stale after a rewrite
    _drop_shapeless_value_info(out.graph)
    inits = out.graph.initializer
    for c in constants:
        proto = getattr(getattr(c, "_values", None), "tensor", None)
        if isinstance(proto, onnx.TensorProto) and proto.name == c.name:
            inits.add().CopyFrom(proto)
        else:
            arr = np.asarray(constant_values(c))
            arr = arr if arr.flags.c_contiguous else arr.copy(order="C")  # ascontiguousarray makes 0-d 1-d
            t = inits.add()
            t.name = c.name
            t.data_type = helper.np_dtype_to_tensor_dtype(arr.dtype)
            t.dims.extend(arr.shape)
            t.raw_data = arr.tobytes()
    copy_model_fields(like, out)
    return out


def _drop_shapeless_value_info(graph: onnx.GraphProto) -> None:
    """In bodies, gs lists every tensor (outer-scope reads too); entries whose shape a rewrite
    cleared carry no information and fail the checker: dropped."""
    for n in graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                keep = [v for v in a.g.value_info if v.type.tensor_type.HasField("shape")]
                del a.g.value_info[:]
                a.g.value_info.extend(keep)
                _drop_shapeless_value_info(a.g)


def _all_constants(graph: gs.Graph) -> list[gs.Constant]:
    """Constants read in any scope, each once; a name two of them share is made unique."""
    seen: dict[int, gs.Constant] = {}
    for g in walk_graphs(graph):
        for node in g.nodes:
            for t in node.inputs:
                if isinstance(t, gs.Constant):
                    seen.setdefault(id(t), t)
    names: set[str] = set()
    for c in seen.values():
        base, k = c.name, 1
        while c.name in names:
            c.name, k = f"{base}__{k}", k + 1
        names.add(c.name)
    return list(seen.values())


def _swap(old: gs.Tensor, new: gs.Tensor) -> None:
    """Replace `old` by `new` as the input of every node that reads it."""
    for node in list(old.outputs):
        for i, t in enumerate(node.inputs):
            if t is old:
                node.inputs[i] = new
