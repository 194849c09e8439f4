"""Recovery: prune the chosen configuration in steps, fine-tuning between, then a final fine-tune.

Runs on CPU through graphprune.bridge (ONNX -> torch module, gradients flow; trained
tensors written back into the ONNX model). Each step prunes the current (already
fine-tuned) model with the same criterion, so channels are re-ranked on the trained
weights; groups are matched across steps by their member node names (the rewrite
keeps node names). Optimiser: SGD with Nesterov momentum 0.9 and a cosine schedule;
BatchNorm layers train too and re-estimate their running statistics, which pruning
upstream channels has shifted. (Adam was tried first: its first steps move every
weight by about lr whatever its scale, and conv weights in front of a BatchNorm are
small, so a single step cost tens of points of accuracy.) Accuracy is measured with
onnxruntime on data the fine-tuning never sees.
"""
from __future__ import annotations

import math
import time

import numpy as np
import onnx

from graphprune.errors import GraphpruneError
from graphprune.recovery.train import train_epochs  # noqa: F401  (the training loop, re-exported)
from graphprune.search.objectives import error_rate


def _match(an_from, an_to, config: dict[int, int]) -> dict[int, int]:
    """Config over `an_from`'s group ids -> the same groups in `an_to` (by member names)."""
    by_members = {tuple(g.members): g.id for g in an_to.groups}
    out = {}
    for gid, kept in config.items():
        g = an_from.group(gid)
        tgt = by_members.get(tuple(g.members))
        if tgt is None:
            same = [h for h in an_to.groups if h.members and set(h.members) == set(g.members)]
            if not same:
                raise GraphpruneError(f"recovery: group {gid} ({', '.join(g.members[:3])}...) is not found "
                                      "in the pruned model")
            tgt = same[0].id
        out[tgt] = int(kept)
    return out


def recover(model: onnx.ModelProto, an, config: dict[int, int], criterion: str, train, x_eval, y_eval,
            epochs: float, steps: int = 2, lr: float = 1e-3, batch_size: int = 64, seed: int = 0,
            log=None) -> tuple[onnx.ModelProto, dict]:
    """Prune `model` to `config` in `steps` steps with fine-tuning; returns (model, report)."""
    import graphprune as gp

    log = log or (lambda m: None)
    if train is None or len(train) == 0:
        raise GraphpruneError("recovery needs training data (--train-data, or enough --data to hold some out)")
    if steps < 1:
        raise GraphpruneError("--finetune-steps must be >= 1")
    t0 = time.time()
    direct = gp.prune(model, gp.choose(an, keep=config, criterion=criterion))
    acc_before = 1.0 - error_rate(direct, x_eval, y_eval)
    per_step = 0.5 * epochs / steps
    final = epochs - per_step * steps
    cur, cur_an = model, an
    stats = []
    for s in range(1, steps + 1):
        frac = s / steps
        step_cfg = {g: int(round(an.group(g).units - (an.group(g).units - k) * frac)) for g, k in config.items()}
        keep = _match(an, cur_an, step_cfg)
        cur = gp.prune(cur_an.model, gp.choose(cur_an, keep=keep, criterion=criterion))
        cur, st = train_epochs(cur, train.x, train.y, per_step, lr, batch_size, seed + s)
        stats.append(st)
        log(f"recovery step {s}/{steps}: pruned to {step_cfg}, fine-tuned {per_step:.2f} epoch(s), "
            f"loss {st['loss_first']} -> {st['loss_last']}")
        cur = gp.load(cur)
        cur_an = gp.analyse(cur)
    cur, st = train_epochs(cur, train.x, train.y, final, lr, batch_size, seed + 100)
    stats.append(st)
    acc_after = 1.0 - error_rate(cur, x_eval, y_eval)
    log(f"recovery: accuracy {100 * acc_before:.2f} % -> {100 * acc_after:.2f} % on {len(y_eval)} held-out samples "
        f"({time.time() - t0:.0f} s)")
    got = gp.count(cur)
    return cur, {"steps": steps, "epochs": epochs, "epochs_per_step": per_step, "final_epochs": final,
                 "train_samples": len(train), "eval_samples": int(len(y_eval)), "accuracy_before": acc_before,
                 "accuracy_after": acc_after, "macs": got.macs, "param_bytes": got.param_bytes,
                 "training": stats, "seconds": time.time() - t0}
