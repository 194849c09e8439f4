"""`segmentation`: mean IoU of the candidate's masks against the original model's masks.

Reads the first output as (N, C, H, W) per-pixel scores. With C >= 2 the mask is the
argmax over C (class per pixel); with C = 1 (a sigmoid saliency or foreground map, as
rembg's u2netp gives) the mask is score > THRESHOLD (0.5). The original model's masks
on the same images are the pseudo ground truth, so no annotated masks are needed.

mIoU is computed as in the semantic-segmentation benchmarks (Cityscapes, ADE20K): one
confusion matrix over all pixels of all images, IoU_c = TP / (TP + FP + FN) per class,
mean over the classes present in either mask set (background included: for a binary
mask, background and foreground IoU both count). 1.0 exactly for identical masks. A
non-finite candidate score never passes the threshold and is never the argmax winner
(it is treated as -inf), so such pixels count against the candidate.
"""
from __future__ import annotations

import numpy as np

from graphprune.errors import GraphpruneError
from graphprune.metrics.base import Metric, Outputs, refuse_nonfinite, shape_text

THRESHOLD = 0.5


def masks(outputs: Outputs) -> Outputs:
    """[(N, H, W) integer class masks] of the first output."""
    o = np.asarray(outputs[0], np.float32)
    o = np.where(np.isfinite(o), o, -np.inf)
    if o.shape[1] == 1:
        return [(o[:, 0] > THRESHOLD).astype(np.uint8)]
    m = o.argmax(1)
    return [m.astype(np.uint8 if o.shape[1] <= 256 else np.int32)]


def mean_iou(cand: np.ndarray, ref: np.ndarray, classes: int) -> float:
    """mIoU over one confusion matrix of all pixels, classes present in either mask set."""
    if cand.shape != ref.shape:
        raise GraphpruneError(f"--metric segmentation: candidate masks are {shape_text(cand)}, the original's "
                              f"{shape_text(ref)}")
    cm = np.bincount(ref.astype(np.int64).ravel() * classes + cand.astype(np.int64).ravel(),
                     minlength=classes * classes).reshape(classes, classes)
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    present = union > 0
    return float(np.mean(tp[present] / union[present]))


def _compare(cand: Outputs, ref: Outputs, labels) -> float:
    classes = int(max(cand[0].max(initial=0), ref[0].max(initial=0))) + 1
    return mean_iou(cand[0], ref[0], max(classes, 2))


def _check(outputs: Outputs, names: list, labels) -> None:
    o = np.asarray(outputs[0])
    if o.ndim != 4 or o.shape[1] < 1 or o.shape[2] < 2 or o.shape[3] < 2:
        raise GraphpruneError(f"--metric segmentation needs per-pixel scores (N, C, H, W); output {names[0]!r} is "
                              f"{shape_text(o)} (try --metric fidelity)")
    refuse_nonfinite(outputs[:1], names[:1], "segmentation")


SEGMENTATION = Metric(
    "segmentation", needs_labels=False, compare=_compare, reduce=masks, check=_check,
    description=f"mean IoU of argmax masks (one channel: score > {THRESHOLD}) against the original model's masks")
