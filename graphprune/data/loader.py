"""`--data`: dispatch a path to the .npz or the image-folder loader."""
from __future__ import annotations

import os
from pathlib import Path

from graphprune.data.dataset import Dataset
from graphprune.data.images import ImageOptions, load_image_folder
from graphprune.data.npz import load_npz
from graphprune.errors import GraphpruneError


def load_data(path: str | os.PathLike, size=None, mean=None, std=None, channels: int = 3,
              require_labels: bool = True, **image_options) -> Dataset:
    """`--data`: a .npz file or an image folder (see load_npz, graphprune.data.images.load_image_folder).

    `image_options` (samples, seed, channel_order, layout, scale, input_names)
    go to the loader they apply to."""
    p = Path(path)
    if not p.exists():
        raise GraphpruneError(f"{p}: no such file or directory")
    if p.is_dir():
        opts = ImageOptions.parse(size=size, mean=mean, std=std, channels=channels,
                                  channel_order=image_options.get("channel_order", "rgb"),
                                  layout=image_options.get("layout", "nchw"),
                                  scale=image_options.get("scale", 1 / 255))
        return load_image_folder(p, opts, samples=image_options.get("samples"), seed=image_options.get("seed", 0),
                                 require_labels=require_labels)
    return load_npz(p, image_options.get("input_names", ()), require_labels)
