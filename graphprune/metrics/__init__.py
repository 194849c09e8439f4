"""Quality metrics for `graphprune optimize`: how good a pruned candidate is, with or without labels.

Most users who prune a detector, a segmenter or an OCR model have a folder of images and
no annotations. Every metric here but `accuracy` therefore measures the candidate against
the ORIGINAL model's outputs on the same inputs (computed once per run), so the only
thing a user must supply is representative inputs. All are higher-is-better; the search's
error objective is 1 - metric.

    name            reference              module            why it exists
    accuracy        labels                 classification    the labelled classifier case (optimize's original metric)
    agreement       the original model     classification    a classifier without labels: same top-1 decision
    fidelity        the original model     fidelity          any model: every output close to the original's
    detection       the original model     detection         YOLO-style detectors: mAP@0.5 vs the original's boxes
    segmentation    the original model     segmentation      segmenters: mIoU of masks vs the original's
    text-boxes      the original model     textboxes         DB text detectors: F1 of the text boxes vs the original's
    saliency        the original model     saliency          salient-object maps (u2netp): 1 - MAE vs the original's map
    pkg.mod:func    the original (+labels) user              the user's own task measure

Use: `m = get_metric(name, model, has_labels)`, `ref = reference_outputs(model, x, m, y)` once,
then `evaluate(candidate, x, m, ref, y)` per candidate (graphprune.metrics.runner).
Defaults (`default_metric_name`): accuracy when labels exist, agreement for a classifier
output (N, classes) without labels, fidelity otherwise. See docs/metrics.md.
"""
from __future__ import annotations


from graphprune.errors import GraphpruneError
from graphprune.metrics.base import Metric
from graphprune.metrics.classification import ACCURACY, AGREEMENT
from graphprune.metrics.detection import classes_from_metadata, detection_metric, nms_in_graph
from graphprune.metrics.fidelity import FIDELITY
from graphprune.metrics.segmentation import SEGMENTATION
from graphprune.metrics.runner import evaluate, reference_outputs
from graphprune.metrics.saliency import SALIENCY
from graphprune.metrics.textboxes import TEXT_BOXES
from graphprune.metrics.user import is_user_metric, user_metric

# name -> factory(model or None) -> Metric; detection reads the class count from the model's metadata
METRICS = {
    "accuracy": lambda model: ACCURACY,
    "agreement": lambda model: AGREEMENT,
    "fidelity": lambda model: FIDELITY,
    "detection": lambda model: detection_metric(classes_from_metadata(model), nms_in_graph(model)),
    "segmentation": lambda model: SEGMENTATION,
    "text-boxes": lambda model: TEXT_BOXES,
    "saliency": lambda model: SALIENCY,
}
NAMES_TEXT = ", ".join(METRICS) + " or package.module:function"


def get_metric(name: str, model=None, has_labels: bool = True) -> Metric:
    """The metric called `name` (a built-in or package.module:function), refusing in one line a
    name that is neither and a label-needing metric without labels."""
    if is_user_metric(name):
        return user_metric(name)
    factory = METRICS.get(name)
    if factory is None:
        raise GraphpruneError(f"unknown --metric {name!r}; choose from {NAMES_TEXT}")
    metric = factory(model)
    if metric.needs_labels and not has_labels:
        raise GraphpruneError(f"--metric {name} needs labels and the data has none (a .npz with 'y' or an image "
                              "folder with one subfolder per class); without labels use agreement (classifiers), "
                              "fidelity, detection, segmentation, text-boxes, saliency or package.module:function")
    return metric


def default_metric_name(has_labels: bool, first_output_shape) -> str:
    """accuracy with labels; agreement for a classifier output (N, classes) without; fidelity otherwise."""
    if has_labels:
        return "accuracy"
    shape = tuple(first_output_shape) if first_output_shape is not None else ()
    if len(shape) >= 2 and shape[1] >= 2 and all(d == 1 for d in shape[2:]):
        return "agreement"
    return "fidelity"


__all__ = ["Metric", "METRICS", "NAMES_TEXT", "get_metric", "default_metric_name", "evaluate",
           "reference_outputs"]
