"""Concrete inputs for timing: every backend runs the same shapes and data.

The shapes come from graphprune.inputs (the one rule of every command: batch 1, other
dynamic dims DEFAULT_DYNAMIC_DIM, --input-shape overrides), and so do the feeds: a model is
timed, compiled and checked on exactly what `prune --verify` and `count` use.
"""
from __future__ import annotations

import numpy as np
import onnx

from graphprune.errors import GraphpruneError
from graphprune.inputs import graph_inputs, random_feeds
from graphprune.targets.prepare import pinned_shapes


def input_specs(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None
                ) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype) of each real graph input at its pinned shape."""
    inputs = graph_inputs(model)
    if not inputs:
        raise GraphpruneError("the model has no graph inputs to feed")
    shapes = pinned_shapes(model, input_shapes)
    specs = []
    for vi in inputs:
        et = vi.type.tensor_type.elem_type
        try:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(et).name
        except Exception:  # undefined or string element types
            raise GraphpruneError(f"input {vi.name!r}: unsupported element type "
                                  f"{onnx.TensorProto.DataType.Name(et) if et else 'UNDEFINED'}") from None
        specs.append((vi.name, tuple(shapes[vi.name]), dtype))
    return specs


def random_inputs(model: onnx.ModelProto, seed: int = 0, input_shapes: dict[str, list[int]] | None = None
                  ) -> dict[str, np.ndarray]:
    """Feeds at the pinned shapes (graphprune.inputs.random_feeds: normal floats, zero ints)."""
    specs = input_specs(model, input_shapes)
    return random_feeds(model, {name: list(shape) for name, shape, _ in specs}, seed=seed)
