"""What a quality metric is: a pair of functions over model outputs, and the checks around them.

A metric compares a candidate's outputs with a reference: the labels (accuracy) or
the original model's outputs on the same inputs (every other built-in metric). The
original's outputs are computed once per run; holding all of them would cost N x
the output size per worker (a YOLO head is 2.7 MB per image), so each metric first
`reduce`s a batch of raw outputs to what it needs (top-1 classes, decoded boxes,
masks) and `compare`s the reduced forms of the whole data set. Both candidate and
reference go through the same `reduce`, so a candidate identical to the original
scores exactly what the original scores against itself.

Every metric is "higher is better"; the search's error objective is 1 - metric.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from graphprune.errors import GraphpruneError

Outputs = list  # list[np.ndarray]: one array per model output, leading axis = samples


def _identity(outputs: Outputs) -> Outputs:
    return [np.asarray(o) for o in outputs]


def _no_check(outputs: Outputs, names: list[str], labels) -> None:
    return None


@dataclass(frozen=True)
class Metric:
    """One quality metric.

    reduce(batch outputs) -> list of arrays with a leading sample axis (concatenated over batches);
    compare(candidate reduced, reference reduced, labels or None) -> float, higher is better;
    check(first raw batch of the original's outputs, output names, labels) raises GraphpruneError
    when the metric does not fit the model (before any search);
    check_reference(reference reduced, labels) the same, on the whole reduced reference.
    """
    name: str
    needs_labels: bool
    compare: Callable[[Outputs, Outputs, Any], float]
    reduce: Callable[[Outputs], Outputs] = _identity
    check: Callable[[Outputs, list, Any], None] = _no_check
    check_reference: Callable[[Outputs, Any], None] = field(default=lambda ref, labels: None)
    description: str = ""
    percent: bool = True          # shown as a percentage (built-ins lie in [0, 1])

    @property
    def reference(self) -> str:
        """What the candidate is compared with, as every output states it."""
        return "labels" if self.needs_labels else "the original model's outputs"


def finite_score(value, who: str) -> float:
    """A metric's result as a finite float, or a one-line error naming the metric."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "iuf":
            value = value.reshape(()).item()
        else:
            raise GraphpruneError(f"metric {who} returned {type(value).__name__}, not a number")
    v = float(value)
    if not math.isfinite(v):
        raise GraphpruneError(f"metric {who} returned {v}, not a finite number")
    return v


def refuse_nonfinite(outputs: Outputs, names: list[str], metric: str) -> None:
    """The original model's outputs must be finite: a NaN reference makes every score meaningless."""
    for name, o in zip(names, outputs):
        a = np.asarray(o)
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise GraphpruneError(f"--metric {metric}: the original model's output {name!r} contains NaN or "
                                  "infinity on this data; no closeness to it can be measured")


def shape_text(a) -> str:
    return "(" + ", ".join(str(d) for d in np.shape(a)) + ")"
