"""MACs (multiply-accumulates, batch 1) and parameter counts."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

from graphprune.inputs import check_run_memory, checked_shapes, concrete_shapes, with_static_inputs
from graphprune.shapes import inferred_at


_MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _shapes_by_running(model: onnx.ModelProto, names: list[str]) -> dict[str, list[int]]:
    """Shapes inference could not resolve (computed Reshape targets): run the model once."""
    from graphprune.inputs import random_feeds
    from graphprune.runtime import run

    m = onnx.ModelProto()
    m.CopyFrom(model)
    known = {o.name for o in m.graph.output}
    names = list(dict.fromkeys(n for n in names if n not in known))
    m.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    shapes = {inp.name: [d.dim_value for d in inp.type.tensor_type.shape.dim] for inp in m.graph.input}
    check_run_memory(model, shapes, what="counting (which runs the model to learn computed shapes)")
    try:
        outs = run(m, random_feeds(m, shapes))
    except Exception:
        return {}
    return {o.name: list(v.shape) for o, v in zip(m.graph.output, outs) if o.name in names}


@dataclass
class Counts:
    macs: int
    params: int
    param_bytes: int


def _static_dims(value_infos) -> dict[str, list[int]]:
    out = {}
    for vi in value_infos:
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            out[vi.name] = [d.dim_value for d in dims]
    return out


def _graph_macs(graph: onnx.GraphProto, shapes: dict, inits: dict) -> int:
    """MACs of `graph`'s Conv/ConvTranspose/Gemm/MatMul nodes whose shapes are known. An If
    counts its costlier branch (which one runs depends on the data: the count is the worst
    case); its branches' shapes are the ones inference wrote into them."""
    macs = 0
    for n in graph.node:
        w = inits.get(n.input[1]) if len(n.input) > 1 else None
        if n.op_type == "Conv" and w is not None and n.output[0] in shapes:
            macs += math.prod(shapes[n.output[0]]) * math.prod(w[1:])
        elif n.op_type == "ConvTranspose" and w is not None and n.input[0] in shapes:
            macs += math.prod(shapes[n.input[0]]) * math.prod(w[1:])
        elif n.op_type in ("Gemm", "MatMul") and n.output[0] in shapes and n.input[0] in shapes:
            a = shapes[n.input[0]]
            trans_a = any(at.name == "transA" and at.i for at in n.attribute)
            k = a[0] if (n.op_type == "Gemm" and trans_a) else a[-1]
            macs += math.prod(shapes[n.output[0]]) * k
        elif n.op_type == "If":
            branches = [_graph_macs(at.g, {**shapes, **_static_dims(list(at.g.value_info) + list(at.g.output))},
                                    inits) for at in n.attribute if at.type == onnx.AttributeProto.GRAPH]
            macs += max(branches, default=0)
    return macs


def _body_shapes_unknown(graph: onnx.GraphProto) -> bool:
    """Whether a MAC op inside an If/Loop body has an output shape inference did not resolve."""
    for n in graph.node:
        for at in n.attribute:
            if at.type == onnx.AttributeProto.GRAPH:
                known = _static_dims(list(at.g.value_info) + list(at.g.output))
                if any(b.op_type in _MAC_OPS and b.output[0] not in known for b in at.g.node) \
                        or _body_shapes_unknown(at.g):
                    return True
    return False


def _normalized_at(model: onnx.ModelProto, concrete: dict) -> onnx.ModelProto:
    """`model` at the concrete shapes, normalised (shape math folded, constant Ifs inlined):
    bodies whose sizes are computed (silero-vad's Pad widths) get static shapes only after
    folding, which inference alone does not do. Same computation, so the same MACs."""
    from graphprune.passes.normalize import NormalizePass
    return NormalizePass()(with_static_inputs(model, concrete))


def _weight_tensors(graph: onnx.GraphProto):
    """Initializers and Constant-node tensors of `graph` and of every If/Loop body in it: exports
    that keep weights in Constant nodes (Paddle, TorchScript bodies such as silero-vad's) count
    like those that use initializers."""
    yield from graph.initializer
    for n in graph.node:
        for at in n.attribute:
            if n.op_type == "Constant" and at.name == "value" and at.type == onnx.AttributeProto.TENSOR \
                    and len(at.t.dims) >= 1:  # scalars (epsilons, sample rates) are no weights
                # only name, type and dims are read: no copy of the weight's data
                yield onnx.TensorProto(name=n.output[0], data_type=at.t.data_type, dims=at.t.dims)
            elif at.type == onnx.AttributeProto.GRAPH:
                yield from _weight_tensors(at.g)


def count(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None) -> Counts:
    """MACs at `input_shapes` (validated: a non-positive dim would count negative MACs)."""
    input_shapes = checked_shapes(model, input_shapes)
    concrete = concrete_shapes(model, input_shapes, batch=1)
    static = inferred_at(model, concrete)  # on the weight-less skeleton: no copy of every weight
    shapes = _static_dims(list(static.graph.value_info) + list(static.graph.output) + list(static.graph.input))
    weights = list(_weight_tensors(model.graph))
    inits = {t.name: list(t.dims) for t in weights}
    needed = [n.output[0] for n in static.graph.node if n.op_type in _MAC_OPS] + \
        [n.input[0] for n in static.graph.node if n.op_type in _MAC_OPS]
    if any(name not in shapes for name in needed):
        shapes.update(_shapes_by_running(with_static_inputs(model, concrete), [n for n in needed if n not in shapes]))
    if _body_shapes_unknown(static.graph):
        static = _normalized_at(model, concrete)
        shapes.update(_static_dims(list(static.graph.value_info) + list(static.graph.output)))
        inits.update({t.name: list(t.dims) for t in _weight_tensors(static.graph)})
    macs = _graph_macs(static.graph, shapes, inits)
    params = 0
    nbytes = 0
    for t in weights:
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                           onnx.TensorProto.BFLOAT16):
            size = math.prod(t.dims)
            params += size
            nbytes += size * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    return Counts(int(macs), int(params), int(nbytes))
