"""Size and energy of a float model *as if* its layers had other precisions, without quantizing.

Why: a search over per-layer precision (the joint prune + quantize search) scores many
candidates; calibrating and quantizing each one just to learn its size would cost
seconds per candidate. The bytes onnxruntime's QDQ quantizer writes are known exactly:

    int8 layer:  weight elements x 1 byte + per scale group (one per output channel with
                 per_channel, else one) 4 bytes of fp32 scale + 1 byte of int8 zero point;
                 bias (if any) elements x 4 bytes (int32) + per scale group 4 bytes of
                 fp32 scale + 4 bytes of int32 zero point
    fp16 layer:  every float weight element x 2 bytes
    fp32 layer:  x 4 bytes

and activations are charged at the layer's width (graphprune.cost.energy). With any int8
layer, the quantizer's pre-processing folds each Conv's BatchNormalization into it (a
bias-less conv gains a bias, the BN parameters go), and so does the projection. Projected
and real per-layer costs agree exactly (tests/test_cost.py; the pruned examples by hand); the
projected size leaves out the activations' scales and zero points (5 bytes each) and
other small constants pre-processing removes (tens to hundreds of bytes).
"""
from __future__ import annotations

import math
from dataclasses import replace

import onnx

from graphprune.cost.energy import _ACT_BYTES, LayerCost, layer_costs
from graphprune.cost.size import model_size, tensor_bytes
from graphprune.errors import GraphpruneError
from graphprune.quant.precision import canonical


def projected_costs(model: onnx.ModelProto, precision: dict[str, str],
                    input_shapes: dict[str, list[int]] | None = None, per_channel: bool = True) -> list[LayerCost]:
    """layer_costs of `model` with the fp32 layers named in `precision` at their new precision.
    With any int8 layer, every Conv followed by a BatchNormalization is costed as pre-processing
    leaves it: BN folded in, so a bias-less conv gains a bias of one value per output channel."""
    nodes = {n.name: n for n in model.graph.node if n.name}
    inits = {t.name: t for t in model.graph.initializer}
    folded = _bn_folds(model) if any(canonical(p) == "int8" for p in precision.values()) else {}
    out = []
    for lc in layer_costs(model, input_shapes):
        p = canonical(precision.get(lc.node, lc.precision))
        if p != lc.precision and lc.precision != "fp32":
            raise GraphpruneError(f"layer {lc.node!r} is already {lc.precision}; projections start from fp32")
        node = nodes.get(lc.node)
        gains_bias = lc.node in folded and len(node.input) < 3
        if p == lc.precision and not gains_bias:
            out.append(lc)
            continue
        weights = [inits[i] for i in node.input[1:] if i in inits]
        if gains_bias:
            weights.append(onnx.TensorProto(name="bias", data_type=onnx.TensorProto.FLOAT,
                                            dims=[folded[lc.node]]))
        out.append(replace(lc, precision=p, weight_bytes=_bytes_at(node, weights, p, per_channel),
                           activation_bytes=lc.activation_bytes // _ACT_BYTES[lc.precision] * _ACT_BYTES[p]))
    missing = set(precision) - {lc.node for lc in out}
    if missing:
        raise GraphpruneError(f"no MAC layer named {sorted(missing)[0]!r} in the model")
    return out


def projected_size(model: onnx.ModelProto, precision: dict[str, str], per_channel: bool = True) -> int:
    """model_size(model).bytes with the layers in `precision` stored at their new precision
    (and, with int8 layers, the folded BatchNormalizations' parameters gone)."""
    before = {lc.node: lc.weight_bytes for lc in layer_costs(model)}
    after = {lc.node: lc.weight_bytes for lc in projected_costs(model, precision, per_channel=per_channel)}
    gone = 0
    if any(canonical(p) == "int8" for p in precision.values()):
        inits = {t.name: t for t in model.graph.initializer}
        readers = {}
        for n in model.graph.node:
            for i in n.input:
                readers[i] = readers.get(i, 0) + 1
        folded = _bn_folds(model)
        convs_out = {n.output[0] for n in model.graph.node if n.name in folded}
        for bn in (n for n in model.graph.node if n.op_type == "BatchNormalization" and n.input[0] in convs_out):
            gone += sum(tensor_bytes(inits[i]) for i in bn.input[1:] if readers[i] == 1)
    return model_size(model).bytes + sum(after[n] - before[n] for n in after) - gone


def _bn_folds(model: onnx.ModelProto) -> dict[str, int]:
    """{conv: output channels} for each Conv whose only consumer is a BatchNormalization with
    constant parameters: onnxruntime's pre-processing folds the BN into it (a bias appears)."""
    inits = {t.name: t for t in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in model.graph.output}
    out = {}
    for n in model.graph.node:
        if n.op_type != "Conv" or len(n.input) < 2 or n.input[1] not in inits or n.output[0] in graph_outputs:
            continue
        users = consumers.get(n.output[0], [])
        if len(users) == 1 and users[0].op_type == "BatchNormalization" and all(i in inits for i in users[0].input[1:]):
            out[n.name] = inits[n.input[1]].dims[0]
    return out


def _bytes_at(node: onnx.NodeProto, weights: list[onnx.TensorProto], p: str, per_channel: bool) -> int:
    if p == "fp16":
        return sum(math.prod(t.dims) * 2 if t.data_type == onnx.TensorProto.FLOAT else tensor_bytes(t)
                   for t in weights)
    if p == "fp32":
        return sum(tensor_bytes(t) for t in weights)
    if not weights:
        return 0
    w, bias = weights[0], weights[1:]
    groups = _channels(node, w) if per_channel else 1
    total = math.prod(w.dims) + groups * (4 + 1)
    for b in bias:
        total += math.prod(b.dims) * 4 + (math.prod(b.dims) if per_channel else 1) * (4 + 4)
    return total


def _channels(node: onnx.NodeProto, w: onnx.TensorProto) -> int:
    """The weight's output-channel count: the axis onnxruntime quantizes per channel."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Conv":
        return w.dims[0]
    if node.op_type == "ConvTranspose":
        return w.dims[1] * attrs.get("group", 1)
    if node.op_type == "Gemm":
        return w.dims[0] if attrs.get("transB", 0) else w.dims[1]
    return w.dims[-1]
