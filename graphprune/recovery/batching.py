"""Models that merge the samples of a batch, and training them correctly anyway.

Detector and OCR exports often fix the batch at 1 and bake it into literal Reshape
targets (``Reshape(x, [1, -1, 6])``). At batch 1 such a model is exact; at batch N it
silently folds the N samples into one (a YOLOX-style text detector returns one merged
``[1, 7098, 6]`` instead of ``[2, 3549, 6]``). Training it in batches would mix the
samples' predictions and targets.

Detection (`merges_samples`): the model runs on two samples at once and on each alone;
it merges when the batch-2 outputs are not the two batch-1 outputs concatenated (or
batch 2 fails). Cheap (three forward passes), and it catches every way a model can mix
samples, not only literal Reshape targets.

Training such a model (`backward_batch` with per_sample=True): each sample of a batch
runs alone at batch 1 and its loss, divided by the batch size, is back-propagated
before the next; the gradients accumulate to exactly those of the batch's mean loss,
which is what a batch-N step of a model that does not merge computes. BatchNorm layers
must then use their running statistics (frozen), since a batch of one has no batch
statistics; recovery recalibrates them on the data first.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

REL_TOL = 1e-4   # batch-2 vs batch-1 outputs: float reassociation only, far below any merge


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    scale = max(float(np.abs(b).max()) if b.size else 0.0, 1e-6)
    return bool(np.abs(a - b).max() <= REL_TOL * scale + 1e-6)


def merges_samples(run: Callable[[np.ndarray], Sequence[np.ndarray]], x: np.ndarray) -> bool:
    """True when `run` (a batch of inputs -> the list of outputs) does not treat the leading
    dim of x as a batch: on the first and last samples of x, its batch-2 outputs are not its
    batch-1 outputs concatenated."""
    if len(x) < 2:
        return False
    x = np.ascontiguousarray(np.concatenate([x[:1], x[-1:]]))
    try:
        both = [np.asarray(o) for o in run(x[:2])]
    except Exception:
        return True
    one = [[np.asarray(o) for o in run(x[i:i + 1])] for i in range(2)]
    for k, out in enumerate(both):
        if any(o[k].ndim == 0 or o[k].shape[0] != 1 for o in one):
            return True   # no leading batch dim at batch 1: the samples cannot be told apart
        if not _same(out, np.concatenate([one[0][k], one[1][k]])):
            return True
    return False


def torch_runner(net) -> Callable[[np.ndarray], list[np.ndarray]]:
    """The bridge module as merges_samples' `run`, in eval mode and without gradients."""
    import torch

    def run(xb):
        was = net.training
        net.eval()
        try:
            with torch.no_grad():
                out = net(torch.from_numpy(np.ascontiguousarray(xb)))
        finally:
            net.train(was)
        return [o.numpy() for o in (out if isinstance(out, (tuple, list)) else [out])]
    return run


def backward_batch(net, x, idx: np.ndarray, loss_fn, per_sample: bool) -> float:
    """Forward + backward of the batch `x[idx]` with loss_fn(outputs, idx) (a mean over the
    samples); per_sample runs each sample alone and accumulates its gradient / len(idx).
    Returns the batch's loss. The caller zeroes the gradients and steps the optimizer."""
    import torch
    as_list = lambda o: list(o) if isinstance(o, (tuple, list)) else [o]  # noqa: E731
    if not per_sample:
        loss = loss_fn(as_list(net(x[torch.from_numpy(idx)])), idx)
        loss.backward()
        return float(loss.detach())
    total = 0.0
    for i in idx:
        part = loss_fn(as_list(net(x[int(i):int(i) + 1])), np.asarray([i])) / len(idx)
        part.backward()
        total += float(part.detach())
    return total
