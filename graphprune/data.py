"""Calibration data for the data-driven importance methods.

XAI criteria need a few hundred labelled samples, nothing more, so the formats
are deliberately plain: a ``.npz`` with ``x`` (N,C,H,W float32) and ``y`` (N int
labels), or an image folder with one subfolder per class (sorted subfolder
names give the label indices, as torchvision's ImageFolder does, so labels agree
with models trained that way). Subsampling uses a fixed seed so that the same
command gives the same scores.
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


@dataclass
class Dataset:
    """Samples ``x`` (N,C,H,W float32) with integer labels ``y`` (N,)."""
    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subsample(self, n: int | None, seed: int = 0) -> "Dataset":
        """A fixed-seed random subset of `n` samples (all of them when n is None or >= N)."""
        if n is None or n >= len(self):
            return self
        if n <= 0:
            raise GraphpruneError(f"--samples must be positive, got {n}")
        idx = np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))
        return Dataset(self.x[idx], self.y[idx])

    def batches(self, batch_size: int):
        """Yield (x, y) numpy batches in order."""
        if batch_size <= 0:
            raise GraphpruneError(f"--batch-size must be positive, got {batch_size}")
        for i in range(0, len(self), batch_size):
            yield self.x[i:i + batch_size], self.y[i:i + batch_size]


def _validate(x: np.ndarray, y: np.ndarray, source: str) -> Dataset:
    if x.ndim != 4:
        raise GraphpruneError(f"{source}: x must be (N,C,H,W), got shape {tuple(x.shape)}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise GraphpruneError(f"{source}: y must be (N,) matching x, got {tuple(y.shape)} for {x.shape[0]} samples")
    if x.shape[0] == 0:
        raise GraphpruneError(f"{source}: the data set is empty")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise GraphpruneError(f"{source}: labels y must be integers")
    if np.any(y < 0):
        raise GraphpruneError(f"{source}: labels must be >= 0")
    if not np.all(np.isfinite(x)):
        raise GraphpruneError(f"{source}: x contains NaN or infinity")
    return Dataset(np.ascontiguousarray(x, dtype=np.float32), y.astype(np.int64))


def load_npz(path: str | os.PathLike) -> Dataset:
    """Read a ``.npz`` with arrays ``x`` and ``y``."""
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as f:
            if "x" not in f or "y" not in f:
                raise GraphpruneError(f"{p}: expected arrays 'x' and 'y', found {sorted(f.files)}")
            x, y = f["x"], f["y"]
    except GraphpruneError:
        raise
    except Exception as exc:
        raise GraphpruneError(f"{p}: not a readable .npz ({type(exc).__name__})") from None
    return _validate(np.asarray(x), np.asarray(y), str(p))


def _parse_triple(values, name: str, channels: int) -> np.ndarray:
    if values is None:
        return np.full(channels, 0.0 if name == "mean" else 1.0, np.float32)
    if isinstance(values, str):
        values = [float(v) for v in values.replace(",", " ").split()]
    arr = np.asarray(values, np.float32).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, channels)
    if arr.size != channels:
        raise GraphpruneError(f"--{name} needs 1 or {channels} values, got {arr.size}")
    if name == "std" and np.any(arr == 0):
        raise GraphpruneError("--std must not contain 0")
    return arr


def load_image_folder(path: str | os.PathLike, size: int | tuple[int, int] | None = None,
                      mean=None, std=None, channels: int = 3) -> Dataset:
    """Read ``root/<class>/<image>``; resize to `size` (H,W or one int), scale to [0,1], normalise."""
    from PIL import Image

    root = Path(path)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise GraphpruneError(f"{root}: no class subfolders")
    if size is None:
        raise GraphpruneError("an image folder needs --size")
    hw = (size, size) if isinstance(size, int) else tuple(size)
    mode = "L" if channels == 1 else "RGB"
    m, s = _parse_triple(mean, "mean", channels), _parse_triple(std, "std", channels)
    xs, ys = [], []
    for label, cls in enumerate(classes):
        for f in sorted((root / cls).iterdir()):
            if f.suffix.lower() not in _IMAGE_SUFFIXES:
                continue
            try:
                img = Image.open(f).convert(mode).resize((hw[1], hw[0]), Image.BILINEAR)
            except Exception as exc:
                raise GraphpruneError(f"{f}: not a readable image ({type(exc).__name__})") from None
            a = np.asarray(img, np.float32) / 255.0
            a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
            xs.append((a - m[:, None, None]) / s[:, None, None])
            ys.append(label)
    if not xs:
        raise GraphpruneError(f"{root}: no images found")
    return _validate(np.stack(xs), np.asarray(ys), str(root))


def load_data(path: str | os.PathLike, size=None, mean=None, std=None, channels: int = 3) -> Dataset:
    """`--data`: a .npz file or an image folder."""
    p = Path(path)
    if not p.exists():
        raise GraphpruneError(f"{p}: no such file or directory")
    if p.is_dir():
        return load_image_folder(p, size=size, mean=mean, std=std, channels=channels)
    return load_npz(p)


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
