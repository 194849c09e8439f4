"""Float16Pass: weights and arithmetic in float16, for targets with fast fp16 (CUDA, ARMv8.2+).

Built on onnxruntime's `onnxruntime.transformers.float16.convert_float_to_float16`
(onnxconverter-common's converter, which onnxruntime ships in a maintained copy; the
stand-alone onnxconverter-common package is not installed here). It knows which ops
must stay float32 (its DEFAULT_OP_BLOCK_LIST: ops without fp16 kernels, Resize scales)
and inserts the Casts around them, so nothing is rewritten by hand here.

Inputs and outputs stay float32 (`keep_io_types`), so the model is a drop-in
replacement: a Cast at each end converts. Nodes mapped to fp32 in `precision` (or named
in `exclude`) stay float32 (mixed precision). On a CPU without fp16 arithmetic the model
still runs in onnxruntime but is usually slower than fp32 (conversions around every
kernel that lacks an fp16 version): fp16 is for the targets that have it.
"""
from __future__ import annotations

import collections
import heapq

import onnx

from graphprune.errors import GraphpruneError
from graphprune.passes.base import Pass
from graphprune.quant.precision import (canonical, check_float_model, check_node, graph_precision,
                                        record_precision)


class Float16Pass(Pass):
    name = "float16"

    def __init__(self, precision: dict[str, str] | None = None, exclude=None):
        self.precision = dict(precision or {})
        self.exclude = list(exclude or [])

    def run(self, model: onnx.ModelProto) -> onnx.ModelProto:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        check_float_model(model)
        blocked = self._blocked(model)
        copy = onnx.ModelProto()
        copy.CopyFrom(model)  # the converter edits the proto it is given
        try:
            out = convert_float_to_float16(copy, keep_io_types=True, node_block_list=blocked)
        except Exception as exc:
            lines = str(exc).strip().splitlines()
            raise GraphpruneError(f"float16 conversion failed: {lines[0][:200] if lines else type(exc).__name__}") \
                from None
        _toposort(out.graph)
        record_precision(out, graph_precision(out), tool="onnxruntime.transformers.float16", format="fp16",
                         excluded=blocked)
        return out

    def _blocked(self, model: onnx.ModelProto) -> list[str]:
        names = {n.name for n in model.graph.node if n.name}
        blocked = set()
        for node, p in self.precision.items():
            p = canonical(p, ("fp32", "fp16"), f"precision for node {node!r}")
            check_node(node, names)
            if p == "fp32":
                blocked.add(node)
        for node in self.exclude:
            check_node(node, names)
            blocked.add(node)
        return sorted(blocked)


def _toposort(graph: onnx.GraphProto) -> None:
    """Put nodes in dependency order (the converter appends the input Casts at the end, which
    onnxruntime accepts but the ONNX checker and other runtimes do not). Stable: nodes that
    are already in order keep it."""
    produced_by = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    deps = [{produced_by[x] for x in n.input if x in produced_by} for n in graph.node]
    users = collections.defaultdict(list)
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    waiting = [len(d) for d in deps]
    ready = [i for i, w in enumerate(waiting) if w == 0]
    order = []
    heapq.heapify(ready)
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(graph.node):
        raise GraphpruneError("float16 conversion produced a graph with a cycle")
    nodes = [graph.node[i] for i in order]
    copies = [onnx.NodeProto() for _ in nodes]
    for c, n in zip(copies, nodes):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)
