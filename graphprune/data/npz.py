""".npz calibration files: ``x`` (or one array per model input, named like the inputs) and optional ``y``.

A model with several inputs (an image and its size, a token sequence and its mask) needs
one array for each, with the same number of samples; they are matched by name, as
onnxruntime feeds them, so their order in the file does not matter."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from graphprune.data.dataset import Dataset, check_dataset
from graphprune.errors import GraphpruneError


def load_npz(path: str | os.PathLike, input_names=(), require_labels: bool = True) -> Dataset:
    """Read a ``.npz`` with ``x`` (or an array named like the model's one input) and ``y`` (optional
    unless `require_labels`); for several `input_names`, one array per input (Dataset.x a dict)."""
    p = Path(path)
    input_names = list(input_names)
    try:
        with np.load(p, allow_pickle=False) as f:
            if len(input_names) > 1:
                missing = [n for n in input_names if n not in f.files]
                if missing:
                    raise GraphpruneError(f"{p}: the model has inputs {', '.join(map(repr, input_names))}; no array "
                                          f"named {', '.join(map(repr, missing))} (found {sorted(f.files)})")
                x = {n: f[n] for n in input_names}
            else:
                key = "x" if "x" in f.files else next((n for n in input_names if n in f.files), None)
                if key is None:
                    want = "'x'" + "".join(f" or {n!r}" for n in input_names)
                    raise GraphpruneError(f"{p}: expected an array {want} (and 'y' for labels), "
                                          f"found {sorted(f.files)}")
                x = f[key]
            y = f["y"] if "y" in f.files else None
    except GraphpruneError:
        raise
    except Exception as exc:
        raise GraphpruneError(f"{p}: not a readable .npz ({type(exc).__name__})") from None
    if y is None and require_labels:
        raise GraphpruneError(f"{p}: expected arrays 'x' and 'y' (labels), found no 'y'")
    return check_dataset(x, y, str(p), require_labels)
