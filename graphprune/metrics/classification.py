"""Classifier metrics: `accuracy` (against labels) and `agreement` (against the original model).

accuracy   fraction of samples whose top-1 class equals the label. The metric optimize
           always had; its numbers are unchanged (argmax over the first output, flattened
           per sample, exactly as graphprune.search.objectives.error_rate computes it).
agreement  fraction of samples whose top-1 class equals the ORIGINAL model's top-1 class on
           the same input. Needs no labels: a pruned classifier is good when it decides as
           the original did, which is what users without a labelled set can measure (the
           "fidelity"/"agreement" measure of the pruning and distillation literature).

Both read the first output, which must be (N, classes) (trailing axes of size 1, as a
(N, C, 1, 1) head gives, are allowed). The top-1 class of a sample whose outputs are not
finite counts as wrong (index -1), never as a match.
"""
from __future__ import annotations

import numpy as np

from graphprune.errors import GraphpruneError
from graphprune.metrics.base import Metric, Outputs, refuse_nonfinite, shape_text


def _class_axis_ok(shape) -> bool:
    return len(shape) >= 2 and all(d == 1 for d in shape[2:])


def check_classifier(outputs: Outputs, names: list[str], labels, metric: str) -> None:
    """The first output is (N, classes); labels (if used) are class indices below `classes`."""
    o = np.asarray(outputs[0])
    if not _class_axis_ok(o.shape) or o.shape[1] < 2:
        raise GraphpruneError(f"--metric {metric} needs a classifier output (N, classes); output {names[0]!r} is "
                              f"{shape_text(o)} (try --metric fidelity, detection or segmentation)")
    refuse_nonfinite(outputs[:1], names[:1], metric)
    if labels is not None and len(labels) and int(np.max(labels)) >= o.shape[1]:
        raise GraphpruneError(f"data labels go up to {int(np.max(labels))} but the model has {o.shape[1]} outputs")


def top1(outputs: Outputs) -> Outputs:
    """[top-1 class per sample] of the first output (-1 where a sample's outputs are not finite)."""
    o = np.asarray(outputs[0])
    flat = o.reshape(len(o), -1)
    cls = flat.argmax(1).astype(np.int64)
    if flat.dtype.kind == "f":
        cls[~np.isfinite(flat).all(1)] = -1
    return [cls]


def _accuracy(cand: Outputs, ref: Outputs, labels) -> float:
    return float(np.mean(cand[0] == labels))


def _agreement(cand: Outputs, ref: Outputs, labels) -> float:
    return float(np.mean(cand[0] == ref[0]))


ACCURACY = Metric(
    "accuracy", needs_labels=True, compare=_accuracy, reduce=top1,
    check=lambda o, n, y: check_classifier(o, n, y, "accuracy"),
    description="fraction of samples whose top-1 class is the label")
AGREEMENT = Metric(
    "agreement", needs_labels=False, compare=_agreement, reduce=top1,
    check=lambda o, n, y: check_classifier(o, n, None, "agreement"),
    description="fraction of samples whose top-1 class is the original model's top-1 class")
