#!/usr/bin/env python
"""Does searching on measured latency pay? Three ways to prune the same model, at matched accuracy.

  (a) `graphprune optimize` with XAI channel ranking (importance metadata, default LRP)
      and MEASURED latency on the target as an objective;
  (b) uniform L1 pruning: the same removed fraction in every group, at the largest
      ratio (on a 0.05 grid) whose accuracy is within --max-drop of the original after
      recovery;
  (c) the same search as (a) with MACs instead of measured latency.

Matched accuracy: every method's delivered model loses at most --max-drop (default
1 pp) on the validation data AFTER the same recovery (same steps, epochs, learning
rate, data). Candidates may lose --max-drop + --recovery-slack before recovery; each
method recovers at most --recovery-tries of its best ones (fastest front members for
(a), fewest MACs for (c), largest ratios for (b)) and keeps the first within the
budget (optimize's own --recovery-slack rule). --recovery-slack 0 is the stricter,
earlier protocol: the budget holds before recovery. Final accuracy is reported on the
validation data, which the fine-tuning never sees (train and validation come from
different Fashion-MNIST splits).

Latency of the original and the three final models is measured again at the end,
interleaved over --rounds rounds (cache off), so slow drift of a busy host hits all
alike; the reported figure is the median of the rounds' medians.

    .venv/bin/python tools/make_demo_data.py -o out/bench_data --train 12000
    .venv/bin/python tools/bench_optimize.py --val out/bench_data/val.npz --train out/bench_data/train.npz \
        --budget 150 --epochs 2
    .venv/bin/python tools/bench_optimize.py --model examples/fashion_mnist_vgg.onnx \
        --val out/bench_data/val.npz --train out/bench_data/train.npz --budget 150 --epochs 2

Writes OUT/bench_optimize.json, .md, .png and each run's optimize outputs (OUT/a, OUT/c),
and the committed copies docs/bench_optimize.md, .png (the default model, which the
README shows) or docs/bench_optimize_<model stem>.md, .png (any other model). OUT
defaults to out/bench_optimize, or out/bench_optimize_<model stem> for another model,
so that one model's cached importance scores and journals never serve another.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import graphprune as gp  # noqa: E402
from graphprune.data import load_for_model  # noqa: E402
from graphprune.search import objectives as obj  # noqa: E402
from graphprune.search.finetune import recover  # noqa: E402
from graphprune.search.optimize import OptimizeOptions, recover_first_within, run_optimize  # noqa: E402


ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "examples/fashion_mnist_resnet.onnx"


def _doc_stem(model: str) -> str:
    """bench_optimize for the default model (the README's docs/bench_optimize.md), else bench_optimize_<stem>."""
    same = Path(model).resolve() in (Path(DEFAULT_MODEL).resolve(), (ROOT / DEFAULT_MODEL).resolve())
    return "bench_optimize" if same else f"bench_optimize_{Path(model).stem}"


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def uniform_l1(model, an, x, y, step, error_fn=None, ratios=None, stop_error=None, label="accuracy", repair=None):
    """Uniform L1 pruning on a 0.05 grid of ratios (or `ratios`), each evaluated without fine-tuning.

    error_fn(pruned model) -> error replaces top-1 error on (x, y) (a metric without labels);
    with stop_error the sweep stops after the first ratio whose error exceeds it (larger ratios
    cost time and, on these networks, only lose more). repair(pruned, plan) -> model: what the
    search applies to every candidate before judging it (e.g. --reconstruct), applied here too."""
    error_fn = error_fn or (lambda m: obj.error_rate(m, x, y))  # noqa: E731
    rows = []
    for r in (np.arange(0.05, 0.951, 0.05) if ratios is None else ratios):
        plan = gp.choose(an, ratio=float(r), criterion="l1", round_to=step)
        pruned = gp.prune(model, plan)
        err = error_fn(repair(pruned, plan) if repair else pruned)
        rows.append({"ratio": round(float(r), 2), "error": err, "config": plan.config()})
        log(f"uniform L1 ratio {r:.2f}: {label} {100 * (1 - err):.2f} %")
        if stop_error is not None and err > stop_error:
            break
    return rows


def uniform_l1_matched(model, an, rows, base_err, args, train, val, error_fn=None, distill_weight=0.0,
                       reconstruct_x=None):
    """(b) at matched accuracy with the same rule as optimize's --recovery-slack: the ratios losing
    at most max_drop + slack before recovery, largest first, are recovered (at most recovery_tries),
    and the first within max_drop after recovery is kept; without one, the largest ratio within
    max_drop before recovery (recovered). Returns (row, model, recovery report, tried).
    error_fn, distill_weight and reconstruct_x go to recover (data without labels: a metric,
    distillation; --reconstruct: the refit before training, and the model it starts from)."""
    def rec(row):
        cfg = {int(k): v for k, v in row["config"].items()}
        before = None
        if reconstruct_x is not None:
            from graphprune.recovery.reconstruct import reconstruct
            plan = gp.choose(an, keep=cfg, criterion="l1")
            before = reconstruct(model, plan, gp.prune(model, plan), reconstruct_x, seed=args.seed)[0]
        return recover(model, an, cfg, "l1", train, val.x, val.y,
                       epochs=args.epochs, steps=args.finetune_steps, lr=args.lr, batch_size=getattr(args, "batch_size", 64),
                       seed=args.seed, log=lambda m: log(f"(b) {m}"), error_fn=error_fn,
                       distill_weight=distill_weight, reconstruct_x=reconstruct_x, before=before)
    within = lambda row, drop: row["error"] - base_err <= drop + 1e-12  # noqa: E731
    tried, done = [], {}
    if args.recovery_slack:
        def one(row):
            m, rc = rec(row)
            return m, rc, 1 - rc["accuracy_after"]
        cands = [r for r in reversed(rows) if within(r, args.max_drop + args.recovery_slack)]
        won, runs = recover_first_within(cands, one, base_err + args.max_drop, args.recovery_tries)
        tried = [{"ratio": r["ratio"], "accuracy_before": 1 - r["error"], "accuracy_after": rc["accuracy_after"]}
                 for r, _, rc, _ in runs]
        if won is not None:
            return won[0], won[1], won[2], tried
        done = {r["ratio"]: (m, rc) for r, m, rc, _ in runs}
    strict = [r for r in rows if within(r, args.max_drop)]
    if not strict:
        return None, model, None, tried
    row = strict[-1]
    m, rc = done.get(row["ratio"]) or rec(row)
    return row, m, rc, tried


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--val", required=True, help="validation .npz (search + reported accuracy)")
    ap.add_argument("--train", required=True, help="training .npz (importance scores + fine-tuning)")
    ap.add_argument("-o", "--out", default=None,
                    help="default out/bench_optimize (default model) or out/bench_optimize_<model stem>")
    ap.add_argument("--target", default="x86")
    ap.add_argument("--method", default="lrp", help="importance method for (a) and (c)")
    ap.add_argument("--importance-samples", type=int, default=256)
    ap.add_argument("--budget", type=int, default=60)
    ap.add_argument("--max-drop", type=float, default=0.01, help="accuracy budget after recovery (0.01 = 1 pp)")
    ap.add_argument("--recovery-slack", type=float, default=0.08,
                    help="candidates may lose max-drop + this before recovery; each method then recovers up to "
                         "--recovery-tries of them, best first, and keeps the first within max-drop after "
                         "recovery (0: max-drop holds before recovery, the earlier protocol)")
    ap.add_argument("--recovery-tries", type=int, default=4)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--finetune-steps", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--repeats", type=int, default=30, help="timed runs per candidate in the searches")
    ap.add_argument("--final-repeats", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1,
                    help="onnxruntime threads for every timing (default 1: steadier on a small shared host)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="resume the two searches from their journals")
    ap.add_argument("--prefer-weight", type=float, default=10.0,
                    help="weight of the speed objective (latency for (a), MACs for (c)) against error in the "
                         "final choice: 10 = the fastest configuration within the accuracy budget, nearly")
    return ap


def _scored_model(model, train, args, out: Path) -> Path:
    """Importance scores from the TRAINING data (never the validation data), computed once."""
    scored_path = out / f"scored_{args.method}.onnx"
    if not scored_path.exists():
        from graphprune.importance import compute_importance
        ti = time.time()
        imp = compute_importance(model, train, args.method, samples=args.importance_samples, seed=args.seed,
                                 progress=False)
        gp.save(imp.to_model(model), scored_path)
        log(f"{args.method} importance on {args.importance_samples} training samples: {time.time() - ti:.0f} s")
    return scored_path


def _searches(scored_path: Path, args, out: Path) -> dict:
    """(a) latency-driven and (c) MAC-driven searches on the same scores, data and recovery rule."""
    common = dict(data=args.val, target=args.target, budget=args.budget, max_error_increase=args.max_drop,
                  epochs=args.epochs, recovery_slack=args.recovery_slack, recovery_tries=args.recovery_tries,
                  train_data=args.train, finetune_steps=args.finetune_steps, lr=args.lr,
                  repeats=args.repeats, threads=args.threads, seed=args.seed, resume=args.resume,
                  criterion="metadata", progress=False, channel_step=getattr(args, "channel_step", None))
    runs = {}
    for name, objectives in (("a", "latency,error"), ("c", "macs,error")):
        ts = time.time()
        log(f"({name}) optimize, objectives {objectives}")
        speed_obj = "latency_ms" if name == "a" else "macs"
        s = run_optimize(OptimizeOptions(model=str(scored_path), outdir=str(out / name), objectives=objectives,
                                         prefer={speed_obj: args.prefer_weight}, **common),
                         log=lambda m, n=name: log(f"({n}) {m}"))
        s.pop("_measured", None)
        s["wall_s"] = time.time() - ts
        runs[name] = s
    return runs


def _final_latencies(finals: dict, args) -> tuple[dict, dict]:
    """Every delivered model timed in interleaved rounds (same process, same threads)."""
    from graphprune.targets import measure_latency
    lat = {k: [] for k in finals}
    for _ in range(args.rounds):
        for k, m in finals.items():
            lat[k].append(measure_latency(m, target=args.target, repeats=args.final_repeats, threads=args.threads,
                                          cache=False).median_ms)
    return lat, {k: float(np.median(v)) for k, v in lat.items()}


def _result(args, runs, best, b_rec, b_tried, b_wall, rows, finals, lat, med, base_err, val, train, t0,
            command) -> dict:
    acc = {"original": 1 - base_err,
           "a": runs["a"]["recovery"]["accuracy_after"] if runs["a"].get("recovery") else 1 - runs["a"]["chosen"]["error"],
           "b": b_rec["accuracy_after"] if b_rec else 1 - base_err,
           "c": runs["c"]["recovery"]["accuracy_after"] if runs["c"].get("recovery") else 1 - runs["c"]["chosen"]["error"]}
    acc_before = {"a": 1 - runs["a"]["chosen"]["error"], "b": 1 - best["error"] if best else None,
                  "c": 1 - runs["c"]["chosen"]["error"]}
    speed = {k: med["original"] / med[k] for k in ("a", "b", "c")}
    macs = {k: gp.count(m).macs for k, m in finals.items()}
    return {
        "model": args.model, "target": args.target, "validation_samples": len(val), "train_samples": len(train),
        "max_drop": args.max_drop, "epochs": args.epochs, "finetune_steps": args.finetune_steps,
        "importance_method": args.method, "budget": args.budget,
        "latency_ms_median_of_rounds": med, "latency_ms_rounds": lat, "speedup": speed,
        "ratio_a_over_b": speed["a"] / speed["b"], "ratio_a_over_c": speed["a"] / speed["c"],
        "accuracy_final": acc, "accuracy_before_recovery": acc_before, "macs": macs,
        "matched": {k: acc[k] >= acc["original"] - args.max_drop - 1e-12 for k in ("a", "b", "c")},
        "recovery_slack": args.recovery_slack, "recovery_tries": args.recovery_tries, "b_tried": b_tried,
        "choice_reason": {k: runs[k]["choice_reason"] for k in ("a", "c")},
        "a_config": runs["a"]["chosen"]["key"], "c_config": runs["c"]["chosen"]["key"],
        "b_ratio": best["ratio"] if best else None, "b_config": best["config"] if best else None, "b_sweep": rows,
        "surrogate_a": runs["a"]["surrogate"], "surrogate_c": runs["c"]["surrogate"],
        "search_counts": {k: runs[k]["counts"] for k in ("a", "c")},
        "wall_s": {"a": runs["a"]["wall_s"], "b": b_wall, "c": runs["c"]["wall_s"], "total": time.time() - t0},
        "latency_label": runs["a"]["latency_label"] + f", {args.threads} thread(s)",
        "command": command,
    }


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    command = " ".join(["tools/bench_optimize.py"] + [shlex.quote(a) for a in argv])
    stem = _doc_stem(args.model)
    args.out = args.out or f"out/{stem}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    model = gp.load(args.model)
    an = gp.analyse(model)
    # the loader importance and optimize use (a .npz or a labelled image folder, options from the model)
    val, train = (load_for_model(p, model, require_labels=True, option=o) for p, o in ((args.val, "--val"),
                                                                                      (args.train, "--train")))
    base_err = obj.error_rate(model, val.x, val.y)
    log(f"original accuracy {100 * (1 - base_err):.2f} % on {len(val)} validation samples")
    runs = _searches(_scored_model(model, train, args, out), args, out)

    # (b) uniform L1 at matched accuracy, with the same recovery rule and budget
    ts = time.time()
    from graphprune.targets import get_target
    rows = uniform_l1(model, an, val.x, val.y, get_target(args.target).channel_step)
    best, b_model, b_rec, b_tried = uniform_l1_matched(model, an, rows, base_err, args, train, val)
    b_wall = time.time() - ts

    import onnx
    finals = {"original": model, "a": onnx.load(out / "a" / "best.onnx"), "b": b_model,
              "c": onnx.load(out / "c" / "best.onnx")}
    lat, med = _final_latencies(finals, args)
    res = _result(args, runs, best, b_rec, b_tried, b_wall, rows, finals, lat, med, base_err, val, train, t0,
                  command)
    (out / "bench_optimize.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    _plot(out / "bench_optimize.png", runs["a"], res)
    (out / "bench_optimize.md").write_text(_markdown(res))
    doc = ROOT / "docs" / f"{stem}.md"
    doc.write_text(_markdown(res))  # the committed copies the docs (and, for the default model, README) show
    _plot(doc.with_suffix(".png"), runs["a"], res)
    print(_markdown(res))
    return 0


def _plot(path, run_a, res):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 5))
    fr = sorted(run_a["front"], key=lambda r: r["latency_ms"])
    ax.plot([r["latency_ms"] for r in fr], [100 * (1 - r["error"]) for r in fr], "o-", c="tab:blue", ms=4,
            label="(a) Pareto front, before recovery (search timings)")
    med, acc = res["latency_ms_median_of_rounds"], res["accuracy_final"]
    b_none = res.get("b_ratio") is None  # no uniform ratio within the budget: (b) is the unpruned model
    style = {"original": ("*", "k", "original"), "a": ("D", "tab:blue", "(a) XAI + measured latency"),
             "b": ("s", "tab:orange", "(b) uniform L1" + (" (no ratio within budget: unpruned)" if b_none else "")),
             "c": ("^", "tab:green", "(c) XAI + MACs")}
    for k, (mk, col, lab) in style.items():
        after = "" if k == "original" or (k == "b" and b_none) else " (after recovery)"
        ax.scatter([med[k]], [100 * acc[k]], marker=mk, s=120, c=col, zorder=5,
                   label=f"{lab}: {100 * acc[k]:.2f} %, {med[k]:.3f} ms{after}")
    ax.axhline(100 * (acc["original"] - res["max_drop"]), ls=":", c="0.5", label="original - 1 pp")
    low = 100 * (res["max_drop"] + res.get("recovery_slack", 0.0)) + 3   # down to what the search may deliver
    ax.set_ylim(max(0.0, 100 * acc["original"] - low), min(100.0, 100 * acc["original"] + 2))  # the region that matters
    ax.set_xlabel(f"latency [ms] ({res['latency_label']})")
    ax.set_ylabel("validation accuracy [%] (front members below the axis are cut off)")
    ax.set_title("graphprune optimize vs baselines at matched accuracy", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _protocol(r) -> str:
    rec = (f"same recovery for every model ({r['finetune_steps']} steps, {r['epochs']} epoch(s) in all on "
           f"{r['train_samples']} training samples)")
    if not r.get("recovery_slack"):
        return f"All three configurations lose <= {100 * r['max_drop']:.0f} pp before recovery, then get the {rec}."
    return (f"Matched after recovery: each method's candidates may lose up to {100 * (r['max_drop'] + r['recovery_slack']):.0f} pp "
            f"before recovery; the best ones (fastest for (a), fewest MACs for (c), largest ratio for (b)) are "
            f"recovered, at most {r['recovery_tries']} per method, and the first within {100 * r['max_drop']:.0f} pp of "
            f"the original after recovery is kept; {rec}.")


def _markdown(r):
    med, acc, sp = r["latency_ms_median_of_rounds"], r["accuracy_final"], r["speedup"]
    L = [f"# bench_optimize: {r['model']} on {r['target']}", "",
         f"Latency: {r['latency_label']}; median of {len(r['latency_ms_rounds']['a'])} interleaved rounds. "
         f"Accuracy on {r['validation_samples']} validation samples the fine-tuning never saw. " + _protocol(r), "",
         "| method | configuration | acc. before recovery % | acc. after % | latency ms | speed-up | M MACs |",
         "|---|---|---|---|---|---|---|",
         f"| original | - | - | {100 * acc['original']:.2f} | {med['original']:.3f} | 1.00x | {r['macs']['original'] / 1e6:.2f} |"]
    names = {"a": f"(a) XAI ({r['importance_method']}) + measured latency", "b": "(b) uniform L1",
             "c": f"(c) XAI ({r['importance_method']}) + MACs"}
    cfg = {"a": r["a_config"], "b": f"ratio {r['b_ratio']}", "c": r["c_config"]}
    if r["b_ratio"] is None:  # no ratio on the grid stays within the budget: the matched (b) is the original
        cfg["b"] = "none within the budget: unpruned"
    for k in ("a", "b", "c"):
        ab = r["accuracy_before_recovery"][k]
        L.append(f"| {names[k]} | {cfg[k]} | {'-' if ab is None else f'{100 * ab:.2f}'} | {100 * acc[k]:.2f} | "
                 f"{med[k]:.3f} | {sp[k]:.2f}x | {r['macs'][k] / 1e6:.2f} |")
    L += ["", f"Speed-up ratio (a)/(b) = {r['ratio_a_over_b']:.3f}, (a)/(c) = {r['ratio_a_over_c']:.3f}.", ""]
    if r["b_ratio"] is None and r.get("b_sweep"):
        first = r["b_sweep"][0]
        L += [f"(b): even the smallest uniform ratio, {first['ratio']}, loses "
              f"{100 * (acc['original'] - (1 - first['error'])):.2f} pp before recovery, more than the "
              f"{100 * r['max_drop']:.0f} pp budget, so uniform L1 at matched accuracy prunes nothing; its row is "
              "the unpruned model, timed again like the others.", ""]
    if r.get("b_tried"):
        L += ["(b) recovered, largest ratio first: " + "; ".join(
            f"ratio {t['ratio']}: {100 * t['accuracy_before']:.2f} % -> {100 * t['accuracy_after']:.2f} %"
            for t in r["b_tried"]), ""]
    for k in ("a", "c"):
        why = r.get("choice_reason", {}).get(k, "")
        if "recovery-aware" in why:
            L += [f"({k}) " + why[why.index("recovery-aware"):], ""]
    for k in ("a", "c"):
        sg = r[f"surrogate_{k}"]
        h, p = sg.get("holdout", {}), sg.get("prospective", {})
        if h.get("n"):
            lat = f"latency MAPE {h['latency_mape_pct']:.1f} %, " if h.get("latency_mape_pct") is not None else ""
            L.append(f"- ({k}) surrogate on {h['n']} held-out configurations: {lat}error MAE {h['error_mae_pp']:.2f} pp")
        if p.get("n"):
            lat = f"latency MAPE {p['latency_mape_pct']:.1f} %, " if p.get("latency_mape_pct") is not None else ""
            L.append(f"- ({k}) surrogate on {p['n']} search candidates before measuring them: {lat}"
                     f"error MAE {p['error_mae_pp']:.2f} pp")
    L += ["", f"Search counts: {json.dumps(r['search_counts'])}",
          f"Wall time s: {json.dumps({k: round(v) for k, v in r['wall_s'].items()})}"]
    if r.get("command"):
        L.append(f"Produced by: `.venv/bin/python {r['command']}`")
    L.append("")
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
