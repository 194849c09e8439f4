"""ONNX operators without weights, as small torch functions for the bridge.

Each entry of OPS is ``fn(inputs, attrs, opset) -> Tensor | tuple``; `inputs`
holds torch tensors (None for omitted optional inputs), `attrs` the node's
attributes as Python values. Shape-like inputs (Reshape's shape, Slice's
starts...) arrive as int64 tensors and are read with ``.tolist()``: the bridge
runs eagerly, so data-dependent shapes simply work and no tracing is needed.
Semantics follow the ONNX operator spec, including the pre-opset-13 forms that
real exports still use (attribute axes/splits, 2-D-coercing Softmax).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from onnx import TensorProto

from graphprune.errors import GraphpruneError

# ONNX TensorProto data type -> torch dtype
DTYPES = {
    TensorProto.FLOAT: torch.float32, TensorProto.DOUBLE: torch.float64, TensorProto.FLOAT16: torch.float16,
    TensorProto.BFLOAT16: torch.bfloat16, TensorProto.INT8: torch.int8, TensorProto.UINT8: torch.uint8,
    TensorProto.INT16: torch.int16, TensorProto.INT32: torch.int32, TensorProto.INT64: torch.int64,
    TensorProto.BOOL: torch.bool,
}


def _ints(t) -> list[int]:
    if t is None:
        return []
    if isinstance(t, torch.Tensor):
        return [int(v) for v in t.reshape(-1).tolist()]
    return [int(v) for v in t]


def _axes(inputs, attrs, opset, input_index, first_input_opset):
    """Axes come from an attribute before `first_input_opset`, from an input after."""
    if opset < first_input_opset:
        return attrs.get("axes")
    if len(inputs) > input_index and inputs[input_index] is not None:
        return _ints(inputs[input_index])
    return None


def _binary(fn):
    return lambda ins, a, o: fn(ins[0], ins[1])


def _div(x, y):
    if not x.is_floating_point() and not y.is_floating_point():
        return torch.div(x, y, rounding_mode="trunc")
    return x / y


def _pow(x, y):
    out = torch.pow(x, y)
    return out.to(x.dtype) if out.dtype != x.dtype else out


def _variadic(fn):
    def run(ins, a, o):
        out = ins[0]
        for t in ins[1:]:
            out = fn(out, t)
        return out
    return run


def _split(ins, a, o, n_out):
    x, axis = ins[0], a.get("axis", 0)
    if o < 13 and "split" in a:
        sizes = list(a["split"])
    elif len(ins) > 1 and ins[1] is not None:
        sizes = _ints(ins[1])
    else:
        n = a.get("num_outputs", n_out)
        dim = x.shape[axis]
        chunk = -(-dim // n)
        sizes = [chunk] * (n - 1) + [dim - chunk * (n - 1)]
    return tuple(torch.split(x, sizes, dim=axis))


def _slice(ins, a, o):
    x = ins[0]
    if o < 10:
        starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
    else:
        starts, ends = _ints(ins[1]), _ints(ins[2])
        axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else None
        steps = _ints(ins[4]) if len(ins) > 4 and ins[4] is not None else None
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    idx = [slice(None)] * x.dim()
    flips = []
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax = ax % x.dim()
        dim = x.shape[ax]
        if st > 0:
            s = min(max(s + dim if s < 0 else s, 0), dim)
            e = min(max(e + dim if e < 0 else e, 0), dim)
            idx[ax] = slice(s, max(e, s), st)
        else:  # torch has no negative steps: slice the reversed range, then flip
            s = min(max(s + dim if s < 0 else s, -1), dim - 1)
            e = min(max(e + dim if e < 0 else e, -1), dim - 1)
            if s <= e:
                idx[ax] = slice(0, 0)
            else:
                idx[ax] = slice(e + 1, s + 1)
                flips.append((ax, -st))
    out = x[tuple(idx)]
    for ax, st in flips:
        out = out.flip(ax)
        if st != 1:
            out = out.narrow(ax, 0, out.shape[ax]).index_select(
                ax, torch.arange(0, out.shape[ax], st, device=out.device))
    return out


def _reshape(ins, a, o):
    x, shape = ins[0], _ints(ins[1]) if o >= 5 else list(a["shape"])
    if not a.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _flatten(ins, a, o):
    x, axis = ins[0], a.get("axis", 1)
    axis = axis % x.dim() if x.dim() else 0
    return x.reshape(int(np.prod(x.shape[:axis])), -1) if axis else x.reshape(1, -1)


def _transpose(ins, a, o):
    x = ins[0]
    perm = a.get("perm", list(range(x.dim()))[::-1])
    return x.permute(*perm)


def _shape(ins, a, o):
    shape = list(ins[0].shape)
    start, end = a.get("start", 0), a.get("end", None)
    return torch.tensor(shape[start:end], dtype=torch.int64, device=ins[0].device)


def _gather(ins, a, o):
    x, idx, axis = ins[0], ins[1].long(), a.get("axis", 0)
    axis = axis % x.dim()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = torch.index_select(x, axis, idx.reshape(-1))
    return out.reshape(tuple(x.shape[:axis]) + tuple(idx.shape) + tuple(x.shape[axis + 1:]))


def _gather_elements(ins, a, o):
    x, idx, axis = ins[0], ins[1].long(), a.get("axis", 0)
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    return torch.gather(x, axis, idx)


def _unsqueeze(ins, a, o):
    x, axes = ins[0], _axes(ins, a, o, 1, 13)
    rank = x.dim() + len(axes)
    for ax in sorted(ax % rank for ax in axes):
        x = x.unsqueeze(ax)
    return x


def _squeeze(ins, a, o):
    x, axes = ins[0], _axes(ins, a, o, 1, 13)
    if axes is None:
        return x.squeeze()
    for ax in sorted((ax % x.dim() for ax in axes), reverse=True):
        x = x.squeeze(ax)
    return x


def _reduce(fn, first_input_opset=18):
    def run(ins, a, o):
        x = ins[0]
        axes = _axes(ins, a, o, 1, first_input_opset)
        keep = bool(a.get("keepdims", 1))
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        return fn(x, [ax % x.dim() for ax in axes], keep)
    return run


def _reduce_max(x, axes, keep):
    return torch.amax(x, dim=axes, keepdim=keep)


def _reduce_min(x, axes, keep):
    return torch.amin(x, dim=axes, keepdim=keep)


def _reduce_prod(x, axes, keep):
    for ax in sorted(axes, reverse=True):
        x = torch.prod(x, dim=ax, keepdim=keep)
    return x


def _pad(ins, a, o):
    x = ins[0]
    if o < 11:
        pads, value = list(a["pads"]), a.get("value", 0.0)
        axes = None
    else:
        pads = _ints(ins[1])
        value = float(ins[2].reshape(-1)[0]) if len(ins) > 2 and ins[2] is not None and ins[2].numel() else 0.0
        axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else None
    rank = x.dim()
    axes = list(range(rank)) if axes is None else [ax % rank for ax in axes]
    n = len(axes)
    begin, end = dict(zip(axes, pads[:n])), dict(zip(axes, pads[n:]))
    torch_pads = []
    for ax in reversed(range(rank)):  # F.pad lists the last dimension first
        torch_pads += [begin.get(ax, 0), end.get(ax, 0)]
    while len(torch_pads) > 2 and torch_pads[-1] == 0 and torch_pads[-2] == 0:
        torch_pads = torch_pads[:-2]
    mode = a.get("mode", "constant")
    if mode == "constant":
        return F.pad(x, torch_pads, value=value)
    torch_mode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode]
    return F.pad(x, torch_pads, mode=torch_mode)


def _resize(ins, a, o):
    """Resize/Upsample for the modes CNN exports use; anything else is refused by name."""
    x = ins[0]
    if o < 10 or (len(ins) == 2):  # Upsample, or Resize-10: (X, scales)
        scales, sizes = ins[1], None
    else:
        scales = ins[2] if len(ins) > 2 else None
        sizes = ins[3] if len(ins) > 3 else None
    mode = a.get("mode", "nearest")
    ctm = a.get("coordinate_transformation_mode", "asymmetric" if o < 11 else "half_pixel")
    if sizes is not None and sizes.numel():
        out_size = _ints(sizes)[2:]
        scale_arg = None
    else:
        sc = [float(s) for s in scales.reshape(-1).tolist()]
        if sc[:2] != [1.0, 1.0]:
            raise GraphpruneError("Resize: scaling the batch or channel axis is not supported")
        out_size = [int(math.floor(d * s)) for d, s in zip(x.shape[2:], sc[2:])]
        scale_arg = sc[2:]
    spatial = x.dim() - 2
    if mode == "nearest":
        nm = a.get("nearest_mode", "round_prefer_floor")
        if ctm == "asymmetric" and nm == "floor":
            return F.interpolate(x, size=out_size, scale_factor=None, mode="nearest") if scale_arg is None \
                else F.interpolate(x, scale_factor=scale_arg, mode="nearest", recompute_scale_factor=False)
        if ctm in ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn") and nm in (
                "round_prefer_ceil", "round_prefer_floor"):
            return F.interpolate(x, size=out_size, mode="nearest-exact")
        if ctm == "asymmetric" and nm in ("round_prefer_ceil", "round_prefer_floor") and scale_arg \
                and all(float(s).is_integer() for s in scale_arg):
            return F.interpolate(x, size=out_size, mode="nearest")  # integer upsampling: all modes agree
        raise GraphpruneError(f"Resize: nearest with {ctm}/{nm} is not supported")
    if mode == "linear":
        torch_mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[spatial]
        if ctm == "align_corners":
            return F.interpolate(x, size=out_size, mode=torch_mode, align_corners=True)
        if ctm in ("half_pixel", "pytorch_half_pixel"):
            if scale_arg is not None:
                return F.interpolate(x, scale_factor=scale_arg, mode=torch_mode, align_corners=False,
                                     recompute_scale_factor=False)
            return F.interpolate(x, size=out_size, mode=torch_mode, align_corners=False)
        raise GraphpruneError(f"Resize: linear with {ctm} is not supported")
    if mode == "cubic" and ctm in ("half_pixel", "pytorch_half_pixel") and spatial == 2 \
            and abs(a.get("cubic_coeff_a", -0.75) + 0.75) < 1e-6:
        return F.interpolate(x, size=out_size, mode="bicubic", align_corners=False)
    raise GraphpruneError(f"Resize: mode {mode} with {ctm} is not supported")


def _softmax_like(fn):
    def run(ins, a, o):
        x = ins[0]
        if o < 13:  # coerced to 2-D at `axis` (default 1)
            axis = a.get("axis", 1) % max(x.dim(), 1)
            shape = x.shape
            return fn(x.reshape(int(np.prod(shape[:axis])), -1), 1).reshape(shape)
        return fn(x, a.get("axis", -1))
    return run


def _layer_norm(ins, a, o):
    x, scale = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    axis = a.get("axis", -1) % x.dim()
    dims = list(range(axis, x.dim()))
    eps = a.get("epsilon", 1e-5)
    mean = x.mean(dim=dims, keepdim=True)
    var = (x - mean).pow(2).mean(dim=dims, keepdim=True)
    out = (x - mean) / torch.sqrt(var + eps) * scale
    return out + bias if bias is not None else out


def _instance_norm(ins, a, o):
    return F.instance_norm(ins[0], weight=ins[1], bias=ins[2], eps=a.get("epsilon", 1e-5))


def _group_norm(ins, a, o):
    x, scale, bias = ins
    g, eps = a["num_groups"], a.get("epsilon", 1e-5)
    if o < 21 and scale.numel() == g:  # opset 18: per-group scale and bias
        c = x.shape[1]
        scale, bias = scale.repeat_interleave(c // g), bias.repeat_interleave(c // g)
    return F.group_norm(x, g, scale, bias, eps)


def _cast(ins, a, o):
    dtype = DTYPES.get(a["to"])
    if dtype is None:
        raise GraphpruneError(f"Cast to ONNX type {a['to']} is not supported")
    return ins[0].to(dtype)


def _expand(ins, a, o):
    x, shape = ins[0], _ints(ins[1])
    target = torch.broadcast_shapes(tuple(x.shape), tuple(shape))
    return x.expand(target)


def _constant_of_shape(ins, a, o):
    value = a.get("value")
    shape = _ints(ins[0])
    if value is None:
        return torch.zeros(shape, dtype=torch.float32, device=ins[0].device)
    return torch.full(shape, value.reshape(-1)[0].item(), dtype=value.dtype, device=ins[0].device)


def _range(ins, a, o):
    start, limit, delta = (t.reshape(()) for t in ins[:3])
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype, device=start.device)


def _where(ins, a, o):
    return torch.where(ins[0].bool(), ins[1], ins[2])


def _matmul(ins, a, o):
    return torch.matmul(ins[0], ins[1])


def _gemm(ins, a, o):
    x, w = ins[0], ins[1]
    if a.get("transA", 0):
        x = x.transpose(0, 1)
    if a.get("transB", 0):
        w = w.transpose(0, 1)
    out = a.get("alpha", 1.0) * (x @ w)
    if len(ins) > 2 and ins[2] is not None:
        out = out + a.get("beta", 1.0) * ins[2]
    return out


def _clip(ins, a, o):
    x = ins[0]
    if o < 11:
        lo, hi = a.get("min"), a.get("max")
    else:
        lo = ins[1].item() if len(ins) > 1 and ins[1] is not None else None
        hi = ins[2].item() if len(ins) > 2 and ins[2] is not None else None
    return torch.clamp(x, lo, hi)


def _tile(ins, a, o):
    return ins[0].repeat(*_ints(ins[1]))


def _topk(ins, a, o):
    k = _ints(ins[1])[0] if o >= 10 else a["k"]
    vals, idx = torch.topk(ins[0], k, dim=a.get("axis", -1), largest=bool(a.get("largest", 1)),
                           sorted=bool(a.get("sorted", 1)))
    return vals, idx


def _argmax(fn):
    def run(ins, a, o):
        x, axis, keep = ins[0], a.get("axis", 0), bool(a.get("keepdims", 1))
        if a.get("select_last_index", 0):
            flipped = fn(x.flip(axis), dim=axis, keepdim=keep)
            return x.shape[axis] - 1 - flipped
        return fn(x, dim=axis, keepdim=keep)
    return run


def _depth_to_space(ins, a, o):
    x, b = ins[0], a["blocksize"]
    n, c, h, w = x.shape
    if a.get("mode", "DCR") == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (b * b), h * b, w * b)


def _space_to_depth(ins, a, o):
    x, b = ins[0], a["blocksize"]
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * b * b, h // b, w // b)


def _hardsigmoid(ins, a, o):
    return torch.clamp(a.get("alpha", 0.2) * ins[0] + a.get("beta", 0.5), 0, 1)


def _cumsum(ins, a, o):
    x, axis = ins[0], _ints(ins[1])[0]
    if a.get("reverse", 0):
        x = x.flip(axis)
    out = torch.cumsum(x, axis)
    if a.get("exclusive", 0):
        out = out - x
    return out.flip(axis) if a.get("reverse", 0) else out


def _dropout(ins, a, o):
    return ins[0], torch.ones_like(ins[0], dtype=torch.bool)


def _einsum(ins, a, o):
    return torch.einsum(a["equation"], *ins)


def _trilu(ins, a, o):
    k = _ints(ins[1])[0] if len(ins) > 1 and ins[1] is not None else 0
    return torch.triu(ins[0], k) if a.get("upper", 1) else torch.tril(ins[0], k)


OPS = {
    "Add": _binary(torch.add), "Sub": _binary(torch.sub), "Mul": _binary(torch.mul), "Div": _binary(_div),
    "Pow": _binary(_pow), "Mod": lambda ins, a, o: (torch.fmod if a.get("fmod", 0) else torch.remainder)(ins[0], ins[1]),
    "Equal": _binary(torch.eq), "Less": _binary(torch.lt), "Greater": _binary(torch.gt),
    "LessOrEqual": _binary(torch.le), "GreaterOrEqual": _binary(torch.ge),
    "And": _binary(torch.logical_and), "Or": _binary(torch.logical_or), "Xor": _binary(torch.logical_xor),
    "Not": lambda ins, a, o: torch.logical_not(ins[0]),
    "Max": _variadic(torch.maximum), "Min": _variadic(torch.minimum), "Sum": _variadic(torch.add),
    "Mean": lambda ins, a, o: _variadic(torch.add)(ins, a, o) / len(ins),
    "Sqrt": lambda ins, a, o: torch.sqrt(ins[0]), "Exp": lambda ins, a, o: torch.exp(ins[0]),
    "Log": lambda ins, a, o: torch.log(ins[0]), "Abs": lambda ins, a, o: torch.abs(ins[0]),
    "Neg": lambda ins, a, o: torch.neg(ins[0]), "Reciprocal": lambda ins, a, o: torch.reciprocal(ins[0]),
    "Floor": lambda ins, a, o: torch.floor(ins[0]), "Ceil": lambda ins, a, o: torch.ceil(ins[0]),
    "Round": lambda ins, a, o: torch.round(ins[0]), "Sign": lambda ins, a, o: torch.sign(ins[0]),
    "Erf": lambda ins, a, o: torch.erf(ins[0]), "Sin": lambda ins, a, o: torch.sin(ins[0]),
    "Cos": lambda ins, a, o: torch.cos(ins[0]), "Atan": lambda ins, a, o: torch.atan(ins[0]),
    "Relu": lambda ins, a, o: F.relu(ins[0]), "Sigmoid": lambda ins, a, o: torch.sigmoid(ins[0]),
    "Tanh": lambda ins, a, o: torch.tanh(ins[0]), "Softplus": lambda ins, a, o: F.softplus(ins[0]),
    "Elu": lambda ins, a, o: F.elu(ins[0], a.get("alpha", 1.0)),
    "Selu": lambda ins, a, o: a.get("gamma", 1.0507) * torch.where(
        ins[0] > 0, ins[0], a.get("alpha", 1.67326) * (torch.exp(ins[0]) - 1)),
    "Mish": lambda ins, a, o: F.mish(ins[0]),
    "HardSigmoid": _hardsigmoid, "HardSwish": lambda ins, a, o: F.hardswish(ins[0]),
    "LeakyRelu": lambda ins, a, o: F.leaky_relu(ins[0], a.get("alpha", 0.01)),
    "PRelu": lambda ins, a, o: torch.where(ins[0] >= 0, ins[0], ins[0] * ins[1]),
    "Gelu": lambda ins, a, o: F.gelu(ins[0], approximate=a.get("approximate", "none")),
    "Clip": _clip,
    "Softmax": _softmax_like(torch.softmax), "LogSoftmax": _softmax_like(torch.log_softmax),
    "Concat": lambda ins, a, o: torch.cat(list(ins), dim=a["axis"]),
    "Slice": _slice, "Reshape": _reshape, "Flatten": _flatten, "Transpose": _transpose,
    "Shape": _shape, "Size": lambda ins, a, o: torch.tensor(ins[0].numel(), dtype=torch.int64),
    "Gather": _gather, "GatherElements": _gather_elements, "Unsqueeze": _unsqueeze, "Squeeze": _squeeze,
    "ReduceMean": _reduce(lambda x, ax, k: torch.mean(x, dim=ax, keepdim=k)),
    "ReduceSum": _reduce(lambda x, ax, k: torch.sum(x, dim=ax, keepdim=k), first_input_opset=13),
    "ReduceMax": _reduce(_reduce_max), "ReduceMin": _reduce(_reduce_min), "ReduceProd": _reduce(_reduce_prod),
    "ReduceL2": _reduce(lambda x, ax, k: torch.sqrt(torch.sum(x * x, dim=ax, keepdim=k))),
    "ReduceL1": _reduce(lambda x, ax, k: torch.sum(torch.abs(x), dim=ax, keepdim=k)),
    "ReduceSumSquare": _reduce(lambda x, ax, k: torch.sum(x * x, dim=ax, keepdim=k)),
    "Pad": _pad, "Resize": _resize, "Upsample": _resize,
    "Identity": lambda ins, a, o: ins[0], "Dropout": _dropout,
    "LayerNormalization": _layer_norm, "InstanceNormalization": _instance_norm,
    "GroupNormalization": _group_norm,
    "Cast": _cast, "CastLike": lambda ins, a, o: ins[0].to(ins[1].dtype),
    "Expand": _expand, "ConstantOfShape": _constant_of_shape, "Range": _range, "Where": _where,
    "MatMul": _matmul, "Gemm": _gemm, "Tile": _tile, "TopK": _topk,
    "ArgMax": _argmax(torch.argmax), "ArgMin": _argmax(torch.argmin),
    "DepthToSpace": _depth_to_space, "SpaceToDepth": _space_to_depth, "CumSum": _cumsum,
    "Einsum": _einsum, "Trilu": _trilu,
}
