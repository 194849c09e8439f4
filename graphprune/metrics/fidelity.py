"""`fidelity`: task-agnostic closeness of every output to the original model's, on the same inputs.

For each output k and sample i, with a the candidate's and b the original's values
(flattened):

    f(k, i) = max(0, 1 - ||a - b||_2 / ||b||_2)        (1 when ||a|| = ||b|| = 0, else 0 when ||b|| = 0)

fidelity = mean over outputs of (mean over samples of f). 1.0 exactly when the outputs
are identical, 0 for an error as large as the signal itself (or larger), linear in
between. Why this and not cosine similarity: cosine ignores scale and, for
non-negative outputs such as sigmoid masks or box coordinates, is high even for
unrelated outputs; a candidate whose outputs are all halved has cosine 1.0 but
fidelity 0.5, and a pruned model that shifts box sizes or mask levels IS worse. Per
sample rather than over the whole set so that one image with large outputs does not
outweigh the rest; per output rather than concatenated so that a small output (a
scale or a confidence) counts as much as a large one (a feature map).

A candidate output that is not finite scores 0 for that sample; the original's
outputs must be finite (refused in one line otherwise). It serves any model, which is
why it is the default for models that are neither classifiers nor labelled.
"""
from __future__ import annotations

import numpy as np

from graphprune.errors import GraphpruneError
from graphprune.metrics.base import Metric, Outputs, refuse_nonfinite, shape_text


def closeness(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """f(i) for one output: a, b (N, ...) -> (N,) in [0, 1]."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    if a.shape != b.shape:
        raise GraphpruneError(f"--metric fidelity: a candidate output is {shape_text(a)}, the original's "
                              f"{shape_text(b)}")
    ok = np.isfinite(a).all(1)
    a = np.where(np.isfinite(a), a, 0.0)
    nb = np.linalg.norm(b, axis=1)
    err = np.linalg.norm(a - b, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(nb > 0, np.maximum(0.0, 1.0 - err / np.where(nb > 0, nb, 1.0)), (err == 0).astype(np.float64))
    return np.where(ok, f, 0.0)


def _fidelity(cand: Outputs, ref: Outputs, labels) -> float:
    if len(cand) != len(ref):
        raise GraphpruneError(f"--metric fidelity: the candidate has {len(cand)} outputs, the original {len(ref)}")
    return float(np.mean([closeness(a, b).mean() for a, b in zip(cand, ref)]))


def _check(outputs: Outputs, names: list[str], labels) -> None:
    for name, o in zip(names, outputs):
        if np.asarray(o).dtype.kind not in "iuf":
            raise GraphpruneError(f"--metric fidelity: output {name!r} is not numeric ({np.asarray(o).dtype})")
    refuse_nonfinite(outputs, names, "fidelity")


FIDELITY = Metric(
    "fidelity", needs_labels=False, compare=_fidelity, check=_check,
    description="mean over outputs and samples of max(0, 1 - ||candidate - original|| / ||original||)")
