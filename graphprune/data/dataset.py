"""The Dataset type and the checks every loader's output goes through.

Everything a user can get wrong in the arrays is refused here in one line before
any model work: non-numeric or complex arrays, NaN/infinite samples, labels that
are not non-negative integers (a float label of 1e20 is not a class: converted to
int64 it wraps around), and data that would not fit in memory.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphprune.errors import GraphpruneError

MAX_LABEL = 2 ** 31 - 1        # far above any class count; keeps int64 conversion exact
MEMORY_FRACTION = 0.5          # of the available memory that loaded samples may take


@dataclass
class Dataset:
    """Samples ``x`` (N, ...) float32 with integer labels ``y`` (N,), or ``y`` None (unlabelled).

    For a model with several inputs ``x`` is a dict {input name: (N, ...) array}, all with the
    same N (`optimize` feeds them by name; `importance` scores single-input models only)."""
    x: np.ndarray | dict
    y: np.ndarray | None = None

    def __len__(self) -> int:
        x = next(iter(self.x.values())) if isinstance(self.x, dict) else self.x
        return int(x.shape[0])

    def take(self, idx) -> "Dataset":
        """The samples at `idx` (an index array or a slice), every input and the labels alike."""
        x = {k: v[idx] for k, v in self.x.items()} if isinstance(self.x, dict) else self.x[idx]
        return Dataset(x, None if self.y is None else self.y[idx])

    def subsample(self, n: int | None, seed: int = 0) -> "Dataset":
        """A fixed-seed random subset of `n` samples (all of them when n is None or >= N)."""
        idx = subset_indices(len(self), n, seed)
        return self if idx is None else self.take(idx)

    def batches(self, batch_size: int):
        """Yield (x, y) numpy batches in order (y None when unlabelled)."""
        if batch_size <= 0:
            raise GraphpruneError(f"--batch-size must be positive, got {batch_size}")
        for i in range(0, len(self), batch_size):
            b = self.take(slice(i, i + batch_size))
            yield b.x, b.y


def subset_indices(total: int, n: int | None, seed: int = 0) -> np.ndarray | None:
    """Sorted indices of a fixed-seed subset of `n` of `total` items (None: take all)."""
    if n is None or n >= total:
        return None
    if n <= 0:
        raise GraphpruneError(f"--samples must be positive, got {n}")
    return np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))


def check_memory(n_bytes: int, what: str) -> None:
    """Refuse to allocate more than MEMORY_FRACTION of the available memory, before allocating."""
    import psutil
    avail = psutil.virtual_memory().available
    if n_bytes > MEMORY_FRACTION * avail:
        raise GraphpruneError(f"{what} would take {n_bytes / 2**30:.1f} GiB, more than "
                              f"{MEMORY_FRACTION:.0%} of the {avail / 2**30:.1f} GiB of available memory "
                              "(use fewer --samples or a smaller --size)")


def _check_x(x, source: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "iuf":
        raise GraphpruneError(f"{source}: x must hold real numbers, got dtype {x.dtype}")
    if x.ndim < 2:
        raise GraphpruneError(f"{source}: x must be (N, ...) with one sample per row, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise GraphpruneError(f"{source}: the data set is empty")
    with np.errstate(over="ignore"):  # values beyond float32 become inf, refused below
        x32 = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x32).all():
        raise GraphpruneError(f"{source}: x contains NaN or infinity"
                              + (" (after conversion to float32)" if np.isfinite(x).all() else ""))
    return x32


def _check_y(y, n: int, source: str) -> np.ndarray:
    y = np.asarray(y)
    if y.dtype.kind not in "iuf":
        raise GraphpruneError(f"{source}: labels y must be integers, got dtype {y.dtype}")
    if y.ndim != 1 or y.shape[0] != n:
        raise GraphpruneError(f"{source}: y must be (N,) matching x, got {tuple(y.shape)} for {n} samples")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise GraphpruneError(f"{source}: labels y contain NaN or infinity")
        if not np.all(np.mod(y, 1) == 0):
            raise GraphpruneError(f"{source}: labels y must be integers (got e.g. {y[np.mod(y, 1) != 0][0]!r})")
    if y.size and y.min() < 0:
        raise GraphpruneError(f"{source}: labels must be >= 0, got {y.min()}")
    if y.size and y.max() > MAX_LABEL:
        raise GraphpruneError(f"{source}: label {y.max()} is not a class index")
    return y.astype(np.int64)


def check_dataset(x, y, source: str, require_labels: bool = False) -> Dataset:
    """A validated Dataset (float32 x, int64 y or None); one-line errors naming `source`.
    `x` may be a dict of arrays named like the model's inputs (same number of samples each)."""
    if isinstance(x, dict):
        x = {k: _check_x(v, f"{source} [{k}]") for k, v in x.items()}
        sizes = {k: v.shape[0] for k, v in x.items()}
        if len(set(sizes.values())) > 1:
            raise GraphpruneError(f"{source}: the input arrays differ in sample count ({sizes})")
        n = next(iter(sizes.values()))
    else:
        x = _check_x(x, source)
        n = x.shape[0]
    if y is None:
        if require_labels:
            raise GraphpruneError(f"{source}: labels y are needed")
        return Dataset(x, None)
    return Dataset(x, _check_y(y, n, source))


def as_dataset(data, require_labels: bool = False) -> Dataset:
    """A Dataset, an (x, y) pair (y may be None) or an x array, validated."""
    if isinstance(data, Dataset):
        return check_dataset(data.x, data.y, "data", require_labels)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return check_dataset(data[0], data[1], "data", require_labels)
    return check_dataset(data, None, "data", require_labels)
