"""Refusing models whose weights are not finite numbers.

Why: a NaN or Inf weight poisons everything downstream without an error of its own: L1/L2
scores become NaN (numpy warns, the ranking is arbitrary), data-free importance normalises
to all zeros, and every output of the model is NaN, so no check that compares outputs can
prove anything. Such a model is a broken input, refused in one line naming the weight.

NaN is refused anywhere. Inf is refused only in the parameters of layers that compute with
them (Conv, Gemm, MatMul, normalisations): elsewhere -inf is a legitimate constant (attention
masks, Clip bounds, the initial value of a running maximum).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from graphprune.arrays import view
from graphprune.errors import GraphpruneError

_PARAMETER_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "InstanceNormalization",
                  "LayerNormalization", "GroupNormalization", "PRelu"}
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                onnx.TensorProto.BFLOAT16}


def check_finite_weights(model: onnx.ModelProto) -> None:
    """Raise GraphpruneError naming the first initializer (or Constant node) holding NaN, or
    Inf where a layer computes with it."""
    graph = model.graph
    parameters = {name for n in graph.node if n.op_type in _PARAMETER_OPS for name in n.input[1:]}
    tensors = [(t.name, t) for t in graph.initializer]
    for n in graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    tensors.append((n.output[0], a.t))
    for name, t in tensors:
        if t.data_type not in _FLOAT_TYPES or t.data_location == onnx.TensorProto.EXTERNAL:
            continue
        values = _values(t)
        if values is None or values.size == 0:
            continue
        n_nan = int(np.count_nonzero(np.isnan(values)))
        n_inf = int(np.count_nonzero(np.isinf(values))) if name in parameters else 0
        if n_nan or n_inf:
            what = " and ".join(s for s in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} Inf" if n_inf else "") if s)
            raise GraphpruneError(f"weight {name!r} holds {what} value(s) out of {values.size}: the model's "
                                  f"outputs are not finite numbers, so it cannot be ranked, pruned or verified")


def _values(t: onnx.TensorProto) -> np.ndarray | None:
    try:
        v = view(t)
        if v.dtype.kind != "f":  # bfloat16 arrives as raw integers
            v = numpy_helper.to_array(t).astype(np.float32)
        return v
    except Exception:
        return None
