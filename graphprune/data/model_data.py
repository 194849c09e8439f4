"""Data for a given model: the one place where `--data` options meet the model's inputs.

`importance`, `optimize` (its --data and --train-data) and the benchmark tools load
their data through `load_for_model`, so an image folder is decoded the same way for all
of them and its defaults come from the model: the size from the model input's static
H x W, the channel count from its C (1 -> grayscale). A .npz is matched to the inputs
by name (several inputs: one array each). Image options given for a .npz are refused
rather than silently ignored.
"""
from __future__ import annotations

import os
from pathlib import Path

import onnx

from graphprune.data.dataset import Dataset
from graphprune.data.loader import load_data
from graphprune.errors import GraphpruneError

IMAGE_OPTIONS = ("size", "mean", "std", "scale", "channel_order", "layout")


def model_inputs(model: onnx.ModelProto) -> list[tuple[str, list[int | None]]]:
    """(name, static dims with None for unknown) of each graph input that is not an initializer."""
    inits = {t.name for t in model.graph.initializer}
    return [(i.name, [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                      for d in i.type.tensor_type.shape.dim])
            for i in model.graph.input if i.name not in inits]


def _dims_text(dims) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in dims) + "]"


def load_for_model(path: str | os.PathLike, model: onnx.ModelProto, *, size=None, mean=None, std=None, scale=None,
                   channel_order=None, layout=None, samples: int | None = None, seed: int = 0,
                   require_labels: bool = False, option: str = "--data") -> Dataset:
    """`path` (.npz or image folder) as data for `model`; image options default from the model input."""
    p = Path(path)
    given = [k for k, v in zip(IMAGE_OPTIONS, (size, mean, std, scale, channel_order, layout)) if v is not None]
    if given and p.exists() and not p.is_dir():
        raise GraphpruneError(f"--{given[0].replace('_', '-')} applies to image folders only; {option} {p} is not one")
    inputs = model_inputs(model)
    if not p.is_dir():
        return load_data(p, require_labels=require_labels, input_names=[n for n, _ in inputs], samples=samples,
                         seed=seed)
    if len(inputs) != 1:
        raise GraphpruneError(f"{option} {p}: an image folder feeds one image input; the model has {len(inputs)} "
                              f"({', '.join(n for n, _ in inputs)}): give a .npz with one array per input")
    name, dims = inputs[0]
    if dims and len(dims) != 4:
        raise GraphpruneError(f"{option} {p}: images are (N, C, H, W) or (N, H, W, C) tensors, but model input "
                              f"{name!r} is {_dims_text(dims)}")
    layout = layout or "nchw"
    c_axis, hw_axes = (1, (2, 3)) if layout == "nchw" else (3, (1, 2))
    static = lambda i: dims[i] if i < len(dims) and dims[i] else None  # noqa: E731
    if size is None and len(dims) == 4 and all(static(i) for i in hw_axes):
        size = [static(i) for i in hw_axes]
    return load_data(p, size=size, mean=mean, std=std, channels=static(c_axis) or 3, require_labels=require_labels,
                     samples=samples, seed=seed, input_names=[name], channel_order=channel_order or "rgb",
                     layout=layout, scale=scale if scale is not None else 1 / 255)
