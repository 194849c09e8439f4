"""Refusals before any scoring work: option values and non-finite weights.

Why weights: a NaN or infinity in any weight makes every activation downstream
NaN, and the normalisation then turns each layer's scores into zeros, which
`prune --criterion metadata` would accept as a ranking. Refuse, naming the tensor.
"""
from __future__ import annotations

import numpy as np
import onnx

from graphprune.errors import GraphpruneError
from graphprune.inputs import check_seed

MAX_BATCH_SIZE = 4096     # one batch of activations of a small CNN at 224x224 is already gigabytes
MAX_N_STEPS = 1024        # path points per sample; the ranking settles by 16 (docs/importance.md)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def check_int(value, name: str, lo: int, hi: int | None = None) -> None:
    """`name` must be an integer in [lo, hi]; one-line error otherwise."""
    if not _is_int(value) or value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise GraphpruneError(f"{name} must be an integer {bound}, got {value!r}")


def check_run_options(samples, batch_size, seed, n_steps=None) -> None:
    if samples is not None:
        check_int(samples, "--samples", 1)
    check_int(batch_size, "--batch-size", 1, MAX_BATCH_SIZE)
    check_seed(seed)
    if n_steps is not None:
        check_int(n_steps, "--n-steps", 1, MAX_N_STEPS)


def check_finite_weights(model) -> None:
    """Raise naming the first initializer (or nn.Module parameter/buffer) holding NaN or infinity."""
    if isinstance(model, onnx.ModelProto):
        from graphprune.arrays import view
        for t in model.graph.initializer:
            if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                               onnx.TensorProto.BFLOAT16):
                a = view(t)
                if a.dtype.kind == "f" and not np.isfinite(a).all():
                    raise GraphpruneError(f"initializer {t.name!r} holds NaN or infinity; importance scores "
                                          "of such a model would be meaningless")
        return
    import torch
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise GraphpruneError(f"tensor {name!r} holds NaN or infinity; importance scores of such a model "
                                  "would be meaningless")
