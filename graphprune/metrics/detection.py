"""`detection`: boxes decoded from YOLO-style heads, scored as mAP@0.5 against the original's detections.

Without labelled boxes, the original model's own detections on the same images serve
as pseudo ground truth: a pruned detector is as good as it finds what the original
found. Heads (the first output, one image per row):

* YOLOv8/v11 ``[B, 4+C(+M), N]``: per anchor cx, cy, w, h, then C class scores (no
  objectness; segmentation heads append M mask coefficients, ignored);
* YOLOv5 ``[B, N, 5+C]``: cx, cy, w, h, objectness, C class scores (score = obj x class).

The layout is told apart by shape (anchors outnumber channels: 8400 vs 84). The class
count C comes from the model's Ultralytics metadata ("names") when present, otherwise
from the shape (all remaining channels are classes). Decoding as Ultralytics' predict:
the best class per anchor, confidence > CONF (0.25), per-class NMS at IOU_NMS (0.45),
at most MAX_DET (300) boxes per image, MAX_NMS (30000) candidates into NMS.

mAP@0.5: per class with at least one pseudo ground-truth box, candidate boxes sorted by
score over all images are matched greedily to the best-overlapping unmatched box of
that class in the same image (IoU >= 0.5: true positive, else false positive); AP is
the area under the precision envelope (all-point interpolation, VOC2010 and later); the
mean over those classes is the metric. A candidate identical to the original scores 1.0.
Classes the original never detects are not scored (as in COCO), so the metric refuses a
reference with no detection at all.
"""
from __future__ import annotations

import ast

import numpy as np

from graphprune.errors import GraphpruneError
from graphprune.metrics.base import Metric, Outputs, refuse_nonfinite, shape_text

CONF = 0.25
IOU_NMS = 0.45
IOU_MATCH = 0.5
MAX_DET = 300
MAX_NMS = 30000
_MAX_WH = 7680.0   # class offset for batched per-class NMS (Ultralytics' trick)


def head_layout(shape, num_classes: int | None) -> tuple[str, int] | None:
    """('v8' | 'v5', classes) for a head output shape, or None when it is not one."""
    if len(shape) != 3:
        return None
    _, d1, d2 = shape
    if d1 < d2:   # [B, 4+C, N]
        c = num_classes or d1 - 4
        return ("v8", c) if c >= 1 and 4 + c <= d1 else None
    c = num_classes or d2 - 5   # [B, N, 5+C]
    return ("v5", c) if c >= 1 and 5 + c <= d2 else None


def iou_one(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each of (K, 4) xyxy boxes. Two zero-area boxes have IoU 1 when they
    are the same box (a degenerate detection still matches itself), else 0."""
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)  # noqa: E731
    union = area(box) + area(boxes) - inter
    same = (boxes == box).all(1).astype(np.float64)
    return np.where(union > 0, inter / np.where(union > 0, union, 1), same)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, highest score first (ties: lower index first)."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        order = rest[iou_one(boxes[i], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, np.int64)


def decode_image(pred: np.ndarray, layout: str, classes: int, conf: float = CONF, iou: float = IOU_NMS,
                 max_det: int = MAX_DET) -> np.ndarray:
    """One image's head output -> (K, 6) float64 detections: x1, y1, x2, y2, score, class."""
    p = np.asarray(pred, np.float64)
    p = p.T if layout == "v8" else p            # -> (anchors, channels)
    if layout == "v8":
        cls_scores = p[:, 4:4 + classes]
    else:
        cls_scores = p[:, 4:5] * p[:, 5:5 + classes]
    cls = cls_scores.argmax(1)
    score = cls_scores[np.arange(len(p)), cls]
    ok = np.isfinite(score) & np.isfinite(p[:, :4]).all(1) & (score > conf)
    p, cls, score = p[ok], cls[ok], score[ok]
    if len(score) > MAX_NMS:
        top = np.argsort(-score, kind="stable")[:MAX_NMS]
        p, cls, score = p[top], cls[top], score[top]
    xy, wh = p[:, :2], p[:, 2:4] / 2
    boxes = np.concatenate([xy - wh, xy + wh], 1)
    keep = nms(boxes + cls[:, None] * _MAX_WH, score, iou)[:max_det]
    return np.concatenate([boxes[keep], score[keep, None], cls[keep, None].astype(np.float64)], 1)


def _ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point interpolated average precision."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[1.0], precision, [0.0]])
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    i = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _class_ap(preds: list, gts: list, c: int, iou_thr: float) -> float:
    g = [d[d[:, 5] == c, :4] for d in gts]
    n_gt = sum(len(x) for x in g)
    rows = [(s, img, box) for img, d in enumerate(preds) for box, s in zip(d[d[:, 5] == c, :4], d[d[:, 5] == c, 4])]
    rows.sort(key=lambda r: -r[0])   # stable: ties keep image order
    used = [np.zeros(len(x), bool) for x in g]
    tp = np.zeros(len(rows))
    for k, (_, img, box) in enumerate(rows):
        if len(g[img]):
            ious = np.where(used[img], -1.0, iou_one(box, g[img]))
            j = int(ious.argmax())
            if ious[j] >= iou_thr:
                used[img][j] = True
                tp[k] = 1
    if not rows:
        return 0.0
    ctp = np.cumsum(tp)
    return _ap(ctp / n_gt, ctp / np.arange(1, len(rows) + 1))


def mean_ap(preds: list, gts: list, iou_thr: float = IOU_MATCH) -> float:
    """mAP@iou_thr of per-image (K, 6) detections against per-image (G, 6) ground truth."""
    classes = sorted({int(c) for d in gts for c in d[:, 5]})
    if not classes:
        raise GraphpruneError("--metric detection: the original model detects nothing on this data "
                              f"(confidence > {CONF}); there is nothing to score against (try --metric fidelity)")
    return float(np.mean([_class_ap(preds, gts, c, iou_thr) for c in classes]))


def classes_from_metadata(model) -> int | None:
    """The class count in an Ultralytics export's metadata ("names": "{0: 'person', ...}"), else None."""
    if model is None:
        return None
    for p in model.metadata_props:
        if p.key == "names":
            try:
                names = ast.literal_eval(p.value)
            except (ValueError, SyntaxError):
                return None
            return len(names) if isinstance(names, (dict, list)) and names else None
    return None


def nms_in_graph(model) -> bool:
    """An Ultralytics export with NMS inside the graph (args "'nms': True") gives final boxes, not a head."""
    args = next((p.value for p in model.metadata_props if p.key == "args"), "") if model is not None else ""
    return "'nms': True" in args


def detection_metric(num_classes: int | None = None, nms_inside: bool = False) -> Metric:
    """The `detection` metric for a head with `num_classes` classes (None: all channels after the boxes)."""

    def check(outputs: Outputs, names: list, labels) -> None:
        o = np.asarray(outputs[0])
        if nms_inside:
            raise GraphpruneError("--metric detection decodes raw YOLO heads; this export has NMS inside the graph "
                                  "(metadata args nms=True): use --metric fidelity or package.module:function")
        if head_layout(o.shape, num_classes) is None:
            classes = f" ({num_classes} classes)" if num_classes else ""
            raise GraphpruneError(f"--metric detection needs a YOLO-style head [B, 4+C, N] or [B, N, 5+C]; output "
                                  f"{names[0]!r} is {shape_text(o)}{classes} (try --metric fidelity)")
        refuse_nonfinite(outputs[:1], names[:1], "detection")

    def reduce(outputs: Outputs) -> Outputs:
        o = np.asarray(outputs[0])
        layout, classes = head_layout(o.shape, num_classes)
        dets = np.empty(len(o), dtype=object)
        for i in range(len(o)):
            dets[i] = decode_image(o[i], layout, classes)
        return [dets]

    def compare(cand: Outputs, ref: Outputs, labels) -> float:
        return mean_ap(list(cand[0]), list(ref[0]))

    def check_reference(ref: Outputs, labels) -> None:
        mean_ap(list(ref[0]), list(ref[0]))

    return Metric("detection", needs_labels=False, compare=compare, reduce=reduce, check=check,
                  check_reference=check_reference,
                  description=f"mAP@{IOU_MATCH} of the decoded boxes (confidence > {CONF}, NMS IoU {IOU_NMS}) "
                              "against the original model's boxes as ground truth")
