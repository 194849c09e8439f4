""".npz calibration files: ``x`` (or an array named like the model's one input) and optional ``y``."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from graphprune.data.dataset import Dataset, check_dataset
from graphprune.errors import GraphpruneError


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
