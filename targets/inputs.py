"""Concrete inputs for timing: every backend runs the same shapes and data."""
from __future__ import annotations

import numpy as np
import onnx

from graphprune.errors import GraphpruneError

_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
           onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32", onnx.TensorProto.UINT8: "uint8"}


def input_specs(model: onnx.ModelProto, batch: int = 1) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype) of each real graph input; symbolic dims become `batch` (latency is batch 1 by default)."""
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        if tt.elem_type not in _DTYPES:
            raise GraphpruneError(f"input {vi.name!r}: unsupported element type {onnx.TensorProto.DataType.Name(tt.elem_type)}")
        shape = []
        for d in tt.shape.dim:
            shape.append(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else batch)
        specs.append((vi.name, tuple(shape), _DTYPES[tt.elem_type]))
    if not specs:
        raise GraphpruneError("the model has no graph inputs to feed")
    return specs


def random_inputs(model: onnx.ModelProto, seed: int = 0, batch: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape, dtype in input_specs(model, batch):
        if dtype.startswith("float"):
            out[name] = rng.standard_normal(shape).astype(dtype)
        else:
            out[name] = rng.integers(0, 2, size=shape).astype(dtype)
    return out
