"""Running a model up to some of its tensors, level by level: shared by the recovery passes
that read intermediate tensors on data (BN recalibration, least-squares reconstruction).

Why levels: a pass that changes weights (a BN's statistics, a convolution's kernel) changes
every tensor downstream of it, so a node must be read after every changed node upstream of
it. Grouping the nodes by how many of them lie on their longest upstream path lets one
onnxruntime pass serve a whole level, and a probe model (only the nodes the read tensors
depend on) keeps each pass as short as the level is deep.
"""
from __future__ import annotations

import copy

import numpy as np
import onnx

from graphprune.errors import GraphpruneError


def levels(graph: onnx.GraphProto, targets: list[onnx.NodeProto]) -> list[list[onnx.NodeProto]]:
    """`targets` grouped by the number of targets on their longest upstream path: the nodes of a
    level do not depend on each other, so one pass serves them all, after the levels before."""
    ids = {id(b) for b in targets}
    depth: dict[str, int] = {}
    level: dict[int, int] = {}
    for n in graph.node:   # ONNX graphs are topologically sorted
        d = max((depth.get(t, 0) for t in n.input if t), default=0)
        if id(n) in ids:
            level[id(n)] = d
            d += 1
        for o in n.output:
            depth[o] = d
    out: list[list[onnx.NodeProto]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for b in targets:
        out[level[id(b)]].append(b)
    return out


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """{tensor name: ONNX element type} as shape inference finds them (empty when it fails)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
        return {v.name: v.type.tensor_type.elem_type for v in list(inferred.value_info) + list(inferred.input)}
    except Exception:
        return {}


def probe_model(model: onnx.ModelProto, tensors: list[str], types: dict[str, int] | None = None) -> onnx.ModelProto:
    """A copy of `model` whose outputs are `tensors`, running only the nodes they depend on.
    `types`: the model's tensor_types, when the caller probes the same graph many times."""
    m = copy.deepcopy(model)
    g = m.graph
    types = tensor_types(model) if types is None else types
    has_subgraphs = any(at.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                        for n in g.node for at in n.attribute)
    if not has_subgraphs:   # a subgraph may read outer tensors: keep every node then
        need, keep = set(tensors), []
        for n in reversed(g.node):
            if any(o in need for o in n.output):
                keep.append(n)
                need.update(t for t in n.input if t)
        kept = list(reversed(keep))
        del g.node[:]
        g.node.extend(kept)
    del g.output[:]
    for t in tensors:
        g.output.append(onnx.helper.make_tensor_value_info(t, types.get(t) or onnx.TensorProto.FLOAT, None))
    return m


def model_feeds(model: onnx.ModelProto, x, what: str) -> tuple[dict[str, np.ndarray], int | None]:
    """{input name: samples} for the model's inputs, and the fixed batch size (None: any)."""
    inits = {t.name for t in model.graph.initializer}
    ins = [i for i in model.graph.input if i.name not in inits]
    if isinstance(x, dict):
        missing = [i.name for i in ins if i.name not in x]
        if missing:
            raise GraphpruneError(f"{what}: no data for model input(s) {', '.join(missing)}")
        feeds = {i.name: np.asarray(x[i.name]) for i in ins}
    else:
        if len(ins) != 1:
            raise GraphpruneError(f"{what}: the model has {len(ins)} inputs; give one array per input")
        feeds = {ins[0].name: np.asarray(x)}
    lens = {len(v) for v in feeds.values()}
    if len(lens) != 1 or 0 in lens:
        raise GraphpruneError(f"{what}: the inputs' sample counts differ or are zero")
    dims = ins[0].type.tensor_type.shape.dim
    fixed = dims[0].dim_value if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None
    return feeds, fixed


def batches(feeds: dict[str, np.ndarray], bs: int, fixed: bool):
    n = len(next(iter(feeds.values())))
    stop = n - n % bs if fixed else n   # a fixed batch size: the remainder is left out, never padded
    for i in range(0, stop, bs):
        yield {k: np.ascontiguousarray(v[i:i + bs]) for k, v in feeds.items()}
