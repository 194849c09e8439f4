#!/usr/bin/env python
"""Can distillation recover a pruned u2netp? Optimisers and losses tried on one uniformly pruned model.

docs/bench_unlabelled.md found no speed-up for rembg's u2netp within 0.01 saliency: its cheap-to-
prune groups carry almost no MACs, and the 64-channel stage convolutions that carry them are
sensitive; recovery by SGD diverged at lr >= 1e-4 and won nothing at 1e-5. This tool asks the
question the benchmark left open (would a better recovery change that?) directly: u2netp at
128x128 (tools/_real_models.py: the same copy, synthetic scenes and `saliency` metric), pruned
uniformly by L1 at --ratio (channel step 4), then each recipe trains a copy for --steps batches
of 8 on --train images by distillation from the original and reports the metric on the
validation images after every --every steps:

* `sgd`: graphprune's recovery optimiser (SGD, Nesterov momentum 0.9, cosine schedule);
* `adam`: Adam, same schedule;
* `-logits`: the loss on the logits before u2netp's 7 output sigmoids (the student's and the
  teacher's), instead of on the saturated probabilities.
The loss is graphprune's distillation loss (graphprune.recovery.distill: per-channel
variance-normalised MSE). Also reported: the metric of a constant map (what a collapsed model
scores), so a recovery that "rises" to it is read as the collapse it is.

    .venv/bin/python tools/probe_u2netp_recovery.py                     # ~12 min on 2 cores

Writes OUT/probe_u2netp_recovery.json and the section `probe-u2netp-recovery` of
docs/bench_unlabelled.md.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import graphprune as gp  # noqa: E402
from _docs import cpu_name, load_text, write_result  # noqa: E402
from _real_models import u2netp_setting  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "bench_unlabelled.md"
RECIPES = ("sgd:1e-5", "adam:1e-4", "adam:1e-5", "adam:1e-6", "adam-logits:1e-5", "sgd-logits:1e-4")


def strip_sigmoids(model):
    """A copy whose outputs are the inputs of the final Sigmoids (the logits)."""
    m = copy.deepcopy(model)
    producer = {o: n for n in m.graph.node for o in n.output}
    for out in m.graph.output:
        node = producer[out.name]
        if node.op_type != "Sigmoid":
            raise SystemExit(f"output {out.name} is not a Sigmoid's ({node.op_type})")
        m.graph.node.remove(node)
        out.name = node.input[0]
    return m


def with_weights(src, dst):
    """dst with the initializers src also has (same names) copied from src."""
    out = copy.deepcopy(dst)
    w = {t.name: t for t in src.graph.initializer}
    for t in out.graph.initializer:
        if t.name in w:
            t.CopyFrom(w[t.name])
    return out


def run_recipe(recipe, pruned, original, train_x, judge, args) -> dict:
    import torch

    from graphprune.bridge import to_torch
    from graphprune.recovery.batching import backward_batch
    from graphprune.recovery.distill import loss_fn, objective
    from graphprune.recovery.teacher import teacher_outputs
    name, lr = recipe.split(":")
    lr = float(lr)
    logits = name.endswith("-logits")
    student = strip_sigmoids(pruned) if logits else pruned
    teacher = strip_sigmoids(original) if logits else original
    loss = loss_fn(objective(teacher_outputs(teacher, train_x)[0], None, 1.0))   # recovery's own teacher run
    torch.manual_seed(args.seed)
    net = to_torch(student)
    net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    opt = (torch.optim.Adam(params, lr=lr) if name.startswith("adam") else
           torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps)
    xt = torch.from_numpy(np.ascontiguousarray(train_x, np.float32))
    rng = np.random.default_rng(args.seed)
    curve, t0 = [], time.time()
    for step in range(1, args.steps + 1):
        idx = rng.choice(len(train_x), args.batch, replace=False)
        opt.zero_grad()
        value = backward_batch(net, xt, idx, loss, False)
        opt.step()
        sched.step()
        if step % args.every == 0 or step == args.steps:
            net.eval()
            trained = net.write_back(student)
            net.train()
            metric = judge(with_weights(trained, pruned) if logits else trained)
            curve.append({"step": step, "loss": float(value), "metric": metric})
            print(f"  {recipe} step {step}: loss {value:.4g}, saliency {metric:.4f} ({time.time() - t0:.0f} s)",
                  flush=True)
    return {"recipe": recipe, "curve": curve, "seconds": time.time() - t0}


def markdown(res, load0, load1, cmd) -> str:
    L = [f"Measured by `{cmd}` on {cpu_name()}, {time.strftime('%Y-%m-%d')}, {res['wall_s'] / 60:.1f} min; "
         f"{load_text(load0, load1)}. u2netp at 128x128, uniform L1 {res['ratio']:g} (channel step 4): "
         f"{res['macs_ratio']:.2f} of the MACs; {res['train']} training and {res['val']} validation scenes; batches "
         f"of {res['batch']}, {res['steps']} steps, cosine schedule. Metric: `saliency` (1 - MAE of the min-max "
         "normalised map vs the original's; the original scores 1).", "",
         f"- pruned, before any training: **{res['before']:.4f}**; a constant map scores **{res['constant']:.4f}** "
         "(a model that collapses to a constant output reaches this)", "",
         "| recipe (optimiser, loss, lr) | " + " | ".join(f"step {c['step']}" for c in res["runs"][0]["curve"])
         + " | s |", "|---|" + "---|" * (len(res["runs"][0]["curve"]) + 1)]
    for r in res["runs"]:
        L.append(f"| {r['recipe']} | " + " | ".join(f"{c['metric']:.4f}" for c in r["curve"])
                 + f" | {r['seconds']:.0f} |")
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.25)
    ap.add_argument("--train", type=int, default=100)
    ap.add_argument("--val", type=int, default=16)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--out", default="out/probe_u2netp_recovery")
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(2)
    from graphprune.metrics.runner import evaluate
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0, load0 = time.time(), os.getloadavg()
    model, val, train, metric, ref = u2netp_setting(out, args.val, args.train, args.seed)

    def judge(m):
        return evaluate(m, val.x, metric, ref, None, threads=2)
    pruned = gp.prune(model, gp.choose(gp.analyse(model), ratio=args.ratio, criterion="l1", round_to=4))
    constant = metric.compare([np.zeros_like(ref[0])], ref, None)   # a constant map normalises to all zeros
    res = {"ratio": args.ratio, "train": len(train), "val": len(val), "batch": args.batch, "steps": args.steps,
           "macs_ratio": gp.count(pruned).macs / gp.count(model).macs, "before": judge(pruned), "constant": constant}
    print(f"pruned {res['macs_ratio']:.2f} of the MACs: saliency {res['before']:.4f}", flush=True)
    res["runs"] = [run_recipe(r, pruned, model, train.x, judge, args) for r in args.recipes.split(",") if r]
    res["wall_s"] = time.time() - t0
    write_result(out, "probe_u2netp_recovery", res, None if args.no_doc else DOC, markdown, load0, "probe_u2netp_recovery.py", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
