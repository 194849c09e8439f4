"""InlineConstantIfPass: an `If` whose condition is a constant is replaced by its taken branch.

Why: exporters emit `If` for Python branches on shapes (`if x.size(0) == 1: squeeze`) and
for whole alternative networks (silero-vad picks its 8 kHz or 16 kHz model on an input).
When constant folding (fold_constants.py) has made the condition a constant, the If is
dead weight for pruning: inlining the taken branch lets the analysis see plain dataflow
and drops the other branch's weights. An If on data stays; the analysis follows channels
through both branches (see docs/analysis.md).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphprune.arrays import constant_values
from graphprune.passes.base import Pass
from graphprune.passes.graph_step import graph_pass, replace_uses


class InlineConstantIfPass(Pass):
    name = "inline-constant-if"

    def run(self, model: onnx.ModelProto) -> onnx.ModelProto:
        return graph_pass(model, inline_constant_ifs)


def inline_constant_ifs(graph: gs.Graph) -> bool:
    """Inline in `graph` and, recursively, in its subgraphs; True when anything changed."""
    changed = False
    for node in list(graph.nodes):
        for v in node.attrs.values():
            if isinstance(v, gs.Graph):
                changed |= inline_constant_ifs(v)
        if node.op == "If" and node.domain in (None, "", "ai.onnx") and node.inputs \
                and isinstance(node.inputs[0], gs.Constant):
            taken = bool(np.asarray(constant_values(node.inputs[0])).reshape(-1)[0])
            _inline(graph, node, node.attrs["then_branch" if taken else "else_branch"])
            changed = True
    return changed


def _inline(parent: gs.Graph, node: gs.Node, branch: gs.Graph) -> None:
    taken = {id(t) for n in parent.nodes for t in n.outputs} | {id(t) for t in parent.inputs}
    names = {t.name for n in parent.nodes for t in list(n.inputs) + list(n.outputs)} | \
        {t.name for t in parent.inputs}
    for n in branch.nodes:  # branch-local names may repeat names of the parent scope
        for t in n.outputs:
            if id(t) not in taken and t.name in names:
                base, k = t.name, 1
                while f"{base}__inl{k}" in names:
                    k += 1
                t.name = f"{base}__inl{k}"
            names.add(t.name)
    parent_outputs = {id(t) for t in parent.outputs}
    results = list(branch.outputs)
    outs = list(node.outputs)
    node.inputs.clear()
    node.outputs.clear()
    parent.nodes.remove(node)
    parent.nodes.extend(branch.nodes)
    for out, res in zip(outs, results):
        if id(out) in parent_outputs:  # a graph output keeps its name: read the branch result
            parent.nodes.append(gs.Node("Identity", name=f"{node.name}__out_{out.name}", inputs=[res], outputs=[out]))
        else:
            replace_uses(out, res)
    parent.toposort(recurse_subgraphs=False)
