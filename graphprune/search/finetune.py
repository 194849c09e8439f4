"""Recovery: prune the chosen configuration in steps, training between, then a final training.

Each step prunes the current (already trained) model with the same criterion, so channels
are re-ranked on the trained weights; groups are matched across steps by their member
node names (the rewrite keeps node names). Before each training phase the BatchNorm
statistics are recomputed on the training samples (graphprune.recovery.bn_recalibrate),
which pruning upstream channels has shifted, unless recalibrating the original model on
that data lowers its metric (then the recovery keeps the model's own statistics and trains
with its BNs frozen, see _bn_suits_data). Training (graphprune.recovery.train) runs on CPU
through graphprune.bridge: with labels, cross-entropy (optionally mixed with
distillation); without labels, distillation from the original model, its outputs
computed once in onnxruntime (graphprune.recovery.distill / teacher). Quality is
measured with onnxruntime on data the training never sees.
"""
from __future__ import annotations

import time

import numpy as np
import onnx

from graphprune.errors import GraphpruneError
from graphprune.recovery.bn_recalibrate import recalibrate_bn
from graphprune.recovery.distill import DEFAULT_TEMPERATURE, Objective, objective
from graphprune.recovery.teacher import teacher_outputs
from graphprune.recovery.train import train_epochs
from graphprune.search.objectives import error_rate

BN_SAMPLES = 512   # training samples the BN statistics are recomputed on before each training phase
LR_TRIES = 3       # a recovery that ends below where it started is redone at lr/10, then lr/100
BN_HARM = 0.005    # recalibrating the original may cost this much of the metric (or 2 samples' worth) and still be used


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


def training_objective(teacher: onnx.ModelProto, train, distill_weight: float, temperature: float) -> Objective:
    """The loss recovery trains with: the labels' cross-entropy alone (distill_weight 0, labels
    present: fine-tuning as before), or distillation from `teacher` (the original model, its
    outputs computed once over train.x and cached), mixed with the labels when there are any."""
    if train.y is not None and distill_weight <= 0:
        return objective(None, train.y, 0.0)
    targets, _ = teacher_outputs(teacher, train.x)
    return objective(targets, train.y, distill_weight if train.y is not None else 1.0, temperature)


def recover(model: onnx.ModelProto, an, config: dict[int, int], criterion: str, train, x_eval, y_eval,
            epochs: float, steps: int = 2, lr: float = 1e-3, batch_size: int = 64, seed: int = 0,
            log=None, error_fn=None, distill_weight: float = 0.0, temperature: float = DEFAULT_TEMPERATURE,
            bn_samples: int = BN_SAMPLES, before: onnx.ModelProto | None = None,
            label: str = "accuracy", reconstruct_x=None) -> tuple[onnx.ModelProto, dict]:
    """Prune `model` to `config` in `steps` steps, each followed by BN recalibration on (a fixed-seed
    subset of) the training samples and training; returns (model, report). error_fn(model) -> error
    judges the models (default: top-1 error on x_eval, y_eval); `before` is the model "before
    recovery" it is compared with (default: `model` pruned to `config` directly).

    A recovery that ends below where it started (as judged by error_fn) is redone from the pruned
    model at a tenth of the learning rate, up to LR_TRIES tries; the report gives the lr used and
    the tries that ended worse. Why: u2netp pruned 5 % (mIoU 0.64) ended at 0.4675, a constant map,
    after 12 distillation steps at lr 1e-3 and at 1e-4 without any rise of the training loss the
    trainer's divergence guard could see, and at 0.745 at 1e-5. The tries are judged on the same
    data as the search (error_fn), like optimize's choice among recovered candidates.

    `reconstruct_x` (--reconstruct): samples on which the Convs that read pruned channels are refitted
    by least squares to the original's outputs (graphprune.recovery.reconstruct) right after pruning,
    before any training. The refit needs the original's outputs for the pruned model's layers, so
    the model is then pruned in one step."""
    import graphprune as gp

    log = log or (lambda m: None)
    if train is None or len(train) == 0:
        raise GraphpruneError("recovery needs training data (--train-data, or enough --data to hold some out)")
    if steps < 1:
        raise GraphpruneError("--finetune-steps must be >= 1")
    if error_fn is None:
        if y_eval is None:
            raise GraphpruneError("recovery: without labels the models must be judged by a metric (error_fn)")
        error_fn = lambda m: error_rate(m, x_eval, y_eval)  # noqa: E731
    if reconstruct_x is not None and steps > 1:
        log(f"recovery: --reconstruct prunes in one step (not {steps}): the refit matches the original's outputs")
        steps = 1
    if before is None:
        before = gp.prune(model, gp.choose(an, keep=config, criterion=criterion))
    acc_before = 1.0 - error_fn(before)
    goal = training_objective(model, train, distill_weight, temperature)
    calib = train.x[np.sort(np.random.default_rng(seed).permutation(len(train))[:bn_samples])]
    use_bn = _bn_suits_data(model, calib, batch_size, error_fn, log, n_eval=_n(x_eval))
    refitted = None if reconstruct_x is None else _refitted(model, an, config, criterion, reconstruct_x, seed, log)
    worse = []
    for k in range(LR_TRIES):
        cur, rep = _recover_at(model, an, config, criterion, train, x_eval, epochs, steps, lr / 10 ** k, batch_size,
                               seed, log, error_fn, goal, calib if use_bn else None, acc_before, label, refitted)
        if rep["accuracy_after"] >= acc_before - 1e-12 or k == LR_TRIES - 1:
            break
        worse.append({"lr": lr / 10 ** k, "accuracy_after": rep["accuracy_after"]})
        log(f"recovery at lr {lr / 10 ** k:g} ended below where it started: again from the pruned model at "
            f"lr {lr / 10 ** (k + 1):g}")
    rep.update(lr=lr / 10 ** len(worse), worse_tries=worse)
    return cur, rep


def _n(x) -> int:
    from graphprune.metrics.runner import n_samples
    return n_samples(x) if isinstance(x, dict) else len(x)


def _bn_suits_data(model, calib, batch_size, error_fn, log, n_eval: int = 0) -> bool:
    """Whether recovery should recalibrate BNs on this data: not when recalibrating the ORIGINAL
    model on it loses more than BN_HARM of the metric (error_fn), nor less than two of the
    n_eval judged samples' worth (2 / n_eval: one or two samples changing their outcome is noise).

    Recalibration is there because pruning shifts the statistics; on the unpruned model it
    should change nothing but noise. When it does change the metric, the data's statistics
    are not those the model was trained on (PP-OCRv4 det on rendered text: recalibrating the
    original costs 0.076 of its text-box F1, 0.11 of its mask mIoU), every recovered candidate
    started that much lower, and a few epochs of distillation never made it back (recoveries
    from 100 % ended at 98.8, 96.0 and 92.4 % at lr 1e-2, 1e-3, 1e-4: docs/bench_unlabelled.md).
    Then the pruned model keeps its own statistics and trains with its BNs frozen (their
    running statistics would drift to the same data). The Fashion-MNIST example loses 0.0025
    (93.10 -> 92.85 %) and keeps recalibrating. The pruned model itself is not the judge:
    recalibrated but untrained it can score worse and still train to a better end."""
    new, rep = recalibrate_bn(model, calib, batch_size)
    if not rep.layers:
        return True
    before, after = 1 - error_fn(model), 1 - error_fn(new)
    if before - after <= max(BN_HARM, 2.0 / max(n_eval, 1)):
        return True
    log(f"BN recalibration on this data lowers the ORIGINAL model's metric ({100 * before:.2f} % -> "
        f"{100 * after:.2f} %): recovery keeps the pruned model's own BN statistics and trains with them frozen")
    return False


def _refitted(model, an, config, criterion, x, seed, log):
    """(model pruned to `config` in one step and reconstructed on x, ReconstructReport): computed once,
    the same for every learning-rate try."""
    import graphprune as gp
    from graphprune.recovery.reconstruct import reconstruct
    plan = gp.choose(an, keep=config, criterion=criterion)
    out = reconstruct(an.model, plan, gp.prune(an.model, plan), x, seed=seed)
    log(f"recovery: {out[1].text}")
    return out


def _recover_at(model, an, config, criterion, train, x_eval, epochs, steps, lr, batch_size, seed, log, error_fn,
                goal, calib, acc_before, label, refitted=None):
    """One recovery at learning rate lr: (model, report). calib None: no BN recalibration, BNs frozen;
    refitted: (pruned and reconstructed model, report) of --reconstruct, the one pruning step's result."""
    import graphprune as gp
    from graphprune.recovery.bn_recalibrate import BNReport
    t0 = time.time()
    per_step = 0.5 * epochs / steps
    final = epochs - per_step * steps
    cur, cur_an = model, an
    stats, bn, refit = [], [], None

    def recalibrate_and_train(m, ep, s):
        if calib is not None:
            m, rep = recalibrate_bn(m, calib, batch_size)
        else:
            rep = BNReport(skipped=["all: recalibrating the original on this data lowers its metric"])
        bn.append(rep.to_json())
        # whether the model merges a batch's samples is tested once: pruning keeps the graph's shape logic
        known = next((t["per_sample"] for t in stats if t.get("per_sample") is not None), None)
        # the model's own statistics kept (recalibration hurt): training must not re-estimate them either
        m, st = train_epochs(m, train.x, train.y, ep, lr, batch_size, s, freeze_bn=calib is None,
                             objective=goal, per_sample=known)
        stats.append(st)
        return m, rep, st

    for s in range(1, steps + 1):
        frac = s / steps
        step_cfg = {g: int(round(an.group(g).units - (an.group(g).units - k) * frac)) for g, k in config.items()}
        keep = _match(an, cur_an, step_cfg)
        if refitted is not None:   # --reconstruct: one step, pruned and refitted once for every try
            cur, refit = refitted
        else:
            cur = gp.prune(cur_an.model, gp.choose(cur_an, keep=keep, criterion=criterion))
        cur, rep, st = recalibrate_and_train(cur, per_step, seed + s)
        log(f"recovery step {s}/{steps}: pruned to {step_cfg}, {rep.text}, trained {per_step:.2f} epoch(s) "
            f"({goal.text}{', one sample at a time' if st.get('per_sample') else ''}), "
            f"loss {st['loss_first']} -> {st['loss_last']}"
            + "".join(f"; at lr {t['lr']:g} it diverged ({t['diverged']}), retrained at a tenth"
                      for t in st.get("diverged_tries", [])))
        cur = gp.load(cur)
        cur_an = gp.analyse(cur)
    cur, _, _ = recalibrate_and_train(cur, final, seed + 100)
    acc_after = 1.0 - error_fn(cur)
    log(f"recovery: {label} {100 * acc_before:.2f} % -> {100 * acc_after:.2f} % on {len(x_eval)} held-out samples "
        f"({time.time() - t0:.0f} s)")
    got = gp.count(cur)
    return cur, {"steps": steps, "epochs": epochs, "epochs_per_step": per_step, "final_epochs": final,
                 "train_samples": len(train), "eval_samples": int(len(x_eval)), "accuracy_before": acc_before,
                 "accuracy_after": acc_after, "macs": got.macs, "param_bytes": got.param_bytes,
                 "objective": goal.to_json(), "objective_text": goal.text, "bn_recalibration": bn,
                 "reconstruction": refit.to_json() if refit is not None else None,
                 "training": stats, "seconds": time.time() - t0}
