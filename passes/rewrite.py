"""Shared driver of the plan-driven rewrites: walk the graph, let each op's rule act."""
from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

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
    """Export with the model-level fields (IR version, opsets, metadata) of `like`."""
    graph.cleanup(remove_unused_graph_inputs=False)
    out = gs.export_onnx(graph, do_type_check=False)
    copy_model_fields(like, out)
    return out
