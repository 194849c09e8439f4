"""`saliency`: 1 - mean absolute error of the candidate's saliency map against the original's.

For salient-object segmenters (U^2-Net / u2netp as rembg runs it, BASNet, ...). Their first
output is one (N, 1, H, W) map that the application uses as it is, as a soft alpha matte:
rembg min-max normalises each image's map to [0, 1] and cuts the object out with it. What a
user sees is therefore that continuous map, not a mask at 0.5, and the salient-object
detection benchmarks (DUTS, ECSSD, the U^2-Net paper) judge it by the mean absolute error
of the normalised map. Pixel mIoU of a mask at 0.5 (`segmentation`) is a much harsher judge
of such a model: a few flipped border pixels on a small object move it by 0.01.

Per image, both maps are min-max normalised as rembg does ((m - min) / (max - min); a
constant map becomes 0), the MAE is the mean over pixels of |candidate - original|, and
the score is 1 - (mean over images of the MAE): 1.0 exactly for identical maps, 0.99 for a
map that is off by 0.01 on average (1 % of the alpha range). A non-finite candidate pixel
counts as the largest error (1); the original's map must be finite (refused in one line).
"""
from __future__ import annotations

import numpy as np

from graphprune.errors import GraphpruneError
from graphprune.metrics.base import Metric, Outputs, refuse_nonfinite, shape_text


def normalised_maps(outputs: Outputs) -> Outputs:
    """[(N, H, W) float32 maps in [0, 1], NaN where the candidate was not finite] of the first output."""
    o = np.asarray(outputs[0], np.float64)[:, 0]
    n, finite = len(o), np.isfinite(o)
    lo = np.where(finite, o, np.inf).reshape(n, -1).min(1)
    hi = np.where(finite, o, -np.inf).reshape(n, -1).max(1)
    none = ~finite.reshape(n, -1).any(1)
    lo[none], hi[none] = 0.0, 0.0
    span = (hi - lo)[:, None, None]
    with np.errstate(invalid="ignore"):
        m = np.where(span > 0, (o - lo[:, None, None]) / np.where(span > 0, span, 1.0), 0.0)
    return [np.where(finite, m, np.nan).astype(np.float32)]


def _compare(cand: Outputs, ref: Outputs, labels) -> float:
    a, b = cand[0], ref[0]
    if a.shape != b.shape:
        raise GraphpruneError(f"--metric saliency: candidate maps are {shape_text(a)}, the original's {shape_text(b)}")
    err = np.where(np.isnan(a), 1.0, np.abs(a.astype(np.float64) - b))
    return float(1.0 - err.reshape(len(err), -1).mean(1).mean())


def _check(outputs: Outputs, names: list, labels) -> None:
    o = np.asarray(outputs[0])
    if o.ndim != 4 or o.shape[1] != 1 or o.shape[2] < 2 or o.shape[3] < 2:
        raise GraphpruneError(f"--metric saliency needs one saliency map per image (N, 1, H, W); output "
                              f"{names[0]!r} is {shape_text(o)} (try --metric segmentation or fidelity)")
    refuse_nonfinite(outputs[:1], names[:1], "saliency")


SALIENCY = Metric(
    "saliency", needs_labels=False, compare=_compare, reduce=normalised_maps, check=_check,
    description="1 - mean absolute error of the min-max normalised saliency map against the original model's")
