#!/usr/bin/env python
"""What least-squares reconstruction does to a pruned u2netp: raw vs refitted, level by level vs at once.

rembg's u2netp has no BatchNorm, and distillation could not recover it once pruned
(tools/probe_u2netp_recovery.py). graphprune.recovery.reconstruct refits the convolutions that
read pruned channels to the original's outputs by least squares. This tool measures, on the
benchmark's own setting (tools/_real_models.py: u2netp at 128x128, the generated scenes, the
`saliency` metric against the original's maps on the validation scenes, the refit on optimize's
fixed-seed subset of --samples training scenes), for a few pruned configurations:

* raw: pruned by L1, nothing else;
* refitted: `reconstruct` as optimize --reconstruct runs it (each Conv fitted on its input with
  every refit upstream applied, one level at a time);
* at once: every Conv fitted on the unrefitted pruned model's inputs in one pass
  (`sequential=False`), the shortcut the level order exists to avoid;
* energy: the same channel counts, but the channels removed are those with the least
  activation energy reaching the convolutions that read them (sum over readers of
  E[x_c^2] x ||W[:, c]||^2 on the refit samples) instead of the smallest filter L1 norm: a
  data-driven choice graphprune does not offer yet (a lead, measured here), raw and refitted.

    .venv/bin/python tools/probe_reconstruct.py          # ~3 min on 2 cores

Writes OUT/probe_reconstruct.json and the section `probe-reconstruct` of docs/bench_unlabelled.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import graphprune as gp  # noqa: E402
from _docs import cpu_name, load_text, write_result  # noqa: E402
from _real_models import u2netp_setting  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "bench_unlabelled.md"
# (label, kept channels per group, or a uniform L1 ratio): one 64-channel stage group (group 0:
# the first stage's output, 20 % of the MACs when halved) lightly and deeply, four stage groups,
# uniform L1 (channel step 4: only the 64-channel groups lose channels at 10 %)
CONFIGS = (("group 0: 64 -> 56", {0: 56}), ("group 0: 64 -> 32", {0: 32}),
           ("groups 0, 13, 81, 93: 64 -> 56", {0: 56, 13: 56, 81: 56, 93: 56}), ("uniform L1 10 %", 0.10))


def energy_scores(an, x) -> np.ndarray:
    """Per unit: sum over the Convs reading its channels of E[x_c^2] x ||W[:, c]||^2 on x."""
    from onnx import numpy_helper

    from graphprune.recovery.probe import probe_model
    from graphprune.runtime import session
    base = an.model
    init = {t.name: numpy_helper.to_array(t) for t in base.graph.initializer}
    convs = [n for n in base.graph.node if n.op_type == "Conv" and n.input[0] in an.maps and n.input[1] in init]
    tensors = list(dict.fromkeys(n.input[0] for n in convs))
    sess = session(probe_model(base, tensors))
    name = sess.get_inputs()[0].name
    sq = dict.fromkeys(tensors, 0.0)
    for i in range(len(x)):
        for t, o in zip(tensors, sess.run(tensors, {name: x[i:i + 1]})):
            sq[t] = sq[t] + (o.astype(np.float64) ** 2).mean((0, 2, 3)) / len(x)
    score = np.zeros(len(an.unit_frozen))
    for n in convs:
        w = init[n.input[1]].astype(np.float64)
        np.add.at(score, an.unit_of[an.maps[n.input[0]].elems], sq[n.input[0]] * (w ** 2).sum((0, 2, 3)))
    return score


def energy_plan(an, plan_l1, score):
    """The L1 plan's kept count per group, the lowest-energy units removed instead."""
    from graphprune.selection import PruningPlan
    keep = np.ones(len(an.unit_frozen), bool)
    for g in an.groups:
        units = an.units_of_group(g.id)
        n_remove = int((~plan_l1.keep_units[units]).sum())
        if n_remove:
            keep[units[np.argsort(score[units], kind="stable")[:n_remove]]] = False
    return PruningPlan(an, keep, "energy")


def measure(model, an, label, cfg, rx, judge, macs0, score) -> dict:
    from graphprune.recovery.reconstruct import reconstruct
    plan = (gp.choose(an, ratio=cfg, criterion="l1", round_to=4) if isinstance(cfg, float)
            else gp.choose(an, keep=cfg, criterion="l1"))
    pruned = gp.prune(model, plan)
    row = {"config": label, "macs_ratio": gp.count(pruned).macs / macs0, "raw": judge(pruned)}
    for key, seq in (("refitted", True), ("at_once", False)):
        t0 = time.time()
        fitted, rep = reconstruct(model, plan, pruned, rx, sequential=seq)
        row[key], row[f"{key}_s"] = judge(fitted), time.time() - t0
        row[f"{key}_layers"], row[f"{key}_passes"] = rep.layers, rep.passes
    eplan = energy_plan(an, plan, score)
    epruned = gp.prune(model, eplan)
    row["energy_raw"], row["energy_refitted"] = judge(epruned), judge(reconstruct(model, eplan, epruned, rx)[0])
    print(f"{label}: MACs {row['macs_ratio']:.3f}, raw {row['raw']:.4f}, refitted {row['refitted']:.4f} "
          f"({row['refitted_s']:.0f} s), at once {row['at_once']:.4f}; energy choice raw {row['energy_raw']:.4f}, "
          f"refitted {row['energy_refitted']:.4f}", flush=True)
    return row


def markdown(res, load0, load1, cmd) -> str:
    L = [f"Measured by `{cmd}` on {cpu_name()}, {time.strftime('%Y-%m-%d')}, {res['wall_s'] / 60:.1f} min; "
         f"{load_text(load0, load1)}. u2netp at 128x128; metric `saliency` on {res['val']} validation scenes "
         f"against the original's maps (the original scores 1); refit on {res['samples']} training scenes "
         "(optimize's fixed-seed subset); L1 channel choice, except the energy columns (the same counts, "
         "the channels with the least activation energy reaching their readers removed).", "",
         "| pruned | MACs ratio | raw | refitted (levels) | Convs refitted, levels | s | refitted at once | "
         "energy choice: raw | energy choice: refitted |",
         "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        L.append(f"| {r['config']} | {r['macs_ratio']:.3f} | {r['raw']:.4f} | **{r['refitted']:.4f}** | "
                 f"{r['refitted_layers']}, {r['refitted_passes']} | {r['refitted_s']:.0f} | {r['at_once']:.4f} | "
                 f"{r['energy_raw']:.4f} | {r['energy_refitted']:.4f} |")
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--val", type=int, default=16)
    ap.add_argument("--train", type=int, default=48)
    ap.add_argument("--samples", type=int, default=16, help="training scenes the refit runs on")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--out", default="out/probe_reconstruct")
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args(argv)
    from graphprune.metrics.runner import evaluate
    from graphprune.search.stages import fixed_subset
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0, load0 = time.time(), os.getloadavg()
    model, val, train, metric, ref = u2netp_setting(out, args.val, args.train, args.seed)
    an = gp.analyse(model)
    rx = fixed_subset(train.x, args.samples, args.seed + 13)   # what optimize --reconstruct refits on

    def judge(m):
        return evaluate(m, val.x, metric, ref, None, threads=2)
    macs0 = gp.count(model).macs
    score = energy_scores(an, rx)
    res = {"val": len(val), "samples": len(rx),
           "rows": [measure(model, an, label, cfg, rx, judge, macs0, score) for label, cfg in CONFIGS]}
    res["wall_s"] = time.time() - t0
    write_result(out, "probe_reconstruct", res, None if args.no_doc else DOC, markdown, load0, "probe_reconstruct.py", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
