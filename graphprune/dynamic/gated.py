"""The dynamic network in PyTorch: frozen trunk, branch head, gated rest; head training and fine-tuning.

This is the reference the exported ONNX model must equal (tests compare them input by
input) and the thing that is trained. The trunk and the rest are the two halves of the
ONNX model bridged to torch (graphprune.bridge); gating is a forward hook on each gate's
mask point (the BN after the conv, else the conv) that multiplies the output by a 0/1
mask of the kept filters, per sample. Because every op between the mask point and the
consumer maps 0 to 0 per channel (graphprune.dynamic.graph), a zeroed channel
contributes nothing, exactly as the exported model's gathered (smaller) conv does; and
masks let a batch carry a different subset per sample, which training needs.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from graphprune.progress import progress_bar


class DynamicNet(nn.Module):
    """trunk(x) -> branch features; head -> class scores z; rest gated by the top-k classes of z.

    forward(x) is the deployed function: z where max softmax(z) >= threshold (early exit),
    else the gated rest's output.
    """

    def __init__(self, trunk: nn.Module, rest: nn.Module, head: nn.Linear, gates, tables, k: int,
                 threshold: float, pool: tuple | None = None):
        super().__init__()
        self.pool = pool
        self.trunk, self.rest, self.head = trunk, rest, head
        self.gates, self.k, self.threshold = list(gates), int(k), float(threshold)
        for i, t in enumerate(tables):
            self.register_buffer(f"table{i}", torch.from_numpy(np.asarray(t, np.float32)), persistent=False)
        self._masks = None
        self._handles = [rest.module_for_node(g.bn or g.producer).register_forward_hook(self._hook(i))
                         for i, g in enumerate(self.gates)]
        for p in trunk.parameters():
            p.requires_grad_(False)

    def _hook(self, i: int):
        def hook(module, inputs, output):
            if self._masks is None:
                return None
            m = self._masks[i].to(output.dtype)
            return output * m.reshape(m.shape + (1,) * (output.dim() - 2))
        return hook

    def table(self, i: int) -> torch.Tensor:
        return getattr(self, f"table{i}")

    def features(self, x):
        """The trunk's outputs the rest reads (the branch tensor first), computed without gradients."""
        with torch.no_grad():
            out = self.trunk(x)
        return out if isinstance(out, tuple) else (out,)

    def branch_logits(self, feats) -> torch.Tensor:
        return self.head(pooled(feats[0], self.pool))

    def subsets(self, z: torch.Tensor) -> torch.Tensor:
        """(N, k) class ids: the branch's top-k classes per sample."""
        return torch.topk(z, self.k, dim=1).indices

    def masks(self, classes: torch.Tensor) -> list[torch.Tensor]:
        """(N, C_l) 0/1 masks: per sample, the keep_l filters of largest summed table rows."""
        out = []
        for i, g in enumerate(self.gates):
            s = self.table(i)[classes].sum(1)          # exact integers (graphprune.dynamic.selection)
            idx = torch.topk(s, g.keep, dim=1).indices
            out.append(torch.zeros_like(s).scatter_(1, idx, 1.0))
        return out

    def gated(self, feats, z: torch.Tensor) -> torch.Tensor:
        """The rest with each sample's filters gated by its branch scores z."""
        self._masks = self.masks(self.subsets(z.detach()))
        try:
            return self.rest(*feats)
        finally:
            self._masks = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.features(x)
        z = self.branch_logits(feats)
        y = self.gated(feats, z)
        exit_ = torch.softmax(z, dim=1).max(dim=1).values >= self.threshold
        return torch.where(exit_[:, None], z, y)

    @torch.no_grad()
    def decide(self, x: torch.Tensor) -> torch.Tensor:
        """Per sample: True where the model exits early."""
        z = self.branch_logits(self.features(x))
        return torch.softmax(z, dim=1).max(dim=1).values >= self.threshold


def pooled(x: torch.Tensor, pool: tuple | None) -> torch.Tensor:
    """The head's input: global average (pool None) or an AveragePool grid, flattened (c, h, w)."""
    if pool is None:
        return x.mean(dim=(2, 3))
    return F.avg_pool2d(x, kernel_size=pool[0], stride=pool[1]).flatten(1)


def _pooled(trunk: nn.Module, ds, batch_size: int, pool: tuple | None) -> torch.Tensor:
    feats = []
    with torch.no_grad():
        for xb, _ in ds.batches(batch_size):
            out = trunk(torch.from_numpy(xb))
            out = out[0] if isinstance(out, tuple) else out
            feats.append(pooled(out, pool))
    return torch.cat(feats)


def train_head(trunk: nn.Module, ds, classes: int, steps: int = 300, lr: float = 1e-2, batch_size: int = 256,
               seed: int = 0, weight_decay: float = 1e-4, pool: tuple | None = None) -> nn.Linear:
    """Pooling (global, or a grid: `pool`) + a linear layer on the frozen trunk's branch features.

    The pooled features are computed once; the linear layer is then trained full-batch
    with Adam (a convex problem; a few hundred steps converge on thousands of samples).
    """
    return fit_linear(_pooled(trunk, ds, batch_size, pool), torch.from_numpy(ds.y), classes, steps, lr, seed,
                      weight_decay)


def fit_linear(feats: torch.Tensor, y: torch.Tensor, classes: int, steps: int = 300, lr: float = 1e-2,
               seed: int = 0, weight_decay: float = 1e-4) -> nn.Linear:
    """The head's linear layer fitted full-batch (Adam) on pooled features; shared by the branch
    search (graphprune.dynamic.branch_search), which fits one per candidate tensor.

    On one torch thread: the problem is tiny (thousands x a few hundred), and torch's thread
    pool made each of the few hundred steps 30x slower on a busy 2-core host (7.7 s vs
    0.24 s for 300 steps, measured)."""
    torch.manual_seed(seed)
    head = nn.Linear(feats.shape[1], classes)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(steps):
            loss = F.cross_entropy(head(feats), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    head.eval()
    return head


def finetune(net: DynamicNet, ds, epochs: float = 1.0, batch_size: int = 64, lr: float = 3e-4, seed: int = 0,
             progress: bool = True) -> list[float]:
    """Train the rest's weights with the gating in place (cross-entropy of the gated output on
    every sample, exiting or not: the gated path must be right wherever the branch is unsure).
    BatchNorm keeps its running statistics (eval mode), so the exported fold matches.
    Returns the mean loss of each epoch (a fractional last epoch counts its batches)."""
    if epochs <= 0:
        return []
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in net.rest.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    net.eval()
    per_epoch = -(-len(ds) // batch_size)
    total = int(round(epochs * per_epoch))
    bar = progress_bar(total, "fine-tune", "batch", enabled=progress, leave=False)
    losses, step = [], 0
    while step < total:
        perm = torch.randperm(len(ds), generator=gen).numpy()
        run, seen = 0.0, 0
        for i in range(0, len(ds), batch_size):
            if step >= total:
                break
            idx = perm[i:i + batch_size]
            x, y = torch.from_numpy(ds.x[idx]), torch.from_numpy(ds.y[idx])
            feats = net.features(x)
            with torch.no_grad():
                z = net.branch_logits(feats)
            loss = F.cross_entropy(net.gated(feats, z), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run, seen, step = run + float(loss.detach()) * len(idx), seen + len(idx), step + 1
            bar.update(1)
        losses.append(run / max(seen, 1))
    bar.close()
    return losses
