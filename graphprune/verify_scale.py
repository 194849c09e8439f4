"""The scale each tensor of `verify` is judged at: the magnitude of the terms that made it.

float32 rounding is relative to the magnitudes an op combines, not to its result:
- a sum (Add, Sub, a mean, a BatchNormalization's x*s + b) can cancel to a result much
  smaller than its terms; its rounding is relative to the largest term;
- a product's rounding is relative to the product of its operands' magnitudes;
- exp and softmax turn their input's absolute error into a relative one;
- onnxruntime evaluates Sigmoid, Tanh, Erf (and what contains them, like GELU) with
  polynomial approximations whose error is absolute, about 1e-7 of their unit range, so a
  sigmoid output of 1e-6 is only known to about 10 %;
- everything else (Conv, Gemm, MatMul, pooling, Relu, Reshape...) is judged relative to
  its own largest surviving value.
No absolute floor is used: a tensor of values around 1e-11 is judged at 1e-11 unless the
terms that produced it were larger.
"""
from __future__ import annotations

import numpy as np

# result rounding relative to the largest operand (and, for reductions, the largest element)
_SUMS = {"Add", "Sub", "Sum", "Mean", "ReduceMean", "ReduceSum", "GlobalAveragePool", "AveragePool",
         "LogSoftmax", "InstanceNormalization", "LayerNormalization", "GroupNormalization"}
_PRODUCTS = {"Mul"}
# approximated with an absolute error relative to their unit output range
_UNIT_RANGE = {"Sigmoid", "Tanh", "Erf", "HardSigmoid", "Softplus"}
# exp(x + dx) = exp(x)(1 + dx): the result's RELATIVE error is its input's ABSOLUTE error, so
# attention softmax over logits around 50 is known to 50x float32's precision
_EXPONENTIAL = {"Exp", "Softmax"}
# x * f(x) with f one of the above: the error scales with |x|
_GATED = {"Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Mish", "HardSwish", "Swish", "Elu", "Selu", "Celu"}
# compute nothing new: they pass (part of) their input's absolute error through, so a Clip to
# [0, 6] of values around 1e3 carries the input's rounding, judged at the input's scale
_PASS_THROUGH = {"Relu", "Clip", "LeakyRelu", "PRelu", "MaxPool", "GlobalMaxPool", "ReduceMax", "ReduceMin",
                 "Max", "Min", "Slice", "Gather", "GatherElements", "Concat", "Split", "Transpose", "Reshape",
                 "Flatten", "Squeeze", "Unsqueeze", "Pad", "Resize", "Upsample", "Identity", "Expand", "Tile",
                 "DepthToSpace", "SpaceToDepth", "Where", "Abs", "Neg", "Cast", "Dropout"}


def term_scale(ctx, name: str, own: float) -> float:
    """The scale tensor `name` (largest surviving |value| `own`) is judged at.

    Recursive through pass-through ops and sums (their inputs' scales, memoised in ctx);
    ops that compute new values from weights (Conv, Gemm, MatMul, Div...) start afresh at
    their own scale, so no loose bound compounds through the network."""
    node = ctx.producer.get(name)
    if node is None:
        return own
    ins = [i for i in node.input if i]
    op = node.op_type
    if op in _SUMS:
        return max([own] + [ctx.scale(i) for i in ins])
    if op in _PASS_THROUGH:
        return max([own] + [ctx.scale(i) for i in ins if i in ctx.ref])
    if op in _PRODUCTS and len(ins) == 2:
        a, b = ins
        return max(own, ctx.scale(a) * ctx.kept_max(b), ctx.kept_max(a) * ctx.scale(b))
    if op in _EXPONENTIAL and ins:
        return own * max(1.0, ctx.scale(ins[0]))
    if op in _UNIT_RANGE:
        return max(own, 1.0, ctx.scale(ins[0]) if ins else 0.0)
    if op in _GATED and ins:
        return max(own, ctx.scale(ins[0]))
    if op == "BatchNormalization" and len(ins) >= 5:
        return max(own, _batchnorm_terms(ctx, ins))
    return own


def _batchnorm_terms(ctx, ins: list[str]) -> float:
    """BatchNormalization computes x*s + b, s = gamma/sqrt(var+eps), b = beta - mean*s."""
    from graphprune.arrays import view

    try:
        gamma, beta, mean, var = (view(ctx.inits[i]).astype(np.float64) for i in ins[1:5])
    except KeyError:  # computed parameters: judge by the input alone
        return ctx.scale(ins[0])
    s = np.abs(gamma) / np.sqrt(np.abs(var) + 1e-5)
    b = np.abs(beta) + np.abs(mean) * s
    return max(ctx.scale(ins[0]) * float(s.max(initial=0.0)), float(b.max(initial=0.0)))
