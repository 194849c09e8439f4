"""The training loop of recovery: SGD over the ONNX<->PyTorch bridge, with any Objective.

The ONNX model becomes a torch module (graphprune.bridge), trains, and its tensors are
written back into a copy of the ONNX model. Optimiser: SGD with Nesterov momentum 0.9
and a cosine schedule. (Adam was tried first: its first steps move every weight by
about lr whatever its scale, and conv weights in front of a BatchNorm are small, so a
single step cost tens of points of accuracy.) BatchNorm layers train and re-estimate
their running statistics, unless frozen (freeze_bn, or a model that merges the samples
of a batch and so trains one sample at a time: see graphprune.recovery.batching).
"""
from __future__ import annotations

import math

import numpy as np
import onnx

from graphprune.recovery.batching import backward_batch, merges_samples, torch_runner
from graphprune.recovery.distill import Objective, loss_fn


def _freeze_bn(net) -> None:
    import torch.nn as nn
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def train_epochs(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray | None, epochs: float, lr: float,
                 batch_size: int, seed: int, freeze_bn: bool = False, objective: Objective | None = None,
                 per_sample: bool | None = None) -> tuple[onnx.ModelProto, dict]:
    """Train `model` for `epochs` (may be fractional) passes over x; the loss is `objective`'s
    (default: cross-entropy on the labels y). per_sample: train one sample at a time (None:
    when the model merges the samples of a batch, tested here). Returns the ONNX with the
    trained weights and a few statistics (batches, mean loss of the first and last tenth,
    per_sample)."""
    import torch

    from graphprune.bridge import to_torch
    if epochs <= 0 or len(x) == 0:
        return model, {"batches": 0, "loss_first": None, "loss_last": None, "per_sample": per_sample}
    objective = objective or Objective(y=y)
    torch.manual_seed(seed)
    net = to_torch(model)
    xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    if per_sample is None:
        per_sample = merges_samples(torch_runner(net), xt.numpy())
    net.train()
    if freeze_bn or per_sample:
        _freeze_bn(net)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True)
    n_batches = max(1, int(math.ceil(epochs * len(x) / batch_size)))
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(x)) for _ in range(int(math.ceil(epochs)) + 1)])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n_batches)
    loss = loss_fn(objective)
    losses = []
    for b in range(n_batches):
        idx = order[b * batch_size:(b + 1) * batch_size]
        opt.zero_grad()
        losses.append(backward_batch(net, xt, idx, loss, per_sample))
        opt.step()
        sched.step()
    net.eval()
    k = max(1, len(losses) // 10)
    return net.write_back(model), {"batches": n_batches, "loss_first": float(np.mean(losses[:k])),
                                   "loss_last": float(np.mean(losses[-k:])), "per_sample": per_sample}
