"""Concrete inputs for running a model: shapes for symbolic dims, random feeds."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from graphprune.errors import GraphpruneError
from graphprune.shape_defaults import DEFAULT_DYNAMIC_DIM  # apart, so the CLI's --help needs no onnx


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def concrete_shapes(model: onnx.ModelProto, overrides: dict[str, list[int]] | None = None,
                    batch: int = 1) -> dict[str, list[int]]:
    """Each input's shape with symbolic dims resolved: the first to `batch`, others to 64."""
    shapes = {}
    for inp in graph_inputs(model):
        if overrides and inp.name in overrides:
            shapes[inp.name] = list(overrides[inp.name])
            continue
        dims = []
        for i, d in enumerate(inp.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(d.dim_value)
            else:
                dims.append(batch if i == 0 else DEFAULT_DYNAMIC_DIM)
        shapes[inp.name] = dims
    return shapes


def random_feeds(model: onnx.ModelProto, shapes: dict[str, list[int]], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in graph_inputs(model):
        dtype = helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
        shape = shapes[inp.name]
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[inp.name] = np.ones(shape, dtype)
        else:
            feeds[inp.name] = np.zeros(shape, dtype)
    return feeds


def with_static_inputs(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> onnx.ModelProto:
    """A copy whose inputs have the given static shapes (for shape-dependent counting)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for inp in graph_inputs(m):
        dims = inp.type.tensor_type.shape.dim
        for d, v in zip(dims, shapes[inp.name]):
            d.Clear()
            d.dim_value = int(v)
    del m.graph.value_info[:]
    for o in m.graph.output:  # declared symbolic dims (a dynamic batch) would mask the static ones
        o.type.tensor_type.ClearField("shape")
    return m


def parse_input_shapes(specs: list[str] | None) -> dict[str, list[int]] | None:
    """`["x=1,3,640,640"]` -> {"x": [1, 3, 640, 640]} (the --input-shape option of every command)."""
    if not specs:
        return None
    shapes = {}
    for spec in specs:
        name, _, dims = spec.partition("=")
        try:
            values = [int(d) for d in dims.split(",")]
        except ValueError:
            values = []
        if not name or not values or any(v <= 0 for v in values):
            raise GraphpruneError(f"--input-shape {spec!r}: expected NAME=D,D,... with positive integers")
        shapes[name] = values
    return shapes


def check_input_shapes(model: onnx.ModelProto, shapes: dict[str, list[int]] | None) -> None:
    """Each override names a real input, has its rank and agrees with its static dims."""
    if not shapes:
        return
    declared = {i.name: i for i in graph_inputs(model)}
    for name, dims in shapes.items():
        if name not in declared:
            raise GraphpruneError(f"--input-shape: the model has no input {name!r} "
                                  f"(inputs: {', '.join(declared)})")
        fixed = declared[name].type.tensor_type.shape.dim
        static = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in fixed]  # Paddle: -1
        if len(fixed) != len(dims) or any(d is not None and d != v for d, v in zip(static, dims)):
            want = [d if d is not None else "?" for d in static]
            raise GraphpruneError(f"--input-shape {name}={','.join(map(str, dims))} does not fit the model's "
                                  f"input shape {want}")


def check_shape_values(shapes) -> None:
    """API callers pass dicts by hand: every dim must be a positive integer (numpy ints too).

    Why here: a negative or zero dim does not fail loudly downstream, it makes `count`
    return negative MACs and `verify` compare empty tensors."""
    if shapes is None:
        return
    if not isinstance(shapes, dict):
        raise GraphpruneError(f"input shapes must be a dict {{name: [dims]}}, got {type(shapes).__name__}")
    for name, dims in shapes.items():
        ok = isinstance(dims, (list, tuple)) and all(  # [] is a scalar input
            isinstance(d, (int, np.integer)) and not isinstance(d, (bool, np.bool_)) and d > 0 for d in dims)
        if not ok:
            raise GraphpruneError(f"input shape {name}={dims!r}: every dim must be a positive integer")


def checked_shapes(model: onnx.ModelProto, shapes: dict[str, list[int]] | None) -> dict[str, list[int]] | None:
    """`shapes` validated against `model` (positive integer dims, real inputs, ranks, static dims)."""
    check_shape_values(shapes)
    check_input_shapes(model, shapes)
    return None if shapes is None else {k: [int(d) for d in v] for k, v in shapes.items()}


# Running a model needs its weights once more (the runtime's copy) plus its activations; a
# check that keeps every intermediate tensor (verify) needs all of them at once. Refuse
# above this fraction of the memory available now rather than be killed (or swap) halfway.
MEMORY_FRACTION = 0.5


def run_memory_estimate(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> int:
    """Bytes of every tensor of `model` run at `shapes`: inputs, weights and each intermediate
    tensor whose shape inference resolves (a lower bound where data-dependent shapes remain)."""
    from graphprune.shapes import inferred_at

    static = inferred_at(model, shapes)  # the skeleton: weights are its inputs, counted once below
    total = 0
    seen = {t.name for t in model.graph.initializer}
    for vi in list(static.graph.input) + list(static.graph.value_info) + list(static.graph.output):
        tt = vi.type.tensor_type
        if vi.name in seen or not tt.HasField("shape") or not tt.elem_type:
            continue
        seen.add(vi.name)
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tt.shape.dim]
        try:
            itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).itemsize
        except (KeyError, TypeError, ValueError):
            itemsize = 4
        total += int(np.prod(dims, dtype=np.float64)) * itemsize
    for t in model.graph.initializer:
        try:
            itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        except (KeyError, TypeError, ValueError):
            itemsize = 4
        total += int(np.prod(list(t.dims), dtype=np.float64)) * itemsize
    return total


def check_run_memory(model: onnx.ModelProto, shapes: dict[str, list[int]], copies: int = 1,
                     what: str = "running the model") -> None:
    """Refuse, in one line naming the shape and the estimate, to run `model` at `shapes` when
    `copies` times its tensors would take more than MEMORY_FRACTION of the available memory."""
    import psutil

    need = copies * run_memory_estimate(model, shapes)
    available = psutil.virtual_memory().available
    if need > MEMORY_FRACTION * available:
        shown = input_shape_text(shapes)
        raise GraphpruneError(f"input shape {shown}: {what} needs about {need / 2**30:.1f} GiB, more than "
                              f"{MEMORY_FRACTION:.0%} of the {available / 2**30:.1f} GiB available; "
                              f"choose a smaller --input-shape")


def input_shape_text(shapes: dict[str, list[int]]) -> str:
    """{"x": [1, 3, 64, 64], "sr": []} -> 'x=1,3,64,64 sr=scalar': the --input-shape spelling,
    for messages that tell the user which shape was used."""
    return " ".join(f"{k}={','.join(map(str, v)) or 'scalar'}" for k, v in shapes.items())


MAX_SEED = 2 ** 32 - 1   # numpy's and torch's seeds: non-negative, and this covers both


def check_seed(seed, name: str = "--seed") -> None:
    """Seeds go to numpy/torch, which refuse negative or huge ones with a ValueError deep inside."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise GraphpruneError(f"{name} must be an integer between 0 and {MAX_SEED}, got {seed!r}")
