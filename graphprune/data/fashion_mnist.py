"""Fashion-MNIST from the Debian package (dataset-fashion-mnist): the example model's data."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from graphprune.data.dataset import Dataset
from graphprune.errors import GraphpruneError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# per-pixel statistics of the Fashion-MNIST training set (after scaling to [0,1])
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530


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
