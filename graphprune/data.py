"""Calibration data for the data-driven importance methods (and optimize's accuracy checks).

XAI criteria need a few hundred samples, nothing more, so the formats are
deliberately plain:
* a ``.npz`` with ``x`` (N, ...) and optionally ``y`` (N integer labels); instead of
  ``x`` the array may be named like the model's input;
* an image folder with one subfolder per class (sorted subfolder names give the
  label indices, as torchvision's ImageFolder does, so labels agree with models
  trained that way), or a flat folder of images (no labels).
Without labels the XAI methods attribute the model's own top-1 class. Subsampling
uses a fixed seed so that the same command gives the same scores; an image folder
decodes only the images of the subset.

Everything a user can get wrong is refused here in one line before any model work:
non-numeric or complex arrays, NaN/infinite samples, labels that are not
non-negative integers (a float label of 1e20 is not a class), image options that
do not parse, and data that would not fit in memory.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graphprune.errors import GraphpruneError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# per-pixel statistics of the Fashion-MNIST training set (after scaling to [0,1])
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
MAX_LABEL = 2 ** 31 - 1        # far above any class count; keeps int64 conversion exact
MEMORY_FRACTION = 0.5          # of the available memory that loaded samples may take


@dataclass
class Dataset:
    """Samples ``x`` (N, ...) float32 with integer labels ``y`` (N,), or ``y`` None (unlabelled)."""
    x: np.ndarray
    y: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subsample(self, n: int | None, seed: int = 0) -> "Dataset":
        """A fixed-seed random subset of `n` samples (all of them when n is None or >= N)."""
        idx = subset_indices(len(self), n, seed)
        if idx is None:
            return self
        return Dataset(self.x[idx], None if self.y is None else self.y[idx])

    def batches(self, batch_size: int):
        """Yield (x, y) numpy batches in order (y None when unlabelled)."""
        if batch_size <= 0:
            raise GraphpruneError(f"--batch-size must be positive, got {batch_size}")
        for i in range(0, len(self), batch_size):
            yield self.x[i:i + batch_size], None if self.y is None else self.y[i:i + batch_size]


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
    """A validated Dataset (float32 x, int64 y or None); one-line errors naming `source`."""
    x = _check_x(x, source)
    if y is None:
        if require_labels:
            raise GraphpruneError(f"{source}: labels y are needed")
        return Dataset(x, None)
    return Dataset(x, _check_y(y, x.shape[0], source))


def as_dataset(data, require_labels: bool = False) -> Dataset:
    """A Dataset, an (x, y) pair (y may be None) or an x array, validated."""
    if isinstance(data, Dataset):
        return check_dataset(data.x, data.y, "data", require_labels)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return check_dataset(data[0], data[1], "data", require_labels)
    return check_dataset(data, None, "data", require_labels)


def load_npz(path: str | os.PathLike, input_names=(), require_labels: bool = True) -> Dataset:
    """Read a ``.npz`` with ``x`` (or an array named like the model's one input) and ``y`` (optional
    unless `require_labels`)."""
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as f:
            key = "x" if "x" in f.files else next((n for n in input_names if n in f.files), None)
            if key is None:
                want = "'x'" + "".join(f" or {n!r}" for n in input_names)
                raise GraphpruneError(f"{p}: expected an array {want} (and 'y' for labels), found {sorted(f.files)}")
            x = f[key]
            y = f["y"] if "y" in f.files else None
    except GraphpruneError:
        raise
    except Exception as exc:
        raise GraphpruneError(f"{p}: not a readable .npz ({type(exc).__name__})") from None
    if y is None and require_labels:
        raise GraphpruneError(f"{p}: expected arrays 'x' and 'y' (labels), found no 'y'")
    return check_dataset(x, y, str(p), require_labels)


def load_data(path: str | os.PathLike, size=None, mean=None, std=None, channels: int = 3,
              require_labels: bool = True, **image_options) -> Dataset:
    """`--data`: a .npz file or an image folder (see load_npz, graphprune.image_data.load_image_folder).

    `image_options` (samples, seed, channel_order, layout, scale, input_names)
    go to the loader they apply to."""
    p = Path(path)
    if not p.exists():
        raise GraphpruneError(f"{p}: no such file or directory")
    if p.is_dir():
        from graphprune.image_data import ImageOptions, load_image_folder
        opts = ImageOptions.parse(size=size, mean=mean, std=std, channels=channels,
                                  channel_order=image_options.get("channel_order", "rgb"),
                                  layout=image_options.get("layout", "nchw"),
                                  scale=image_options.get("scale", 1 / 255))
        return load_image_folder(p, opts, samples=image_options.get("samples"), seed=image_options.get("seed", 0),
                                 require_labels=require_labels)
    return load_npz(p, image_options.get("input_names", ()), require_labels)


def _read_idx(path: Path) -> np.ndarray:
    """The IDX format of (Fashion-)MNIST: magic (dtype, ndim), big-endian dims, raw data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(split: str = "train", root: str | os.PathLike = FASHION_MNIST_DIR,
                       normalise: bool = True) -> Dataset:
    """Fashion-MNIST from the Debian package's IDX files, as (N,1,28,28) float32.

    Pixels are scaled to [0,1] and, with `normalise`, standardised with the
    training-set mean/std (the preprocessing the example model was trained with).
    """
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise GraphpruneError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    img_path, lbl_path = root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"
    if not img_path.exists():
        raise GraphpruneError(f"{img_path}: missing (install the dataset-fashion-mnist package)")
    x = _read_idx(img_path).astype(np.float32)[:, None] / 255.0
    if normalise:
        x = (x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    y = _read_idx(lbl_path).astype(np.int64)
    return Dataset(np.ascontiguousarray(x, np.float32), y)
