"""Per-class importance tables and the filters a class subset keeps.

For a predicted subset S of k classes, gate l keeps the N_l filters with the largest
sum over S of the per-class importance (graphprune.importance, `--per-class`). N_l is
fixed per layer (round(budget x C_l)), so every gated path has static shapes and one
bounded cost.

Why integer tables: the same top-N must come out of torch (training, the reference),
onnxruntime and TVM. With float scores, two filters of equal sum (dead filters score 0
for every class) are a tie that each runtime's TopK may break differently, and float
sums in a different order can swap near-equal filters. So the importance is quantised
to integers A in [0, Q] and stored as T[c, f] = A[c, f] * k * C + (C - 1 - f). A sum over
k rows is k * (C * sum A + C - 1 - f): distinct for every filter (C * dA = f - g has no
solution with |f - g| < C but dA = 0, f = g), lower filter index first among equal A,
and every value is an integer below 2^24, which float32 adds exactly in any order.
"""
from __future__ import annotations

import numpy as np

from graphprune.errors import GraphpruneError

_EXACT = 2 ** 24  # float32 integers are exact below this


def quantisation_levels(k: int, channels: int) -> int:
    """The largest Q (power of 2, at most 4096) whose table sums stay exact in float32."""
    q = (_EXACT // k - channels) // (k * channels)
    if q < 4:
        raise GraphpruneError(f"a layer of {channels} filters with --k {k} leaves too few importance levels "
                              "for exact float32 sums; use a smaller --k")
    return int(min(4096, 2 ** int(np.floor(np.log2(q)))))


def integer_table(per_class: np.ndarray, k: int) -> np.ndarray:
    """(classes, C) float32 table of exact integers (see the module docstring) from per-class scores."""
    pc = np.asarray(per_class, np.float64)
    if pc.ndim != 2 or not np.isfinite(pc).all():
        raise GraphpruneError(f"per-class importance must be a finite (classes, C) array, got shape {pc.shape}")
    classes, channels = pc.shape
    q = quantisation_levels(k, channels)
    top = pc.max(axis=1, keepdims=True)
    scaled = np.where(top > 0, pc / np.where(top > 0, top, 1.0), 0.0)  # each class row in [0, 1]
    levels = np.rint(np.clip(scaled, 0.0, 1.0) * q)
    table = levels * (k * channels) + (channels - 1 - np.arange(channels))[None, :]
    assert table.max() * k < _EXACT
    return table.astype(np.float32)


def select_numpy(table: np.ndarray, classes, keep: int) -> np.ndarray:
    """The kept filter indices (descending summed score) for one class subset; the reference rule."""
    s = table[np.asarray(classes)].astype(np.float64).sum(0)
    return np.argsort(-s, kind="stable")[:keep]
