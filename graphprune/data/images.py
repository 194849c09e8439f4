"""Image folders as calibration data: options, decoding, and the memory bound.

A separate module from the .npz loader because images bring PIL and a set of
preprocessing options (size, mean/std, channel order, layout, scale) that must
match what the model was trained with; the .npz path has none of that.

Layouts: ``root/<class>/<image>`` (labels = sorted class folder index, as
torchvision's ImageFolder) or ``root/<image>`` (no labels). Preprocessing, in
this order: decode as RGB (or L for a one-channel input), resize to H x W
(bilinear), multiply by `scale` (default 1/255), reorder channels (rgb|bgr),
subtract `mean` and divide by `std` (per channel, in the model's channel order),
lay out as nchw or nhwc. Only the images of the fixed-seed subset are decoded,
and the memory they need (samples x C x H x W x 4 bytes) is checked first.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graphprune.data.dataset import Dataset, check_dataset, check_memory, subset_indices
from graphprune.errors import GraphpruneError

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
CHANNEL_ORDERS = ("rgb", "bgr")
LAYOUTS = ("nchw", "nhwc")


def parse_floats(values, name: str) -> list[float]:
    """'0.485,0.456,0.406' (or a number / list) -> floats; one-line error naming --`name`."""
    if isinstance(values, (int, float)):
        values = [values]
    if isinstance(values, str):
        values = values.replace(",", " ").split()
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise GraphpruneError(f"--{name} needs numbers separated by commas, got {values!r}") from None
    if not out:
        raise GraphpruneError(f"--{name} needs at least one number")
    if not all(math.isfinite(v) for v in out):
        raise GraphpruneError(f"--{name} must be finite, got {values!r}")
    return out


def parse_scale(value) -> float:
    """--scale: a positive number or a fraction such as '1/255'."""
    if isinstance(value, str) and "/" in value:
        num, _, den = value.partition("/")
        a, b = parse_floats(num, "scale")[0], parse_floats(den, "scale")[0]
        if b == 0:
            raise GraphpruneError(f"--scale {value!r} divides by zero")
        v = a / b
    else:
        v = parse_floats(value, "scale")[0]
    if not v > 0:
        raise GraphpruneError(f"--scale must be positive, got {value!r}")
    return v


def _per_channel(values, name: str, channels: int, default: float) -> np.ndarray:
    if values is None:
        return np.full(channels, default, np.float32)
    arr = np.asarray(parse_floats(values, name), np.float32)
    if arr.size == 1:
        arr = np.repeat(arr, channels)
    if arr.size != channels:
        raise GraphpruneError(f"--{name} needs 1 or {channels} values (the model input has {channels} channels), "
                              f"got {arr.size}")
    if name == "std" and np.any(arr <= 0):
        raise GraphpruneError(f"--std must be positive, got {values!r}")
    return arr


def parse_size(size) -> tuple[int, int] | None:
    """--size H [W] (an int or a pair) -> (H, W), positive (check_memory bounds what they allocate)."""
    if size is None:
        return None
    hw = [size] if isinstance(size, (int, np.integer)) else list(size)
    if len(hw) not in (1, 2):
        raise GraphpruneError(f"--size needs H or H W, got {len(hw)} values")
    if not all(isinstance(v, (int, np.integer)) and v >= 1 for v in hw):
        raise GraphpruneError(f"--size values must be positive integers, got {hw}")
    return (int(hw[0]), int(hw[-1]))


@dataclass
class ImageOptions:
    """Validated preprocessing options (see the module docstring for the order they apply in)."""
    size: tuple[int, int] | None
    mean: np.ndarray
    std: np.ndarray
    channels: int = 3
    channel_order: str = "rgb"
    layout: str = "nchw"
    scale: float = 1 / 255

    @classmethod
    def parse(cls, size=None, mean=None, std=None, channels: int = 3, channel_order: str = "rgb",
              layout: str = "nchw", scale=1 / 255) -> "ImageOptions":
        if channels not in (1, 3):
            raise GraphpruneError(f"image folders give 1 or 3 channels; the model input has {channels}")
        if channel_order not in CHANNEL_ORDERS:
            raise GraphpruneError(f"--channel-order must be one of {', '.join(CHANNEL_ORDERS)}, got {channel_order!r}")
        if layout not in LAYOUTS:
            raise GraphpruneError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        return cls(parse_size(size), _per_channel(mean, "mean", channels, 0.0), _per_channel(std, "std", channels, 1.0),
                   channels, channel_order, layout, parse_scale(scale))

    def decode(self, path: Path) -> np.ndarray:
        """One image -> float32 array, (C,H,W) for nchw or (H,W,C) for nhwc."""
        from PIL import Image
        h, w = self.size
        try:
            with Image.open(path) as img:
                img = img.convert("L" if self.channels == 1 else "RGB").resize((w, h), Image.BILINEAR)
                a = np.asarray(img, np.float32) * np.float32(self.scale)
        except Exception as exc:
            raise GraphpruneError(f"{path}: not a readable image ({type(exc).__name__})") from None
        a = a[:, :, None] if a.ndim == 2 else a
        if self.channel_order == "bgr":
            a = a[:, :, ::-1]
        a = (a - self.mean) / self.std
        return np.ascontiguousarray(a.transpose(2, 0, 1) if self.layout == "nchw" else a)


def list_images(root: Path) -> tuple[list[Path], list[int] | None]:
    """(image files, labels) of ``root/<class>/*`` (sorted class folders), or of ``root/*`` with labels None."""
    def images(d: Path) -> list[Path]:
        return sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in _IMAGE_SUFFIXES)

    classes = sorted(d for d in root.iterdir() if d.is_dir())
    if classes:
        files, labels = [], []
        for label, d in enumerate(classes):
            found = images(d)
            files += found
            labels += [label] * len(found)
        return files, labels
    return images(root), None


def load_image_folder(path: str | os.PathLike, opts: ImageOptions, samples: int | None = None, seed: int = 0,
                      require_labels: bool = True) -> Dataset:
    """Decode the fixed-seed subset of `samples` images of the folder (the same subset
    Dataset.subsample(samples, seed) would pick from all of them)."""
    root = Path(path)
    files, labels = list_images(root)
    if not files:
        raise GraphpruneError(f"{root}: no images found (expected image files or one subfolder per class)")
    if labels is None and require_labels:
        raise GraphpruneError(f"{root}: no class subfolders (labels are needed here)")
    if opts.size is None:
        raise GraphpruneError("an image folder needs --size (the model input has no static size)")
    idx = subset_indices(len(files), samples, seed)
    if idx is not None:
        files = [files[i] for i in idx]
        labels = None if labels is None else [labels[i] for i in idx]
    check_memory(len(files) * opts.channels * opts.size[0] * opts.size[1] * 4,
                 f"{len(files)} images of {opts.channels}x{opts.size[0]}x{opts.size[1]}")
    x = np.stack([opts.decode(f) for f in files])
    return check_dataset(x, None if labels is None else np.asarray(labels), str(root), require_labels)
