"""Recovery by fine-tuning, and the rule for what may be delivered after it.

Fine-tuning can ruin a model: a learning rate too high diverges (NaN weights), or lands
far below where it started (10 % accuracy from 93 %). Such a model must never be
delivered as meeting the user's accuracy bound. So every recovered model is judged
(`judge`): finite weights and losses, accuracy after >= accuracy before, and, with
--max-error-increase, within the user's bound. One that fails is not delivered: the
pruned model before recovery is, when it meets the bound itself; otherwise the next
front member is tried. Every output says which happened and why.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from graphprune.search import objectives as obj
from graphprune.search.pareto import Constraints, choose_best


@dataclass
class Delivery:
    """What recovering one front member gave: the model to deliver (None: nothing deliverable
    from this member), its error on the evaluation data, the recovery delivered (None: the
    pruned model as searched) and a recovery that was rejected, with its reason."""
    record: dict
    model: object
    error: float
    recovery: dict | None = None
    rejected: dict | None = None

    def listing(self) -> str:
        r = self.recovery or self.rejected
        after = f"{100 * r['accuracy_after']:.2f} %" if r else "not recovered"
        txt = f"{self.record['key']} {100 * (1 - self.record['error']):.2f} % -> {after}"
        return txt + (f" (rejected: {self.rejected['reason']})" if self.rejected else "")


def recover(st, record) -> tuple[object, dict | None]:
    """(model, recovery report) for a front member: pruned and fine-tuned, or just pruned when
    recovery is off or the member is the original (report None)."""
    from graphprune.search.candidates import build
    from graphprune.search.finetune import recover as finetune
    o, space = st.o, st.space
    if getattr(st, "joint", None) is not None:   # --quantize: fine-tune the pruned fp32 model, then quantize
        from graphprune.search.joint import recover as joint_recover
        return joint_recover(st, record)
    cfg = {int(k): v for k, v in record["config"].items()}
    if o.epochs <= 0:
        return build(cfg), None
    if cfg == {a.gid: a.units for a in space.axes}:
        st.log("recovery skipped: the chosen configuration is the original model")
        return build(cfg), None
    from graphprune.search.cluster import recovery_jobs
    started = recovery_jobs.take(st, record["key"])   # --cluster: fine-tuned on a worker
    pruned, rcv = started if started is not None else finetune(
        st.model, st.an, cfg, o.criterion, st.train, st.x, st.y, epochs=o.epochs, steps=o.finetune_steps, lr=o.lr,
        batch_size=o.batch_size, seed=o.seed, log=st.log, **recovery_options(st), before=build(cfg))
    rcv.update(obj.measure(pruned, st.spec))
    refit = rcv.get("reconstruction")
    rcv["text"] = (f"pruned in {rcv['steps']} step(s), "
                   + (f"{refit['layers']} convolution(s) refitted by least squares, " if refit else "")
                   + f"BN statistics recomputed and {rcv['epochs_per_step']:.2f} "
                   f"epoch(s) of training ({rcv['objective_text']}) after each, then {rcv['final_epochs']:.2f} "
                   f"final epoch(s) on {rcv['train_samples']} training samples: {st.metric.name} "
                   f"{100 * rcv['accuracy_before']:.2f} % before recovery (pruned"
                   f"{', BN recalibrated' if o.bn_recalibrate else ''}"
                   f"{', reconstructed' if o.reconstruct else ''}, no training) -> "
                   f"{100 * rcv['accuracy_after']:.2f} % after, original {100 * (1 - st.base['error']):.2f} %, on "
                   f"{rcv['eval_samples']} samples the fine-tuning never saw; latency {rcv['latency_ms']:.3f} ms")
    return pruned, rcv


def recovery_options(st) -> dict:
    """finetune.recover's distillation options and error function for this run. The error is
    the search's: `st.error_of(model)` when the run sets one (a metric other than labelled
    accuracy), else top-1 error on --data's labels."""
    o = st.o
    labelled = st.train is not None and st.train.y is not None
    weight = o.distill_weight if o.distill_weight is not None else (0.0 if labelled else 1.0)
    return {"error_fn": getattr(st, "error_of", None), "distill_weight": weight, "temperature": o.temperature,
            "label": st.metric.name, "reconstruct_x": getattr(st, "recon_x", None)}


def judge(model, rcv: dict, strict: float | None) -> str | None:
    """Why a recovered model must not be delivered, or None when it may."""
    bad_loss = [v for st in rcv.get("training", []) for v in (st.get("loss_first"), st.get("loss_last"))
                if v is not None and not math.isfinite(v)]
    if bad_loss:
        return "fine-tuning diverged (non-finite training loss)"
    if model is not None and not weights_finite(model):
        return "fine-tuning diverged (non-finite weights)"
    if not rcv["accuracy_after"] >= rcv["accuracy_before"] - 1e-12:
        return (f"accuracy after recovery {100 * rcv['accuracy_after']:.2f} % is below "
                f"{100 * rcv['accuracy_before']:.2f} % before it")
    if strict is not None and not 1 - rcv["accuracy_after"] <= strict + 1e-12:
        return f"error after recovery {1 - rcv['accuracy_after']:.4f} exceeds the bound {strict:.4f}"
    return None


def weights_finite(model) -> bool:
    from onnx import numpy_helper
    for t in model.graph.initializer:
        a = numpy_helper.to_array(t)
        if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
            return False
    return True


def deliver(st, record, strict: float | None) -> Delivery:
    """Recover `record` and decide what of it may be delivered under the error bound `strict`."""
    model, rcv = recover(st, record)
    if rcv is None:
        return Delivery(record, model, record["error"])
    why = judge(model, rcv, strict)
    if why is None:
        return Delivery(record, model, 1 - rcv["accuracy_after"], recovery=rcv)
    rejected = {**{k: v for k, v in rcv.items() if k != "text"}, "key": record["key"], "reason": why}
    st.log(f"recovery of {record['key']} rejected: {why}")
    if strict is None or record["error"] <= strict + 1e-12:
        from graphprune.search.candidates import build
        return Delivery(record, build({int(k): v for k, v in record["config"].items()}), record["error"],
                        rejected=rejected)
    return Delivery(record, None, math.inf, rejected=rejected)


def recover_first_within(candidates, recover_one, bound: float, tries: int):
    """Recover `candidates` in order, at most `tries` of them, until one's error after recovery is
    within `bound`. recover_one(c) -> (model, report, error after). Returns (the winning
    (c, model, report, error) or None, every try in order). Shared by --recovery-slack and the
    benchmark's uniform baseline, so both match accuracy by the same rule."""
    tried = []
    for c in candidates[:tries]:
        tried.append((c, *recover_one(c)))
        if tried[-1][3] <= bound + 1e-12:
            return tried[-1], tried
    return None, tried


def _rejected_note(d: Delivery) -> str:
    if not d.rejected:
        return ""
    return (f"; its recovery was REJECTED ({d.rejected['reason']}): delivered the pruned model before recovery, "
            f"accuracy {100 * (1 - d.error):.2f} %")


def choose_delivery(st) -> tuple[Delivery | None, str]:
    """(what is delivered, the reason). Without --recovery-slack the choice is recovered (and judged).
    With it, the search bound was max_error_increase + slack and the user's bound must hold on
    the delivered model: front members within the loose bound are recovered best score first,
    at most recovery_tries, and the first deliverable within the user's bound wins; otherwise
    the best member within the user's bound before recovery is delivered (recovered if that
    is judged sound, else as pruned)."""
    o, choice, base = st.o, st.choice, st.base
    if choice.record is None:
        return None, choice.reason
    strict = None if o.max_error_increase is None else base["error"] + o.max_error_increase
    if not o.recovery_slack:
        d = deliver(st, choice.record, strict)
        return d, choice.reason + _rejected_note(d)
    won, tried = recover_first_within(choice.feasible, lambda r: (None, *_as_try(deliver(st, r, strict))),
                                      strict, o.recovery_tries)
    listed = "; ".join(t[2].listing() for t in tried)
    if won is not None:
        d = won[2]
        return d, (f"{choice.reason}; recovery-aware (search error bound {st.cons.max_error:.4f}, the "
                   f"user's {strict:.4f} holds on the delivered model): recovered best score first "
                   f"[{listed}], delivered the first within the bound" + _rejected_note(d))
    why = (f"recovery-aware: none of the {len(tried)} best-scored front members within error {st.cons.max_error:.4f} "
           f"met {strict:.4f} after recovery [{listed}]")
    fallback = choose_best(st.fr, base, st.objectives, Constraints(max_error=strict, max_latency_ms=st.cons.max_latency_ms),
                           st.weights)
    if fallback.record is None:
        return None, f"{why}; {fallback.reason}"
    done = {t[0]["key"]: t[2] for t in tried}
    d = done.get(fallback.record["key"])
    if d is None or d.model is None:
        d = deliver(st, fallback.record, strict)
    return d, f"{why}; fell back to the choice within {strict:.4f} before recovery: {fallback.reason}" + _rejected_note(d)


def _as_try(d: Delivery):
    """(delivery, error) in recover_first_within's (model, report, error) slots."""
    return d, d.error


def recovery_stage(st) -> None:
    from graphprune.search.cluster import recovery_jobs
    recovery_jobs.start(st)   # --cluster: the fine-tunes the rule may need, all at once on the workers
    try:
        d, st.choice_reason = choose_delivery(st)
    finally:
        recovery_jobs.cancel_rest(st)
    st.delivery = d
    st.chosen = d.record if d is not None else None
