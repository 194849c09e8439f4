#!/usr/bin/env python
"""Dynamic (class-conditional) pruning vs the original and a static pruned model, measured.

On a Fashion-MNIST example model:
  (a) the original;
  (c) the dynamic model (`graphprune dynamic`) for every --budgets x --thresholds, each
      budget fine-tuned --epochs on the same samples; the headline is the fastest (average
      latency) configuration within --max-drop of the original's accuracy (else the most
      accurate); the branch point is searched (`--branch-at auto`) unless given;
  (b) the best static pruned model from `graphprune optimize` at (c)'s accuracy: a search
      with measured latency and error as objectives (--static-budget evaluations, L1
      channel ranking), the accuracy bound = the original's minus (c)'s, recovery
      (--epochs, optimize's recovery-aware rule) on the same training samples; optimize
      delivers the fastest configuration that meets the bound after recovery. Optionally
      also uniform L1 at --static-ratios (each recovered the same way), for reference.
Reported: accuracy and per-class accuracy on the test subset, the fraction of early
exits, average latency over --latency-samples test images (each run alone at batch 1,
timed one by one with bench's onnxruntime session) and the longest-path latency
(`graphprune.targets.measure_latency`, as `graphprune bench`, with the gated path
forced); for static models the two are the same path. --tvm also compiles (a), (b)
and the headline (c) with TVM (untuned) and times them the same way.

    nice -n 5 .venv/bin/python tools/bench_dynamic.py --model examples/fashion_mnist_vgg.onnx

Writes OUT/bench_dynamic.json, .md (and .png with matplotlib), and the section
`bench_dynamic_<model stem>` of docs/dynamic.md (tools/_docs.py).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import graphprune as gp  # noqa: E402
from graphprune.data import FASHION_MNIST_CLASSES, load_fashion_mnist  # noqa: E402
from graphprune.dynamic.build import DynamicOptions, build_budgets  # noqa: E402
from graphprune.dynamic.export import with_threshold  # noqa: E402
from graphprune.dynamic.measure import (average_latency_ort, average_latency_tvm, per_class_accuracy,  # noqa: E402
                                        predictions)
from graphprune.targets import measure_latency  # noqa: E402
from _docs import run_prefix  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _floats(text):
    return [float(v) for v in text.split(",") if v]


def _parser():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="examples/fashion_mnist_vgg.onnx")
    ap.add_argument("-o", "--out", default=None, help="default out/bench_dynamic_<model stem>")
    ap.add_argument("--train-samples", type=int, default=4000)
    ap.add_argument("--test-samples", type=int, default=2000)
    ap.add_argument("--latency-samples", type=int, default=500)
    ap.add_argument("--budgets", default="0.25,0.5,0.75")
    ap.add_argument("--thresholds", default="0.5,0.8,0.9,0.95,0.99,2")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--method", default="taylor")
    ap.add_argument("--branch-at", default=None, help="default: searched (graphprune dynamic --branch-at auto)")
    ap.add_argument("--branch-threshold", type=float, default=0.9, help="the exit threshold the branch search "
                                                                        "judges candidates at")
    ap.add_argument("--head-grid", type=int, default=1, help="branch head pooling grid (1: global average)")
    ap.add_argument("--tag", default="", help="suffix of the docs section and plot (several runs of one model)")
    ap.add_argument("--epochs", type=float, default=1.0, help="fine-tuning epochs, dynamic and static alike")
    ap.add_argument("--dispatch", default="auto", help="graphprune dynamic --dispatch")
    ap.add_argument("--max-subset-mib", type=float, default=256.0, help="graphprune dynamic --max-subset-mib")
    ap.add_argument("--latency-fraction", type=float, default=None,
                    help="also build one model with --latency-budget-fraction this (at the chosen branch)")
    ap.add_argument("--latency-threshold", type=float, default=0.9, help="its exit threshold")
    ap.add_argument("--static-ratios", default="", help="uniform L1 ratios also tried for reference (default none)")
    ap.add_argument("--static-budget", type=int, default=60, help="optimize's evaluations for (b)")
    ap.add_argument("--static-criterion", default="l1", help="optimize's channel ranking for (b)")
    ap.add_argument("--recovery-slack", type=float, default=0.08, help="optimize: candidates may lose this much "
                                                                       "more before recovery")
    ap.add_argument("--recovery-tries", type=int, default=4)
    ap.add_argument("--max-drop", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--tvm", action="store_true", help="also time (a), (b) and the headline (c) with TVM (untuned)")
    ap.add_argument("--tvm-samples", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-docs", action="store_true", help="do not write docs/dynamic.md")
    ap.add_argument("--render", help="only write the tables, plot and docs section of a finished run's JSON")
    return ap


def evaluate_static(model, test, args, name):
    """Accuracy, per-class accuracy and latency of a one-path model."""
    scores, _ = predictions(model, test.x, dynamic=False)
    pred = scores.argmax(1)
    avg = average_latency_ort(model, test.x[:args.latency_samples], threads=args.threads)
    return {"name": name, "accuracy": float((pred == test.y).mean()),
            "per_class": per_class_accuracy(pred, test.y, 10), "avg_ms": avg, "longest_ms": avg,
            "bench_ms": measure_latency(model, repeats=args.repeats, threads=args.threads, cache=False).median_ms,
            "exit": 0.0}


def evaluate_dynamic(model, test, args, paths, budget, thr):
    scores, exits = predictions(model, test.x)
    pred = scores.argmax(1)
    return {"name": f"dynamic budget {budget:g}, threshold {thr:g}", "budget": budget, "threshold": thr,
            "accuracy": float((pred == test.y).mean()), "per_class": per_class_accuracy(pred, test.y, 10),
            "exit": float(exits.mean()), "exit_correct": float((pred[exits] == test.y[exits]).mean())
            if exits.any() else None,
            "avg_ms": average_latency_ort(model, test.x[:args.latency_samples], threads=args.threads),
            **paths}


def _options(args, **kw):
    return DynamicOptions(branch_at=args.branch_at, k=args.k, method=args.method, samples=args.train_samples,
                          epochs=args.epochs, seed=args.seed, progress=False, head_grid=args.head_grid,
                          threshold=args.branch_threshold, threads=args.threads, dispatch=args.dispatch,
                          max_subset_mib=args.max_subset_mib, **kw)


def _gather_probe_ms(model_path, res, o, args) -> float | None:
    """The gated path of the same model in the gather form, timed on a probe (same shapes, so the
    same cost; graphprune.dynamic.probe): what subset dispatch saves. None when it is the gather form."""
    from graphprune import metadata as md
    from graphprune.dynamic.build import prepare
    from graphprune.dynamic.export import METADATA_KEY
    from graphprune.dynamic.graph import head_pool
    from graphprune.dynamic.probe import path_ms, probe_model
    d = (md.get_json(res.model, METADATA_KEY) or {}).get("dispatch") or {}
    if d.get("form") != "subsets":
        return None
    m = prepare(model_path)
    pm = probe_model(m, res.split, o.k, head_pool(m, res.split.branch, o.head_grid))
    return path_ms(pm, 2.0, args.repeats, args.threads)


def _paths(model, lat, args) -> dict:
    gated, exit_ = with_threshold(model, 2.0), with_threshold(model, 0.0)
    return {"longest_ms": average_latency_ort(gated, lat, threads=args.threads),
            "exit_ms": average_latency_ort(exit_, lat, threads=args.threads),
            "bench_ms": measure_latency(gated, repeats=args.repeats, threads=args.threads, cache=False).median_ms,
            "bench_exit_ms": measure_latency(exit_, repeats=args.repeats, threads=args.threads, cache=False).median_ms}


def run_dynamic(model_path, train, test, args):
    """Every budget x threshold; returns (rows, {budget: model}, info)."""
    from graphprune import metadata as md
    from graphprune.dynamic.export import METADATA_KEY
    o = _options(args)
    rows, models, info = [], {}, {}
    lat = test.x[:args.latency_samples]
    for b, res in build_budgets(model_path, (train.x, train.y), o, _floats(args.budgets)):
        info = {"branch": res.split.branch, "gates": [(g.producer, g.keep, g.channels) for g in res.split.gates],
                "branch_search": res.branch_search}
        dispatch = (md.get_json(res.model, METADATA_KEY) or {}).get("dispatch") or {"form": "gather"}
        log(f"dynamic budget {b}: built, {dispatch} (fine-tune losses {[round(v, 4) for v in res.losses]})")
        paths = {**_paths(res.model, lat, args), "gather_longest_ms": _gather_probe_ms(model_path, res, o, args),
                 "dispatch": dispatch, "model_mib": res.model.ByteSize() / 2 ** 20}
        models[b] = res.model
        for thr in _floats(args.thresholds):
            row = evaluate_dynamic(with_threshold(res.model, thr), test, args, paths, b, thr)
            rows.append(row)
            log(f"  threshold {thr}: acc {row['accuracy']:.4f}, exits {row['exit']:.1%}, avg {row['avg_ms']:.3f} ms, "
                f"longest {paths['longest_ms']:.3f} ms (gather form {paths['gather_longest_ms']})")
    return rows, models, info


def run_latency_target(model_path, train, test, args, branch) -> dict:
    """One more dynamic model whose budget comes from --latency-fraction x the original's latency."""
    o = _options(args, latency_budget_fraction=args.latency_fraction, latency_repeats=args.repeats)
    o.branch_at, o.threshold = branch, args.latency_threshold
    res = next(build_budgets(model_path, (train.x, train.y), o, [0.5]))[1]
    row = evaluate_dynamic(res.model, test, args, _paths(res.model, test.x[:args.latency_samples], args),
                           res.latency["budget"], args.latency_threshold)
    log(f"latency target: {res.latency}")
    return {**row, "latency": res.latency}


def run_static(model_path, train, test, args, log_fn):
    from graphprune.search.finetune import recover
    model = gp.load(model_path)
    an = gp.analyse(model)
    rows, models = [], {}
    for r in _floats(args.static_ratios):
        cfg = gp.choose(an, ratio=r, criterion="l1").config()
        rec, rep = recover(model, an, {int(k): v for k, v in cfg.items()}, "l1", train, test.x, test.y,
                           epochs=args.epochs, steps=1, lr=0.01, seed=args.seed, log=log_fn)
        row = evaluate_static(rec, test, args, f"static uniform L1 {r:g}")
        row.update(ratio=r, accuracy_before=rep["accuracy_before"])
        rows.append(row)
        models[r] = rec
        log(f"static ratio {r}: acc {row['accuracy']:.4f} (before recovery {rep['accuracy_before']:.4f}), "
            f"{row['avg_ms']:.3f} ms")
    return rows, models


def pick_dynamic(orig, dyn_rows, max_drop):
    """Headline dynamic: fastest on average within max_drop of the original (else the most accurate)."""
    ok = [r for r in dyn_rows if r["accuracy"] >= orig["accuracy"] - max_drop]
    return (min(ok, key=lambda r: r["avg_ms"]) if ok else max(dyn_rows, key=lambda r: r["accuracy"])), bool(ok)


def run_optimize_static(train, test, args, orig, dyn, out: Path):
    """(b): `graphprune optimize` bounded to (c)'s accuracy on the same test subset; its delivered model
    evaluated like the others. Returns (row, model, summary of the search)."""
    import numpy as np

    from graphprune.errors import GraphpruneError
    from graphprune.search.optimize import OptimizeOptions, run_optimize
    import shutil
    shutil.rmtree(out / "optimize", ignore_errors=True)   # this tool's own folder: a fresh search every run
    np.savez(out / "train.npz", x=train.x, y=train.y)
    np.savez(out / "test.npz", x=test.x, y=test.y)
    bound = max(0.0, orig["accuracy"] - dyn["accuracy"])
    o = OptimizeOptions(model=str(args.model), data=str(out / "test.npz"), outdir=str(out / "optimize"),
                        objectives="latency,error", max_error_increase=bound, budget=args.static_budget,
                        epochs=args.epochs, recovery_slack=args.recovery_slack, recovery_tries=args.recovery_tries,
                        train_data=str(out / "train.npz"), lr=0.01, repeats=30, threads=args.threads, seed=args.seed,
                        criterion=args.static_criterion, prefer={"latency_ms": 10.0}, progress=False)
    t0 = time.time()
    try:
        s = run_optimize(o, log=lambda m: log(f"(b) {m}"))
    except GraphpruneError as exc:     # nothing meets the bound: the original is the static answer
        log(f"(b) optimize delivered nothing: {exc}")
        return {**orig, "name": "original (optimize found no pruned model at (c)'s accuracy)"}, gp.load(args.model), \
            {"error": str(exc), "bound": bound, "seconds": time.time() - t0}
    s.pop("_measured", None)
    model = gp.load(s["best_model"])
    key = s["delivered"]["key"] if s.get("delivered") else "?"
    row = evaluate_static(model, test, args, f"optimize {key}")
    row.update(key=key, recovered=bool(s.get("recovery")))
    info = {"bound": bound, "seconds": time.time() - t0, "key": key, "choice_reason": s.get("choice_reason"),
            "front": [{"key": f["key"], "accuracy": 1 - f["error"], "latency_ms": f.get("latency_ms")}
                      for f in s.get("front", [])],
            "baseline_ms": (s.get("baseline") or {}).get("latency_ms"),
            "recovery": {k: v for k, v in (s.get("recovery") or {}).items() if k in ("accuracy_before",
                                                                                       "accuracy_after")}}
    log(f"(b) optimize delivered {key}: acc {row['accuracy']:.4f}, {row['avg_ms']:.3f} ms ({info['seconds']:.0f} s)")
    return row, model, info


def tvm_rows(orig_m, static_m, dyn_m, test, args):
    """Untuned TVM timings of the three models: average over data and bench's median (longest path)."""
    out = {}
    for name, m, dynamic in (("original", orig_m, False), ("static", static_m, False), ("dynamic", dyn_m, True)):
        x = test.x[:args.tvm_samples]
        row = {"avg_ms": average_latency_tvm(m, x)}
        row["longest_ms"] = measure_latency(with_threshold(m, 2.0) if dynamic else m, backend="tvm",
                                            repeats=args.repeats // 4, cache=False).median_ms
        if dynamic:
            row["exit_ms"] = measure_latency(with_threshold(m, 0.0), backend="tvm", repeats=args.repeats // 4,
                                             cache=False).median_ms
        out[name] = row
        log(f"tvm {name}: {row}")
    return out


def _pct(v):
    return "-" if v is None else f"{100 * v:.2f}"


def _header(res, args) -> str:
    d, opt = res["dynamic"], res["static"]["optimize"]
    static = (f"`graphprune optimize` (objectives latency,error, {args.static_budget} evaluations, "
              f"{args.static_criterion} channel ranking, accuracy bound {100 * opt['bound']:.2f} pp below the "
              f"original = (c)'s accuracy, recovery {args.epochs:g} epoch(s) with --recovery-slack "
              f"{args.recovery_slack:g}; {opt['seconds']:.0f} s)")
    return (f"Model `{Path(args.model).name}`, Fashion-MNIST: trained on {args.train_samples} training images, "
            f"evaluated on {args.test_samples} test images (fixed seed {args.seed}). onnxruntime on this host "
            f"({args.threads} thread, bench's session options); average latency = mean over "
            f"{args.latency_samples} test images, each run alone at batch 1 (fastest of 5 passes per image); "
            f"longest path = the same with the gated path forced (threshold 2); bench = `measure_latency`'s median "
            f"of {args.repeats} runs on its random input (the gated path forced), as `graphprune bench`. "
            f"Shared 2-core host: load average "
            f"{res['load'][0]:.1f} at the start, {res['load'][1]:.1f} at the end, so absolute times are noisy; "
            f"all models were timed in the same run. Dynamic: branch at `{d['branch']}`"
            + (" (searched, table below)" if d.get("branch_search") else "") + f", k={args.k}, "
            f"{args.method} per-class importance, head on a {args.head_grid}x{args.head_grid} pooling grid, "
            f"{args.epochs:g} epoch(s) of fine-tuning; static (b): {static}. Produced by "
            f"`{res['command']}` in {res['seconds']:.0f} s.")


def _static_lines(res) -> list:
    opt, st = res["static"]["optimize"], res["static"]["rows"]
    lines = []
    if opt.get("front"):
        lines += ["", f"optimize's Pareto front (before recovery; latency as its search timed it, original "
                  f"{opt['baseline_ms']:.3f} ms); delivered `{opt['key']}`: {opt['choice_reason']}", "",
                  "| configuration | accuracy % | latency ms |", "|---|---|---|"]
        lines += [f"| {f['key']} | {_pct(f['accuracy'])} | {f['latency_ms']:.3f} |"
                  for f in sorted((f for f in opt["front"] if f["latency_ms"] is not None),
                                  key=lambda f: f["latency_ms"])]
        if opt.get("recovery"):
            r = opt["recovery"]
            lines.append(f"\nRecovery of the delivered model: {_pct(r.get('accuracy_before'))} % -> "
                         f"{_pct(r.get('accuracy_after'))} % (optimize's own evaluation).")
    elif opt.get("error"):
        lines += ["", f"optimize delivered no pruned model: {opt['error']}"]
    if st:
        lines += ["", "Uniform L1 (reference; recovered the same number of epochs):", "",
                  "| uniform L1 ratio | accuracy before recovery % | after % | average ms | bench ms |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['ratio']:g} | {_pct(r['accuracy_before'])} | {_pct(r['accuracy'])} | {r['avg_ms']:.3f} | "
                  f"{r['bench_ms']:.3f} |" for r in st]
    return lines


def _search_lines(res) -> list:
    s = res["dynamic"].get("branch_search")
    if not s:
        return []
    lines = ["", f"Branch search (`--branch-at auto`, budget {s['budget']:g}, threshold {s['threshold']:g}; "
             f"{s['samples']['fit']} training images fitted, {s['samples']['judged']} judged; original "
             f"{_pct(s['original_accuracy'])} % and {s['original_ms']:.3f} ms): picked `{s['branch']}`, "
             f"{s['reason']}.", "",
             "| tensor | exits % | exits right % | top-k % | proxy accuracy % | exit path ms | gated path ms | "
             "expected average ms |", "|---|---|---|---|---|---|---|---|"]
    for r in s["rows"]:
        if "skipped" in r:
            lines.append(f"| `{r['tensor']}` | skipped: {r['skipped']} | | | | | | |")
            continue
        lines.append(f"| `{r['tensor']}` | {_pct(r['exit'])} | {_pct(r['exit_correct'])} | {_pct(r['topk_recall'])} | "
                     f"{_pct(r['proxy_accuracy'])} | {r['exit_ms']:.3f} | {r['gated_ms']:.3f} | {r['avg_ms']:.3f} |")
    return lines


def markdown(res, args) -> str:
    o, s, d = res["original"], res["static"], res["dynamic"]
    dd = d["row"]
    lines = [_header(res, args), "",
             "| model | accuracy % | early exits % | average ms | longest path ms | bench ms (longest path) |",
             "|---|---|---|---|---|---|"]
    for name, r in (("(a) original", o), (f"(b) static, {s['row']['name']}", s["row"]),
                    (f"(c) dynamic, budget {dd['budget']:g}, threshold {dd['threshold']:g}", dd)):
        lines.append(f"| {name} | {_pct(r['accuracy'])} | {_pct(r['exit'])} | {r['avg_ms']:.3f} | "
                     f"{r['longest_ms']:.3f} | {r['bench_ms']:.3f} |")
    lines.append(f"\nEarly-exit path alone: {dd['exit_ms']:.3f} ms (bench {dd['bench_exit_ms']:.3f} ms). "
                 "Headline (c) is the fastest configuration on "
                 f"average within {100 * args.max_drop:g} pp of (a)" + ("" if d["within"] else
                 " (none was: it is the most accurate one)") + "; (b) is what `optimize` delivers when bounded to "
                 "(c)'s accuracy (the bound holds on optimize's evaluation after recovery; the table's accuracy is "
                 "measured again here).")
    if res.get("tvm"):
        t = res["tvm"]
        lines += ["", "TVM (untuned, this host; average over "
                  f"{args.tvm_samples} test images, longest path as `bench --backend tvm --tune-trials 0`):", "",
                  "| model | average ms | longest path ms |", "|---|---|---|"]
        lines += [f"| {k} | {t[k]['avg_ms']:.3f} | {t[k]['longest_ms']:.3f} |" for k in ("original", "static",
                                                                                          "dynamic")]
        lines.append(f"\nTVM early-exit path alone: {t['dynamic']['exit_ms']:.3f} ms.")
    lines += ["", "Per-class accuracy % (a) / (b) / (c):", "",
              "| class | (a) | (b) | (c) | (c) - (a) pp |", "|---|---|---|---|---|"]
    for c, name in enumerate(FASHION_MNIST_CLASSES):
        a, b, cc = o["per_class"][c], s["row"]["per_class"][c], dd["per_class"][c]
        lines.append(f"| {name} | {_pct(a)} | {_pct(b)} | {_pct(cc)} | {100 * (cc - a):+.1f} |")
    lines += ["", "Trade-off of the dynamic model over budget and threshold (threshold 2: never exits); the gated "
              "path's form, the model's size, and the longest path the gather form would take (timed on a probe "
              "of the same shapes):", "",
              "| budget | threshold | accuracy % | early exits % | exits correct % | average ms | longest path ms | "
              "form | MiB | gather-form longest path ms |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["dynamic"]["rows"]:
        g = r.get("gather_longest_ms")
        lines.append(f"| {r['budget']:g} | {r['threshold']:g} | {_pct(r['accuracy'])} | {_pct(r['exit'])} | "
                     f"{_pct(r['exit_correct'])} | {r['avg_ms']:.3f} | {r['longest_ms']:.3f} | "
                     f"{r['dispatch']['form']} | {r['model_mib']:.1f} | {'-' if g is None else f'{g:.3f}'} |")
    t = res.get("latency_target")
    if t:
        lat = t["latency"]
        lines += ["", f"Latency target (`--latency-budget-fraction {lat['fraction']:g}` at threshold "
                  f"{t['threshold']:g}, same branch): target {lat['target_ms']:.3f} ms ({lat['fraction']:g} x the original's "
                  f"{lat['original_ms']:.3f} ms) -> budget {lat['budget']:.4f} after {len(lat['steps'])} probe "
                  f"measurements; the delivered model's longest path measured {lat['measured_ms']:.3f} ms "
                  f"({'met' if lat['met'] else 'NOT met'}; bench-style timing over the test images: "
                  f"{t['longest_ms']:.3f} ms); accuracy {_pct(t['accuracy'])} %, {_pct(t['exit'])} % exits, "
                  f"average {t['avg_ms']:.3f} ms."]
    return "\n".join(lines + _search_lines(res) + _static_lines(res)) + "\n"


def plot(res, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = res["dynamic"]["rows"]
    for b in sorted({r["budget"] for r in rows}):
        rs = [r for r in rows if r["budget"] == b]
        ax.plot([r["avg_ms"] for r in rs], [100 * r["accuracy"] for r in rs], "o-", label=f"dynamic, budget {b:g}")
        ax.plot([rs[0]["longest_ms"]], [100 * min(r["accuracy"] for r in rs)], "x", color=ax.lines[-1].get_color())
    front = res["static"]["optimize"].get("front") or []
    if front:
        front = [f for f in front if f["latency_ms"] is not None]
        ax.plot([f["latency_ms"] for f in front], [100 * f["accuracy"] for f in front], ".", color="silver",
                label="optimize front, before recovery (search timings)")
    st = res["static"]["row"]
    ax.plot([st["avg_ms"]], [100 * st["accuracy"]], "s", color="gray", markersize=9, label="(b) optimize, delivered")
    if res["static"]["rows"]:
        u = res["static"]["rows"]
        ax.plot([r["avg_ms"] for r in u], [100 * r["accuracy"] for r in u], "^--", color="tan",
                label="uniform L1 (reference)")
    o = res["original"]
    ax.plot([o["avg_ms"]], [100 * o["accuracy"]], "k*", markersize=12, label="original")
    lo = min([100 * r["accuracy"] for r in rows + res["static"]["rows"]] + [100 * st["accuracy"]]) - 2
    ax.set_ylim(bottom=max(lo, 0))
    ax.set_xlabel("average latency over the test images, ms (x: longest path of that budget)")
    ax.set_ylabel("test accuracy %")
    ax.set_title(f"{res['model']}: dynamic pruning trade-off (threshold varies along each line)", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.render:     # the tables again from a finished run's JSON, with that run's options
        res = json.loads(Path(args.render).read_text())
        run_args = _parser().parse_args(shlex.split(res["command"].split("tools/bench_dynamic.py", 1)[1]))
        return render(res, run_args, Path(args.render).parent, Path(run_args.model).stem + run_args.tag)
    import torch
    torch.set_num_threads(2)
    t0, load0 = time.time(), os.getloadavg()[0]
    stem = Path(args.model).stem + args.tag
    out = Path(args.out or f"out/bench_dynamic_{stem}")
    out.mkdir(parents=True, exist_ok=True)
    train = load_fashion_mnist("train").subsample(args.train_samples, args.seed)
    test = load_fashion_mnist("test").subsample(args.test_samples, args.seed)
    orig_m = gp.load(args.model)
    orig = evaluate_static(orig_m, test, args, "original")
    log(f"original: acc {orig['accuracy']:.4f}, avg {orig['avg_ms']:.3f} ms, bench {orig['bench_ms']:.3f} ms")
    dyn_rows, dyn_models, info = run_dynamic(args.model, train, test, args)
    dyn, within = pick_dynamic(orig, dyn_rows, args.max_drop)
    dyn_model = with_threshold(dyn_models[dyn["budget"]], dyn["threshold"])
    target = run_latency_target(args.model, train, test, args, info["branch"]) if args.latency_fraction else None
    st, st_model, opt_info = run_optimize_static(train, test, args, orig, dyn, out)
    st_rows = run_static(args.model, train, test, args, lambda m: log(f"(uniform) {m}"))[0] \
        if _floats(args.static_ratios) else []
    res = {"model": Path(args.model).name, "original": orig,
           "dynamic": {"rows": dyn_rows, "row": dyn, "within": within, **info},
           "static": {"rows": st_rows, "row": st, "optimize": opt_info}, "latency_target": target,
           "command": run_prefix() + ".venv/bin/python tools/bench_dynamic.py " + shlex.join(argv or sys.argv[1:])}
    if args.tvm:
        res["tvm"] = tvm_rows(orig_m, st_model, dyn_model, test, args)
    res["seconds"], res["load"] = time.time() - t0, (load0, os.getloadavg()[0])
    gp.save(dyn_model, str(out / "dynamic.onnx"))
    (out / "bench_dynamic.json").write_text(json.dumps(res, indent=1, default=float))
    return render(res, args, out, stem)


def render(res, args, out: Path, stem: str) -> int:
    """The markdown, the plot and the docs section from a result (also: --render OUT/bench_dynamic.json)."""
    md = markdown(res, args)
    if plot(res, out / "bench_dynamic.png"):
        md += f"\n![trade-off](bench_dynamic_{stem}.png)\n"
        if not args.no_docs:
            (ROOT / "docs" / f"bench_dynamic_{stem}.png").write_bytes(
                (out / "bench_dynamic.png").read_bytes())
    (out / "bench_dynamic.md").write_text(md)
    if not args.no_docs:
        from _docs import update_section
        update_section(ROOT / "docs" / "dynamic.md", f"bench_dynamic_{stem}", md,
                       title="# Dynamic pruning\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
