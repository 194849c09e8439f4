#!/usr/bin/env python
"""The same `graphprune optimize` search timed by onnxruntime and by tuned TVM, fronts side by side.

Runs optimize twice on one model and one validation set with the same options and seed: once
with `--backend ort`, once with `--backend tvm` and a tuning budget (`--tune-time`, optionally
`--tune-trials`). The TVM run goes through the whole tuned pipeline: its first measurement (the
original) tunes the target's base once (NHWC + pre-packed weights, FLOP-weighted trial caps),
every later candidate replays the base's schedules. The TVM run gets its own fresh latency and
tuning cache (OUT/cache), so the base is this model's, tuned in this run, never another model's.
No recovery (fine-tuning): the fronts are the searches' own, before recovery.

    .venv/bin/python tools/make_demo_data.py -o out/bench_data --train 0
    nice -n 5 .venv/bin/python tools/bench_optimize_tvm.py --val out/bench_data/val.npz \
        --budget 20 --tune-time 5m --samples 1000

Writes OUT/bench_optimize_tvm.json, .md, .png, the two optimize folders (OUT/ort, OUT/tvm), and the
committed copies docs/bench_optimize_tvm.md, .png. Both runtimes on --threads threads (onnxruntime's
intra-op threads; TVM_NUM_THREADS for TVM, set here before TVM loads, and inherited by the tuner's
runner processes). What the doc reports: both fronts, the original's latency in each runtime, how
the base was tuned, how many candidates replayed it and the seconds per candidate, and how far
the two runtimes agree on the order of the configurations both measured (Spearman).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "examples/fashion_mnist_resnet.onnx"


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--val", required=True, help="validation .npz (search and reported accuracy)")
    ap.add_argument("-o", "--out", default="out/bench_optimize_tvm")
    ap.add_argument("--budget", type=int, default=20, help="optimize --budget of each run")
    ap.add_argument("--tune-time", default="5m", help="optimize --tune-time of the TVM run")
    ap.add_argument("--tune-trials", type=int, default=0, help="optimize --tune-trials of the TVM run (0: time only)")
    ap.add_argument("--max-drop", type=float, default=0.01, help="optimize --max-error-increase")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--samples", type=int, default=None, help="optimize --samples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sensitivity-ratios", default="0.25,0.5,0.75", help="optimize --sensitivity-ratios")
    ap.add_argument("--holdout", type=int, default=6, help="optimize --holdout")
    ap.add_argument("--reuse-base", metavar="DIR",
                    help="a tuning folder (OUT/cache/tuning of an earlier run with the same model and threads) "
                         "copied in before the TVM run: its base is replayed instead of tuned again")
    ap.add_argument("--no-docs", action="store_true", help="do not write docs/bench_optimize_tvm.*")
    ap.add_argument("--render", action="store_true",
                    help="measure nothing: write the docs again from OUT/bench_optimize_tvm.json and .png")
    return ap


def _run(args, backend: str, out: Path) -> dict:
    from graphprune.search.optimize import OptimizeOptions, run_optimize
    extra = dict(tune_time=args.tune_time, tune_trials=args.tune_trials) if backend == "tvm" else {}
    o = OptimizeOptions(model=args.model, data=args.val, outdir=str(out / backend), backend=backend,
                        threads=args.threads if backend == "ort" else None, repeats=args.repeats,
                        budget=args.budget, max_error_increase=args.max_drop, samples=args.samples, seed=args.seed,
                        progress=backend == "tvm", holdout=args.holdout,
                        sensitivity_ratios=tuple(float(v) for v in args.sensitivity_ratios.split(",")), **extra)
    t0 = time.time()
    s = run_optimize(o, log=lambda m: log(f"({backend}) {m}"))
    s.pop("_measured", None)
    s["wall_s"] = time.time() - t0
    recs = [json.loads(line) for line in (out / backend / "journal.jsonl").read_text().splitlines()[1:]]
    s["records"] = [r for r in recs if r.get("type") == "measured" and r.get("latency_ms") is not None]
    return s


def _spearman(a, b) -> float:
    ra, rb = (np.argsort(np.argsort(v)).astype(float) for v in (a, b))
    return float(np.corrcoef(ra, rb)[0, 1])


def _replay_stats(recs: list[dict]) -> dict:
    """How the TVM run's latencies were made: tuned once (the first record), replayed after; the
    seconds per candidate from the journal's timestamps (rewrite + accuracy + compile + timing)."""
    from graphprune.targets import get_target
    from graphprune.targets.tuning.records import database_dir
    runs = database_dir(get_target("x86")) / "base" / "tuning_runs.jsonl"
    tuned = [r for r in recs if r["latency_tuning"].startswith("tuned ")]
    later = recs[1:]
    ts = [r["t"] for r in recs]
    gaps = np.diff(ts) if len(ts) > 1 else np.array([])
    untuned = [r for r in later if "left untuned" in r["latency_tuning"]]
    return {"tuning": recs[0]["latency_tuning"] if recs else "", "tuned_runs": len(tuned),
            "base_runs": [json.loads(line) for line in runs.read_text().splitlines()] if runs.exists() else [],
            "replayed_candidates": len([r for r in later if "replayed from base traces" in r["latency_tuning"]]),
            "candidates_with_untuned_tasks": len(untuned), "measured": len(recs),
            "seconds_per_candidate_median": float(np.median(gaps)) if len(gaps) else None}


def _front_rows(s: dict, max_drop: float) -> list[dict]:
    """The front, fastest first; `within`: at most max_drop below the original's accuracy."""
    floor = 1 - s["baseline"]["error"] - max_drop - 1e-12
    return sorted(({"key": r["key"], "accuracy": 1 - r["error"], "latency_ms": r["latency_ms"], "macs": r["macs"],
                    "within": 1 - r["error"] >= floor} for r in s["front"]), key=lambda r: r["latency_ms"])


def _result(args, runs: dict, loads: tuple, t0: float, command: str) -> dict:
    ort_lat = {r["key"]: r["latency_ms"] for r in runs["ort"]["records"]}
    tvm_lat = {r["key"]: r["latency_ms"] for r in runs["tvm"]["records"]}
    common = sorted(set(ort_lat) & set(tvm_lat))
    res = {"model": args.model, "val": args.val, "samples": args.samples, "budget": args.budget,
           "tune_time": args.tune_time, "tune_trials": args.tune_trials, "threads": args.threads,
           "reuse_base": args.reuse_base, "sensitivity_ratios": args.sensitivity_ratios, "holdout": args.holdout,
           "repeats": args.repeats, "max_drop": args.max_drop, "load_before": loads[0], "load_after": loads[1],
           "date": time.strftime("%Y-%m-%d"), "wall_min": (time.time() - t0) / 60, "command": command,
           "cpus": os.cpu_count(), "common_configs": len(common),
           "spearman_common": _spearman([ort_lat[k] for k in common], [tvm_lat[k] for k in common])
           if len(common) > 2 else None, "replay": _replay_stats(runs["tvm"]["records"]), "runs": {}}
    for b, s in runs.items():
        res["runs"][b] = {"label": s["latency_label"], "original_ms": s["baseline"]["latency_ms"],
                          "original_accuracy": 1 - s["baseline"]["error"], "front": _front_rows(s, args.max_drop),
                          "chosen": s["chosen"]["key"], "chosen_ms": s["chosen"]["latency_ms"],
                          "chosen_accuracy": 1 - s["chosen"]["error"], "final": s["final"],
                          "counts": s["counts"], "wall_s": s["wall_s"]}
    return res


def _markdown(r: dict) -> str:
    rp, o, t = r["replay"], r["runs"]["ort"], r["runs"]["tvm"]
    budget = f"--tune-time {r['tune_time']}" + (f" --tune-trials {r['tune_trials']}" if r["tune_trials"] else "")
    L = [f"Produced by `.venv/bin/python {r['command']}` on {r['date']} in {r['wall_min']:.0f} min: "
         f"{r['cpus']} CPUs, load average {r['load_before']:.1f} before and {r['load_after']:.1f} after (the host "
         f"is shared with other jobs); model {r['model']}, {r['samples'] or 'all'} validation samples, "
         f"optimize --budget {r['budget']} --max-error-increase {r['max_drop']} --repeats {r['repeats']}, no "
         f"recovery; both runtimes on {r['threads']} thread(s). TVM run: {budget}, "
         + ("fresh cache." if not r.get("reuse_base") else "the base tuned by an earlier run of this tool (below), "
            "copied in and replayed, not tuned again."), "",
         "| backend | original ms | chosen | chosen acc. % | chosen ms (search) | final speed-up (side by side) "
         "| front size | measured | wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for b, x in (("ort", o), ("tvm", t)):
        f = x["final"] or {}
        sp = f"{f['speedup']:.2f}x ({f.get('verdict', '')})" if f.get("speedup") else "-"
        L.append(f"| {b} | {x['original_ms']:.3f} | {x['chosen']} | {100 * x['chosen_accuracy']:.2f} | "
                 f"{x['chosen_ms']:.3f} | {sp} | {len(x['front'])} | {x['counts']['measured_this_run']} | "
                 f"{x['wall_s']:.0f} |")
    base = "; ".join(f"{b['trials']} trials over {b['tasks']} tasks in {b['seconds']:.0f} s (budget "
                     f"{b['trials_budget']} trials or {b['time_limit_s']:g} s, {b['pipeline']}, {b['time']})"
                     for b in rp.get("base_runs", []))
    L += ["", f"TVM base tuning runs in this cache: {base or 'none'}. The original's build: {rp['tuning']}.", "",
          (f"In this run the original's measurement tuned the base {rp['tuned_runs']} time(s); " if rp["tuned_runs"]
           else "In this run the base was not tuned again; ")
          + f"{rp['replayed_candidates']} of the other {rp['measured'] - 1} candidates replayed its traces "
          f"({rp['candidates_with_untuned_tasks']} with some task left untuned), "
          f"median {rp['seconds_per_candidate_median'] or 0:.1f} s per candidate (rewrite, accuracy, TVM import, "
          "replay, compile, timing).", "",
          f"Order agreement: on the {r['common_configs']} configurations both runs measured (original, "
          "sensitivity sweep, hold-out, uniform and any common search candidates), Spearman's rank correlation of "
          "the two runtimes' latencies is "
          + (f"{r['spearman_common']:.2f}." if r["spearman_common"] is not None else "not computable."), ""]
    for b, x in (("ort", o), ("tvm", t)):
        L += [f"Front, `--backend {b}` ({x['label']}); original {100 * x['original_accuracy']:.2f} %, "
              f"{x['original_ms']:.3f} ms:", "",
              f"| configuration | accuracy % | within {100 * r['max_drop']:g} pp | latency ms | vs original | M MACs |",
              "|---|---|---|---|---|---|"]
        L += [f"| {row['key']} | {100 * row['accuracy']:.2f} | {'yes' if row['within'] else 'no'} | "
              f"{row['latency_ms']:.3f} | {x['original_ms'] / row['latency_ms']:.2f}x | {row['macs'] / 1e6:.2f} |"
              for row in x["front"]]
        L.append("")
    return "\n".join(L)


def _plot(path: Path, r: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, (b, col) in zip(axes, (("ort", "tab:orange"), ("tvm", "tab:blue"))):
        x = r["runs"][b]
        fr = x["front"]
        ax.plot([f["latency_ms"] for f in fr], [100 * f["accuracy"] for f in fr], "o-", c=col, ms=4,
                label=f"front ({len(fr)})")
        ax.scatter([x["original_ms"]], [100 * x["original_accuracy"]], marker="*", s=140, c="k", zorder=5,
                   label=f"original {x['original_ms']:.3f} ms")
        ax.set_title(f"--backend {b}", fontsize=10)
        ax.set_xlabel("latency [ms] (search timings)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("validation accuracy [%] (before recovery)")
    fig.suptitle(f"optimize on {r['model']}: onnxruntime vs tuned TVM ({r['threads']} thread(s))", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    command = " ".join(["tools/bench_optimize_tvm.py"] + [shlex.quote(a) for a in argv])
    out = Path(args.out)
    if args.render:   # the text again from the last run's numbers (e.g. after a wording fix)
        md = _markdown(json.loads((out / "bench_optimize_tvm.json").read_text()))
        _write_doc(md, out / "bench_optimize_tvm.png")
        print(md)
        return 0
    if out.exists():
        shutil.rmtree(out)   # fresh journals and a fresh tuning base: the run tunes once, by itself
    out.mkdir(parents=True)
    os.environ["GRAPHPRUNE_CACHE"] = str((out / "cache").resolve())
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    if args.reuse_base:
        shutil.copytree(args.reuse_base, out / "cache" / "tuning")
    t0, load0 = time.time(), os.getloadavg()[0]
    runs = {b: _run(args, b, out) for b in ("ort", "tvm")}
    res = _result(args, runs, (load0, os.getloadavg()[0]), t0, command)
    (out / "bench_optimize_tvm.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    md = _markdown(res)
    (out / "bench_optimize_tvm.md").write_text(md)
    _plot(out / "bench_optimize_tvm.png", res)
    if not args.no_docs:
        _write_doc(md, out / "bench_optimize_tvm.png")
    print(md)
    return 0


def _write_doc(md: str, png: Path) -> None:
    """docs/bench_optimize_tvm.md (the measured section between markers) and its plot."""
    doc = ROOT / "docs" / "bench_optimize_tvm.md"
    begin, end = "<!-- bench_optimize_tvm:begin -->", "<!-- bench_optimize_tvm:end -->"
    text = doc.read_text() if doc.exists() else f"# optimize: onnxruntime vs tuned TVM\n\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    doc.write_text(f"{head}{begin}\n{md}\n![fronts](bench_optimize_tvm.png)\n{end}{rest.split(end, 1)[1]}")
    shutil.copyfile(png, doc.with_suffix(".png"))


if __name__ == "__main__":
    sys.exit(main())
