"""`text-boxes`: F1 of the text boxes a DB text detector yields, against the original model's boxes.

A DB-style text detector (PaddleOCR / rapidocr's PP-OCR det, DBNet) outputs a text
probability map (N, 1, H, W); what its user receives is the boxes its post-processing
draws from that map, and what the next stage (the recogniser) reads are the crops of
those boxes. Pixel mIoU of the map (`segmentation`) counts every border pixel that
flips; a pruned detector whose boxes are the same boxes is, to its user, the same
detector. So this metric runs DB's post-processing on candidate and original alike and
scores the boxes, as text-detection benchmarks do (ICDAR's box-level F-measure, "hmean").

Post-processing, with rapidocr's defaults (DBPostProcess: thresh 0.3, box_thresh 0.5,
unclip_ratio 1.6, min_size 3, use_dilation true, score_mode fast):
  1. binarise the map at THRESH (0.3), dilate with a 2x2 kernel;
  2. connected components (8-connected; DB takes the outer contours of the same mask);
  3. per component its bounding box; drop it when its shorter side < MIN_SIZE (3 px) or
     when the mean probability inside its box is below BOX_THRESH (0.5);
  4. unclip: grow the box by d = area x UNCLIP_RATIO / perimeter on every side (DB's
     polygon offset, exact for a rectangle); drop it when its shorter side < MIN_SIZE + 2.
Simplification: boxes are axis-aligned (DB fits a minimum-area rotated rectangle); on
horizontal text, the usual case, the two agree; rotated lines get their enclosing box.

Score: per image, candidate and original boxes are matched one to one, greedily by
descending IoU, a pair counting when IoU >= IOU_MATCH (0.5); over all images
F1 = 2 TP / (candidate boxes + original boxes) (precision and recall pooled). 1.0 exactly
for the original's own boxes. An original that yields no box on the whole data is
refused (nothing to score against).
"""
from __future__ import annotations

import numpy as np

from graphprune.errors import GraphpruneError
from graphprune.metrics.base import Metric, Outputs, refuse_nonfinite, shape_text
from graphprune.metrics.detection import iou_one

THRESH = 0.3
BOX_THRESH = 0.5
UNCLIP_RATIO = 1.6
MIN_SIZE = 3
IOU_MATCH = 0.5
MAX_CANDIDATES = 1000   # DB's max_candidates: components beyond it (smallest first) are ignored


def text_boxes(prob: np.ndarray) -> np.ndarray:
    """One (H, W) probability map -> (K, 5) float64 boxes x0, y0, x1, y1, score (pixel coordinates,
    x1/y1 exclusive), in component order (row-major by first pixel)."""
    from scipy import ndimage
    p = np.where(np.isfinite(prob), prob, 0.0).astype(np.float64)
    mask = ndimage.binary_dilation(p > THRESH, structure=np.ones((2, 2), bool), origin=(-1, -1))
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    out = []
    for sl in ndimage.find_objects(labels)[:MAX_CANDIDATES]:
        y, x = sl
        h, w = y.stop - y.start, x.stop - x.start
        if min(h, w) < MIN_SIZE:
            continue
        score = float(p[sl].mean())
        if score < BOX_THRESH:
            continue
        d = h * w * UNCLIP_RATIO / (2.0 * (h + w))
        if min(h, w) + 2 * d < MIN_SIZE + 2:
            continue
        out.append([x.start - d, y.start - d, x.stop + d, y.stop + d, score])
    return np.asarray(out, np.float64).reshape(-1, 5)


def matched(cand: np.ndarray, ref: np.ndarray, iou_thr: float = IOU_MATCH) -> int:
    """One-to-one matches of two box sets, greedy by descending IoU (ties: candidate order)."""
    if not len(cand) or not len(ref):
        return 0
    iou = np.stack([iou_one(b, ref[:, :4]) for b in cand[:, :4]])
    pairs = sorted(((iou[i, j], i, j) for i, j in zip(*np.nonzero(iou >= iou_thr))), key=lambda t: (-t[0], t[1], t[2]))
    used_c, used_r, tp = set(), set(), 0
    for _, i, j in pairs:
        if i not in used_c and j not in used_r:
            used_c.add(i)
            used_r.add(j)
            tp += 1
    return tp


def box_f1(cands: list, refs: list) -> float:
    """Pooled F1 = 2 TP / (candidate boxes + original boxes) over per-image box arrays."""
    n_ref = sum(len(r) for r in refs)
    if n_ref == 0:
        raise GraphpruneError("--metric text-boxes: the original model finds no text box on this data "
                              f"(probability > {THRESH}, box score >= {BOX_THRESH}); there is nothing to score "
                              "against (try --metric fidelity or segmentation)")
    tp = sum(matched(c, r) for c, r in zip(cands, refs))
    return 2.0 * tp / (sum(len(c) for c in cands) + n_ref)


def _check(outputs: Outputs, names: list, labels) -> None:
    o = np.asarray(outputs[0])
    if o.ndim != 4 or o.shape[1] != 1 or o.shape[2] < MIN_SIZE or o.shape[3] < MIN_SIZE:
        raise GraphpruneError(f"--metric text-boxes needs a text probability map (N, 1, H, W) as a DB text detector "
                              f"gives; output {names[0]!r} is {shape_text(o)} (try --metric segmentation or fidelity)")
    refuse_nonfinite(outputs[:1], names[:1], "text-boxes")


def _reduce(outputs: Outputs) -> Outputs:
    o = np.asarray(outputs[0])
    boxes = np.empty(len(o), dtype=object)
    for i in range(len(o)):
        boxes[i] = text_boxes(o[i, 0])
    return [boxes]


TEXT_BOXES = Metric(
    "text-boxes", needs_labels=False, reduce=_reduce, check=_check,
    compare=lambda cand, ref, labels: box_f1(list(cand[0]), list(ref[0])),
    check_reference=lambda ref, labels: box_f1(list(ref[0]), list(ref[0])),
    description=f"F1 of the DB text boxes (map > {THRESH}, box score >= {BOX_THRESH}, unclip {UNCLIP_RATIO}) "
                f"matched at IoU >= {IOU_MATCH} to the original model's boxes")
