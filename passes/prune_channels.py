"""PruneChannelsPass: remove the channels a plan drops and rewrite every member.

Weights, biases, BN parameters, Concat/Split sizes, Slice bounds, Reshape targets and
Gemm columns are rewritten by each op's rule; stale shapes of intermediate tensors are
dropped (`graphprune.load` re-infers them when the pruned model is analysed again). Importance metadata keeps the scores of the kept channels,
so importance is computed once and pruning can be iterated.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphprune.analysis import all_nodes, walk_graphs
from graphprune.errors import GraphpruneError
from graphprune.metadata import (IMPORTANCE_KEY, PER_CLASS_KEY, decode_per_class, encode_per_class, get_json,
                                 set_json)
from graphprune.passes.base import Pass
from graphprune.passes.rewrite import apply_rules, export
from graphprune.selection import PruningPlan
from graphprune.shapes import check


class PruneChannelsPass(Pass):
    name = "prune-channels"

    def __init__(self, plan: PruningPlan, check: bool = True):
        self.plan = plan
        self.check = check

    def run(self, model: onnx.ModelProto) -> onnx.ModelProto:
        graph = apply_rules(model, self.plan, "rewrite")
        fixed = {t.name for t in graph.inputs} | {t.name for t in graph.outputs}
        for g in walk_graphs(graph):  # in bodies too; what crosses a Loop/Scan body is frozen: kept
            fixed |= {t.name for t in g.inputs}
            fixed |= {t.name for n in g.nodes if n.op != "If" for b in n.attrs.values()
                      if isinstance(b, gs.Graph) for t in b.outputs}
        for g in walk_graphs(graph):
            for t in g.tensors().values():
                if isinstance(t, gs.Variable) and t.name not in fixed:
                    t.shape = None  # stale after pruning; re-inferred below
        out = export(graph, model)
        _update_importance(out, self.plan)
        if self.check:
            check_model(out)
        return out


def check_model(model: onnx.ModelProto) -> None:
    """Full ONNX check with strict shape inference; a failure means a pruning bug."""
    try:
        check(model)
    except Exception as exc:
        first = str(exc).strip().splitlines()
        raise GraphpruneError(f"pruned model failed the ONNX check: {first[0] if first else exc}") from None


def _output_mask(plan: PruningPlan, node: onnx.NodeProto) -> np.ndarray | None:
    m = plan.analysis.maps.get(node.output[0]) if node.output else None
    return None if m is None else plan.keep_elems[m.elems]


def _update_importance(model: onnx.ModelProto, plan: PruningPlan) -> None:
    imp = get_json(model, IMPORTANCE_KEY)
    per_class = get_json(model, PER_CLASS_KEY)
    if imp is None and per_class is None:
        return
    nodes = {n.name: n for n in all_nodes(plan.analysis.model.graph)}
    if imp is not None:
        for name, scores in list(imp.get("scores", {}).items()):
            mask = _output_mask(plan, nodes[name]) if name in nodes else None
            if mask is not None and len(mask) == len(scores):
                imp["scores"][name] = [s for s, k in zip(scores, mask) if k]
        set_json(model, IMPORTANCE_KEY, imp)
    if per_class is not None:
        arrays = decode_per_class(per_class)
        for name, rows in arrays.items():
            mask = _output_mask(plan, nodes[name]) if name in nodes else None
            if mask is not None and rows.shape[-1] == len(mask):
                arrays[name] = rows[..., mask]
        set_json(model, PER_CLASS_KEY, encode_per_class(per_class.get("method", ""), arrays))
