"""Model size: the bytes a deployed model's tensors take at their stored precision.

Why not the file size: protobuf framing, names and metadata are not what a runtime
keeps in memory, and an fp32 weight stored as raw bytes or as float_data costs the
same 4 bytes at run time. What counts is each initializer (and Constant node value):
elements x bytes per element of its type, so an int8 QDQ model is charged its int8
weights, its fp32 scales, its zero points and its int32 biases; fp16 weights 2 bytes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx

# packed sub-byte types: bits per element
_BITS = {onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4}
if hasattr(onnx.TensorProto, "FLOAT4E2M1"):
    _BITS[onnx.TensorProto.FLOAT4E2M1] = 4


@dataclass
class ModelSize:
    bytes: int                                   # all stored tensors at their precision
    by_dtype: dict[str, int] = field(default_factory=dict)   # bytes per element type name
    file_bytes: int = 0                          # the serialized model, for reference

    def summary(self) -> str:
        parts = ", ".join(f"{k} {v:,}" for k, v in sorted(self.by_dtype.items(), key=lambda kv: -kv[1]))
        return f"{self.bytes:,} bytes of tensors ({parts})"


def tensor_bytes(t: onnx.TensorProto) -> int:
    """Elements x bytes per element of `t`'s type (sub-byte types packed; strings by content)."""
    n = math.prod(t.dims)
    if t.data_type == onnx.TensorProto.STRING:
        return sum(len(s) for s in t.string_data)
    if t.data_type in _BITS:
        return (n * _BITS[t.data_type] + 7) // 8
    return n * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize


def _stored_tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for n in graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t
            elif a.type == onnx.AttributeProto.GRAPH:
                yield from _stored_tensors(a.g)
            for g in a.graphs:
                yield from _stored_tensors(g)


def model_size(model: onnx.ModelProto) -> ModelSize:
    """Bytes of every initializer and Constant value of `model` (subgraphs included)."""
    by: dict[str, int] = {}
    for t in _stored_tensors(model.graph):
        name = onnx.TensorProto.DataType.Name(t.data_type).lower()
        by[name] = by.get(name, 0) + tensor_bytes(t)
    return ModelSize(sum(by.values()), by, model.ByteSize())
