"""ONNX nodes with weights or with an nn equivalent, built as torch.nn modules.

Why modules and not functions: XAI libraries find layers by module type
(zennit's composites map rules onto nn.Conv2d / nn.Linear / nn.BatchNorm2d /
activation modules; captum's layer methods hook a module). So every Conv,
ConvTranspose, Gemm/MatMul-with-constant-weight, BatchNormalization,
activation and pooling node becomes a real nn module, and anything around it
that has no nn equivalent (asymmetric padding, SAME auto-padding, Gemm's alpha
and beta) happens in the step's pre/post processing, outside the module, so a
forward hook on the module sees exactly the ONNX node's output.

`build_layer` returns None when a node cannot be a module (e.g. a Conv whose
weight is computed at run time); the bridge then runs it as a function.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from graphprune.errors import GraphpruneError

try:  # zennit's composites give its Sum layer the Norm rule that LRP needs at residual additions
    from zennit.layer import Sum as _SumBase
except Exception:  # zennit is optional: without it the bridge still works
    _SumBase = nn.Module


class Sum(_SumBase):
    """Adds two same-shaped tensors stacked on a new leading axis (an ONNX Add of two activations).

    A module rather than ``a + b`` so that LRP can split relevance between the
    branches of a residual connection in proportion to their contributions.
    Stacked on axis 0, not zennit's default last axis: the copy is then two
    contiguous blocks and the sum an elementwise add (about 3x faster on
    ResNet-50's residual maps; zennit's Norm rule does not depend on the axis).
    """

    def __init__(self):
        nn.Module.__init__(self)
        self.dim = 0

    def forward(self, stacked):
        return torch.sum(stacked, dim=0)


class AnyRankBatchNorm(nn.BatchNorm2d):
    """nn.BatchNorm2d that also accepts (N,C) and (N,C,L) input, as ONNX BatchNormalization does."""

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (got {input.dim()}-D input)")


class Clamp(nn.Module):
    """Clip with an open end (the nn.Hardtanh family needs both bounds)."""

    def __init__(self, lo, hi):
        super().__init__()
        self.lo, self.hi = lo, hi

    def forward(self, x):
        return torch.clamp(x, self.lo, self.hi)


@dataclass
class WeightUse:
    """How an ONNX constant maps onto a module tensor: ``onnx_value = to_onnx(module.attr)``."""
    const: str
    attr: str
    kind: str  # "id": same layout, "T": 2-D transpose, "reshape": same data, other shape


@dataclass
class Layer:
    module: nn.Module
    weights: list[WeightUse] = field(default_factory=list)
    pre: Callable | None = None    # x -> x before the module
    post: Callable | None = None   # (y, get) -> y after the module; get(name) reads tensors


def _same_pads(in_sizes, kernel, strides, dilations, upper: bool) -> list[int]:
    """ONNX auto_pad SAME_*: pads (all begins, then all ends) for the given input size."""
    begins, ends = [], []
    for n, k, s, d in zip(in_sizes, kernel, strides, dilations):
        total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
        small, big = total // 2, total - total // 2
        begins.append(small if upper else big)
        ends.append(big if upper else small)
    return begins + ends


def _torch_pad(pads: list[int]) -> list[int]:
    """ONNX [b1, b2, .., e1, e2, ..] -> F.pad's [b_last, e_last, ..., b1, e1]."""
    n = len(pads) // 2
    out = []
    for i in reversed(range(n)):
        out += [pads[i], pads[i + n]]
    return out


def _pad_step(a, kernel, strides, dilations, value=0.0):
    """Return (padding for the module, pre-step or None) for ONNX pads/auto_pad."""
    n = len(kernel)
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        upper = auto == "SAME_UPPER"

        def pre(x):
            return F.pad(x, _torch_pad(_same_pads(x.shape[2:], kernel, strides, dilations, upper)), value=value)
        return 0, pre
    pads = [0] * (2 * n) if auto == "VALID" else list(a.get("pads", [0] * (2 * n)))
    if pads[:n] == pads[n:]:
        return tuple(pads[:n]), None
    return 0, lambda x: F.pad(x, _torch_pad(pads), value=value)


_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONVT = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_MAXPOOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_AVGPOOL = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
_GAP = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}
_GMP = {1: nn.AdaptiveMaxPool1d, 2: nn.AdaptiveMaxPool2d, 3: nn.AdaptiveMaxPool3d}


def _conv(node, a, const, rank):
    w = const(node.input[1])
    if w is None:
        return None
    b = const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if len(node.input) > 2 and node.input[2] and b is None:
        return None
    k = list(w.shape[2:])
    n = len(k)
    strides, dil = list(a.get("strides", [1] * n)), list(a.get("dilations", [1] * n))
    padding, pre = _pad_step(a, k, strides, dil)
    g = a.get("group", 1)
    mod = _CONV[n](w.shape[1] * g, w.shape[0], k, stride=strides, padding=padding, dilation=dil,
                   groups=g, bias=b is not None)
    uses = [WeightUse(node.input[1], "weight", "id")]
    if b is not None:
        uses.append(WeightUse(node.input[2], "bias", "id"))
    return Layer(mod, uses, pre=pre)


def _conv_transpose(node, a, const, rank):
    w = const(node.input[1])
    has_b = len(node.input) > 2 and bool(node.input[2])
    b = const(node.input[2]) if has_b else None
    if w is None or (has_b and b is None):
        return None
    if "output_shape" in a:
        raise GraphpruneError(f"ConvTranspose {node.name}: the output_shape attribute is not supported")
    k = list(w.shape[2:])
    n = len(k)
    strides, dil = list(a.get("strides", [1] * n)), list(a.get("dilations", [1] * n))
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise GraphpruneError(f"ConvTranspose {node.name}: auto_pad {a['auto_pad']} is not supported")
    pads = list(a.get("pads", [0] * (2 * n))) if a.get("auto_pad", "NOTSET") == "NOTSET" else [0] * (2 * n)
    g = a.get("group", 1)
    symmetric = pads[:n] == pads[n:]
    mod = _CONVT[n](w.shape[0], w.shape[1] * g, k, stride=strides, padding=tuple(pads[:n]) if symmetric else 0,
                    output_padding=tuple(a.get("output_padding", [0] * n)), groups=g, dilation=dil,
                    bias=b is not None)
    post = None
    if not symmetric:  # crop the padding off the full transposed-conv output
        def post(y, get):
            idx = [slice(None), slice(None)] + [slice(pads[i], y.shape[2 + i] - pads[i + n]) for i in range(n)]
            return y[tuple(idx)]
    uses = [WeightUse(node.input[1], "weight", "id")]
    if b is not None:
        uses.append(WeightUse(node.input[2], "bias", "id"))
    return Layer(mod, uses, post=post)


def _gemm(node, a, const, rank):
    w = const(node.input[1])
    has_c = len(node.input) > 2 and bool(node.input[2])
    c = const(node.input[2]) if has_c else None
    if w is None or w.dim() != 2 or a.get("transA", 0) or (has_c and c is None):
        return None
    trans_b = a.get("transB", 0)
    out_f, in_f = (w.shape[0], w.shape[1]) if trans_b else (w.shape[1], w.shape[0])
    alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
    fold_bias = has_c and alpha == 1.0 and beta == 1.0 and c.numel() == out_f and \
        (c.dim() == 1 or tuple(c.shape) == (1, out_f))
    mod = nn.Linear(in_f, out_f, bias=fold_bias)
    uses = [WeightUse(node.input[1], "weight", "id" if trans_b else "T")]
    post = None
    if fold_bias:
        uses.append(WeightUse(node.input[2], "bias", "reshape"))
    elif has_c or alpha != 1.0:
        cname = node.input[2] if has_c else None

        def post(y, get):
            y = y * alpha if alpha != 1.0 else y
            return y + beta * get(cname) if cname else y
    return Layer(mod, uses, post=post)


def _matmul(node, a, const, rank):
    w = const(node.input[1])
    if w is None or w.dim() != 2 or const(node.input[0]) is not None:
        return None
    return Layer(nn.Linear(w.shape[0], w.shape[1], bias=False), [WeightUse(node.input[1], "weight", "T")])


def _batchnorm(node, a, const, rank):
    vals = [const(n) for n in node.input[1:5]]
    if any(v is None for v in vals) or len(node.output) > 1 and any(node.output[1:]):
        return None
    c = vals[0].numel()
    mod = AnyRankBatchNorm(c, eps=a.get("epsilon", 1e-5), momentum=1.0 - a.get("momentum", 0.9))
    mod.eval()
    return Layer(mod, [WeightUse(node.input[1], "weight", "id"), WeightUse(node.input[2], "bias", "id"),
                       WeightUse(node.input[3], "running_mean", "id"),
                       WeightUse(node.input[4], "running_var", "id")])


def _clip(node, a, const, rank):
    if node.domain not in ("", "ai.onnx"):
        return None
    if "min" in a or "max" in a or len(node.input) == 1:  # opset < 11 (attributes) or no bounds
        lo, hi = a.get("min"), a.get("max")
    else:
        lo_t = const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        hi_t = const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if (len(node.input) > 1 and node.input[1] and lo_t is None) or \
                (len(node.input) > 2 and node.input[2] and hi_t is None):
            return None
        lo = float(lo_t.reshape(-1)[0]) if lo_t is not None else None
        hi = float(hi_t.reshape(-1)[0]) if hi_t is not None else None
    if lo == 0.0 and hi == 6.0:
        return Layer(nn.ReLU6())
    if lo == 0.0 and hi is None:
        return Layer(nn.ReLU())
    if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
        return Layer(nn.Hardtanh(lo, hi))
    return Layer(Clamp(lo, hi))


def _prelu(node, a, const, rank):
    s = const(node.input[1])
    if s is None:
        return None
    x_rank = rank(node.input[0])
    if s.numel() == 1:
        return Layer(nn.PReLU(1), [WeightUse(node.input[1], "weight", "reshape")])
    # a per-channel slope broadcasts along axis 1 only when shaped (C,1,..) for the input's rank
    if x_rank is not None and s.dim() in (x_rank - 1, x_rank) and all(d == 1 for d in s.shape[-(x_rank - 2):]) \
            and (s.dim() == x_rank - 1 or s.shape[0] == 1):
        return Layer(nn.PReLU(s.numel()), [WeightUse(node.input[1], "weight", "reshape")])
    return None


def _pool_common(node, a, rank, table, pad_value, **extra):
    k = list(a["kernel_shape"])
    n = len(k)
    strides, dil = list(a.get("strides", [1] * n)), list(a.get("dilations", [1] * n))
    padding, pre = _pad_step(a, k, strides, dil, value=pad_value)
    if pre is None and any(p > kk // 2 for p, kk in zip(padding, k)):  # torch limit: pad <= kernel/2
        pads = list(a["pads"])
        padding, pre = 0, (lambda x: F.pad(x, _torch_pad(pads), value=pad_value))
    kwargs = dict(stride=strides, padding=padding, ceil_mode=bool(a.get("ceil_mode", 0)), **extra)
    if table is _MAXPOOL:
        kwargs["dilation"] = dil
    elif dil != [1] * n:
        return None
    return Layer(table[n](k, **kwargs), pre=pre)


def _maxpool(node, a, const, rank):
    if len(node.output) > 1 and node.output[1]:
        return None
    return _pool_common(node, a, rank, _MAXPOOL, float("-inf"))


def _avgpool(node, a, const, rank):
    include = bool(a.get("count_include_pad", 0))
    layer = _pool_common(node, a, rank, _AVGPOOL, 0.0, count_include_pad=include)
    if layer is not None and layer.pre is not None and not include:
        raise GraphpruneError(f"AveragePool {node.name}: asymmetric padding without count_include_pad")
    return layer


def _global_pool(table):
    def build(node, a, const, rank):
        r = rank(node.input[0])
        return Layer(table[(r or 4) - 2](1))
    return build


def _softmax(node, a, const, rank, opset):
    if opset < 13:
        return None
    return Layer(nn.Softmax(dim=a.get("axis", -1)))


def _hardsigmoid(node, a, const, rank):
    if abs(a.get("alpha", 0.2) - 1 / 6) < 1e-7 and a.get("beta", 0.5) == 0.5:
        return Layer(nn.Hardsigmoid())
    return None


_SIMPLE = {
    "Relu": lambda a: nn.ReLU(), "Sigmoid": lambda a: nn.Sigmoid(), "Tanh": lambda a: nn.Tanh(),
    "HardSwish": lambda a: nn.Hardswish(), "LeakyRelu": lambda a: nn.LeakyReLU(a.get("alpha", 0.01)),
    "Gelu": lambda a: nn.GELU(approximate=a.get("approximate", "none")), "Elu": lambda a: nn.ELU(a.get("alpha", 1.0)),
    "Mish": lambda a: nn.Mish(), "Softsign": lambda a: nn.Softsign(),
}

_BUILDERS = {
    "Conv": _conv, "ConvTranspose": _conv_transpose, "Gemm": _gemm, "MatMul": _matmul,
    "BatchNormalization": _batchnorm, "Clip": _clip, "PRelu": _prelu, "MaxPool": _maxpool,
    "AveragePool": _avgpool, "GlobalAveragePool": _global_pool(_GAP), "GlobalMaxPool": _global_pool(_GMP),
    "HardSigmoid": _hardsigmoid,
}


def build_layer(node, attrs: dict, const, rank, opset: int) -> Layer | None:
    """An nn module for `node`, or None to run it as a function.

    `const(name)` returns the constant tensor behind an input (None when it is
    computed at run time); `rank(name)` the tensor's rank when shape inference knows it.
    """
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        return None
    if op in _SIMPLE:
        return Layer(_SIMPLE[op](attrs))
    if op == "Softmax":
        return _softmax(node, attrs, const, rank, opset)
    if op in _BUILDERS:
        return _BUILDERS[op](node, attrs, const, rank)
    return None
