"""Zero-copy read access to ONNX weights.

A ResNet-50 holds 100 MB of weights; `numpy_helper.to_array` and gs's lazy loader copy
each tensor (gs twice). Analysis and pruning only read weights, so they view the
protobuf's raw bytes directly; the one copy made is the sliced result.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper


def view(t: onnx.TensorProto) -> np.ndarray:
    """Read-only array over a TensorProto's data (copied only when not stored raw)."""
    if t.HasField("raw_data") and t.data_location != onnx.TensorProto.EXTERNAL \
            and t.data_type not in (onnx.TensorProto.STRING, onnx.TensorProto.BFLOAT16):
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).newbyteorder("<")
        return np.frombuffer(t.raw_data, dtype=dtype).reshape(tuple(t.dims))
    return numpy_helper.to_array(t)


def constant_values(t: gs.Constant) -> np.ndarray:
    """Values of a gs constant without gs's copies when it still wraps the TensorProto."""
    lazy = getattr(t, "_values", None)
    proto = getattr(lazy, "tensor", None)
    if isinstance(proto, onnx.TensorProto):
        return view(proto)
    return np.asarray(t.values)
