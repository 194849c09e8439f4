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


LR_TRIES = 3            # the learning rate, then a tenth of it, then a hundredth
DIVERGE_BATCH = 10.0    # a batch loss this many times the first batch's: diverging, stop at once
DIVERGE_END = 1.0       # the probe batch's loss after training over before it, above which training failed
LOSS_TOL = 1e-6         # absolute slack: a student that starts equal to its teacher has a loss near 0


def train_epochs(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray | None, epochs: float, lr: float,
                 batch_size: int, seed: int, freeze_bn: bool = False, objective: Objective | None = None,
                 per_sample: bool | None = None) -> tuple[onnx.ModelProto, dict]:
    """Train `model` for `epochs` (may be fractional) passes over x; the loss is `objective`'s
    (default: cross-entropy on the labels y). per_sample: train one sample at a time (None:
    when the model merges the samples of a batch, tested here). Returns the ONNX with the
    trained weights and a few statistics (batches, mean loss of the first and last tenth,
    per_sample, the learning rate used and the tries that diverged).

    Divergence guard: SGD at a fixed learning rate diverges on badly conditioned networks. u2netp
    (BN folded into its convs, weights up to 5.6), trained on its OWN outputs (loss 1e-11 at the
    start), climbed to loss 5.5 in 4 steps at lr 1e-3 and 7e-5 at 1e-4, and ended as a constant
    all-background map; at 1e-5 it stayed at 1e-11. So a try that diverges (a non-finite batch
    loss, a batch loss DIVERGE_BATCH times the first batch's, or a loss on the first batch after
    training above the one before: training that makes a batch it trained on worse has failed) is
    thrown away and training restarts from the
    given model at a tenth of the learning rate, up to LR_TRIES tries; the last try is returned
    even if it diverged too (the caller's quality check then refuses it)."""
    if epochs <= 0 or len(x) == 0:
        return model, {"batches": 0, "loss_first": None, "loss_last": None, "per_sample": per_sample}
    objective = objective or Objective(y=y)
    tries = []
    for k in range(LR_TRIES):
        net, losses, per_sample, why = _train_once(model, x, epochs, lr / 10 ** k, batch_size, seed, freeze_bn,
                                                   objective, per_sample)
        if why is None:
            break
        tries.append({"lr": lr / 10 ** k, "diverged": why})
    k = max(1, len(losses) // 10)
    return net.write_back(model), {"batches": len(losses), "loss_first": float(np.mean(losses[:k])),
                                   "loss_last": float(np.mean(losses[-k:])), "per_sample": per_sample,
                                   "lr": lr / 10 ** min(len(tries), LR_TRIES - 1), "diverged_tries": tries}


def _probe_loss(net, xt, idx, loss, per_sample: bool) -> float:
    """The loss on the batch idx, in eval mode (the caller sets the mode back), without gradients."""
    import torch
    as_list = lambda o: list(o) if isinstance(o, (tuple, list)) else [o]  # noqa: E731
    net.eval()
    with torch.no_grad():
        if per_sample:
            v = sum(float(loss(as_list(net(xt[int(i):int(i) + 1])), np.asarray([i]))) for i in idx) / len(idx)
        else:
            v = float(loss(as_list(net(xt[torch.from_numpy(idx)])), idx))
    return v


def _train_once(model, x, epochs, lr, batch_size, seed, freeze_bn, objective, per_sample):
    """One try at `lr`: (net, batch losses, per_sample, why it diverged or None)."""
    import torch

    from graphprune.bridge import to_torch
    torch.manual_seed(seed)
    net = to_torch(model)
    xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    if per_sample is None:
        per_sample = merges_samples(torch_runner(net), xt.numpy())
    n_batches = max(1, int(math.ceil(epochs * len(x) / batch_size)))
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(x)) for _ in range(int(math.ceil(epochs)) + 1)])
    loss = loss_fn(objective)
    probe = order[:batch_size]
    before = _probe_loss(net, xt, probe, loss, per_sample)
    net.train()
    if freeze_bn or per_sample:
        _freeze_bn(net)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n_batches)
    losses = []
    for b in range(n_batches):
        idx = order[b * batch_size:(b + 1) * batch_size]
        opt.zero_grad()
        losses.append(backward_batch(net, xt, idx, loss, per_sample))
        if not math.isfinite(losses[-1]) or losses[-1] > DIVERGE_BATCH * losses[0] + LOSS_TOL:
            net.eval()
            return net, losses, per_sample, f"batch {b + 1} loss {losses[-1]:.4g} (first {losses[0]:.4g})"
        opt.step()
        sched.step()
    net.eval()
    after = _probe_loss(net, xt, probe, loss, per_sample)
    if not math.isfinite(after) or after > DIVERGE_END * before + LOSS_TOL:
        return net, losses, per_sample, f"first batch's loss {before:.4g} before training, {after:.4g} after"
    return net, losses, per_sample, None
