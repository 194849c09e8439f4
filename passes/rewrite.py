"""Shared driver of the plan-driven rewrites: walk the graph, let each op's rule act."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper

from graphprune.arrays import constant_values
from graphprune.analysis import fingerprint, import_graph
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
    for node in graph.nodes:
        getattr(rule_for(node), method)(node, rctx)
    return graph


def export(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """Export with the model-level fields (IR version, opsets, metadata) of `like`.

    Weights are written straight into the output's initializer list: gs's own export
    copies each weight two or three times, which dominated pruning time on large models.
    """
    graph.cleanup(remove_unused_graph_inputs=False)
    constants = [t for t in graph.tensors().values() if isinstance(t, gs.Constant)]
    stand_ins = [gs.Variable(c.name) for c in constants]
    for c, v in zip(constants, stand_ins):  # stand-ins carry the name only: gs exports no weights
        _swap(c, v)
    try:
        out = gs.export_onnx(graph, do_type_check=False)
    finally:
        for c, v in zip(constants, stand_ins):
            _swap(v, c)
    del out.graph.value_info[:]  # intermediate shapes are stale after a rewrite
    inits = out.graph.initializer
    for c in constants:
        proto = getattr(getattr(c, "_values", None), "tensor", None)
        if isinstance(proto, onnx.TensorProto) and proto.name == c.name:
            inits.add().CopyFrom(proto)
        else:
            arr = np.ascontiguousarray(constant_values(c))
            t = inits.add()
            t.name = c.name
            t.data_type = helper.np_dtype_to_tensor_dtype(arr.dtype)
            t.dims.extend(arr.shape)
            t.raw_data = arr.tobytes()
    copy_model_fields(like, out)
    return out


def _swap(old: gs.Tensor, new: gs.Tensor) -> None:
    """Replace `old` by `new` as the input of every node that reads it."""
    for node in list(old.outputs):
        for i, t in enumerate(node.inputs):
            if t is old:
                node.inputs[i] = new
