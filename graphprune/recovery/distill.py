"""The loss a recovery step minimises: distillation from the original model, the task loss, or both.

Per graph output of the student, against the teacher's output on the same samples:

* classifier outputs (2-D, ``(N, classes)``, classes > 1): KL(teacher || student) on
  temperature-softened distributions, times T^2 (Hinton et al. 2015: keeps the gradient
  scale independent of T). Outputs that already are probabilities (non-negative rows
  summing to 1: a Softmax head) are compared through their logarithms, which are valid
  logits, so the softening still applies.
* any other output (detector heads, masks, feature maps, regression): squared error divided
  by the teacher's variance over the training data, per channel, then averaged (a
  scale-free loss: 1.0 is "as far off as predicting the teacher's mean"). The channel
  axis of an output of rank >= 3 is its shortest non-batch axis (YOLO's [N, 4+C, anchors]:
  the 4+C attributes; [N, anchors, 5+C]: the last axis; [N, C, H, W] maps: C): box
  coordinates in pixels and class scores in [0, 1] then weigh alike, as do outputs of
  very different scales. Variances below 1e-6 of the output's mean variance are raised
  to it (a constant channel would otherwise weigh without bound).

The distillation loss is the mean over outputs. With labels, the task loss (cross-entropy
of the first output) is mixed in: ``loss = (1 - w) * task + w * distillation`` with w =
--distill-weight; without labels w is 1. Every term is a mean over samples, so a batch's
loss is the mean of its samples' losses (graphprune.recovery.batching relies on it).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphprune.errors import GraphpruneError

DEFAULT_TEMPERATURE = 4.0
PROB_TOL = 1e-3


def _is_probabilities(t: np.ndarray) -> bool:
    return bool(t.min() >= 0 and np.abs(t.sum(axis=1) - 1).max() <= PROB_TOL)


@dataclass
class Objective:
    """What training minimises. targets: the teacher's outputs (samples on axis 0), None for
    the task loss alone; y: labels or None; weight: the distillation weight w."""
    targets: list | None = None
    kinds: list | None = None          # per output: "kl", "kl-prob" (probabilities) or "mse"
    scales: list | None = None         # per "mse" output: the teacher's variance (per channel, broadcastable)
    y: np.ndarray | None = None
    weight: float = 0.0
    temperature: float = DEFAULT_TEMPERATURE

    @property
    def text(self) -> str:
        if not self.targets:
            return "cross-entropy on the labels"
        kd = "distillation from the original model (" + ", ".join(
            {"kl": f"KL at T={self.temperature:g}", "kl-prob": f"KL on log-probabilities at T={self.temperature:g}",
             "mse": "per-channel variance-normalised MSE"}[k] for k in self.kinds) + ")"
        if self.y is None or self.weight >= 1:
            return kd
        return f"{1 - self.weight:g} x cross-entropy on the labels + {self.weight:g} x {kd}"

    def to_json(self) -> dict:
        return {"distillation": bool(self.targets), "kinds": self.kinds, "weight": self.weight if self.targets else 0.0,
                "temperature": self.temperature if self.targets else None, "labels": self.y is not None}


def objective(targets: list[np.ndarray] | None, y: np.ndarray | None, weight: float,
              temperature: float = DEFAULT_TEMPERATURE) -> Objective:
    """The Objective for teacher outputs `targets` (None: no distillation) and labels `y`."""
    if targets is None:
        return Objective(y=y, weight=0.0)
    if y is None:
        weight = 1.0
    kinds, scales = [], []
    for t in targets:
        if t.ndim == 2 and t.shape[1] > 1:
            kinds.append("kl-prob" if _is_probabilities(t) else "kl")
            scales.append(None)
        else:
            kinds.append("mse")
            scales.append(channel_variance(t))
    return Objective(targets=[np.ascontiguousarray(t, np.float32) for t in targets], kinds=kinds, scales=scales,
                     y=y, weight=float(weight), temperature=float(temperature))


def channel_variance(t: np.ndarray) -> np.ndarray:
    """The teacher's variance per channel (see the module docstring), shaped to broadcast
    against the output; float32."""
    t = t.astype(np.float64)
    if t.ndim < 3:
        v = np.full([1] * t.ndim, np.var(t))
    else:
        axis = 1 + int(np.argmin(t.shape[1:]))
        v = np.var(t, axis=tuple(a for a in range(t.ndim) if a != axis), keepdims=True)
    floor = 1e-6 * float(v.mean())
    v = np.maximum(v, floor) if floor > 1e-12 else np.ones_like(v)
    return v.astype(np.float32)


def _kl(s, t, kind: str, temp: float):
    import torch
    import torch.nn.functional as F
    if kind == "kl-prob":
        s, t = torch.log(s.clamp_min(1e-12)), torch.log(t.clamp_min(1e-12))
    log_ps = F.log_softmax(s / temp, dim=1)
    log_pt = F.log_softmax(t / temp, dim=1)
    return F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True) * temp * temp


def loss_fn(obj: Objective):
    """loss(outputs, sample indices) -> scalar tensor, for graphprune.recovery.batching."""
    import torch
    import torch.nn.functional as F
    y = None if obj.y is None else torch.from_numpy(np.asarray(obj.y, np.int64))
    targets = None if obj.targets is None else [torch.from_numpy(t) for t in obj.targets]
    scales = None if obj.scales is None else [None if v is None else torch.from_numpy(v) for v in obj.scales]

    def loss(outs, idx):
        ti = torch.from_numpy(np.asarray(idx, np.int64))
        total = 0.0
        if targets is not None and obj.weight > 0:
            if len(outs) != len(targets):
                raise GraphpruneError(f"distillation: the student has {len(outs)} outputs, the teacher {len(targets)}")
            terms = []
            for k, (s, t, kind, scale) in enumerate(zip(outs, targets, obj.kinds, scales)):
                t = t[ti]
                if t.shape != s.shape:
                    raise GraphpruneError(f"distillation: the student's output {k} has shape {tuple(s.shape)}, "
                                          f"the teacher's {tuple(t.shape)} on the same samples")
                terms.append(_kl(s, t, kind, obj.temperature) if kind != "mse" else ((s - t) ** 2 / scale).mean())
            total = obj.weight * sum(terms) / len(terms)
        if y is not None and obj.weight < 1:
            total = total + (1 - obj.weight) * F.cross_entropy(outs[0].reshape(len(idx), -1), y[ti])
        return total
    return loss
