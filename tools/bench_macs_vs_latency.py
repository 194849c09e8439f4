#!/usr/bin/env python
"""Measured latency vs MACs as the search objective, on a depthwise network where they disagree.

On a MobileNetV2-style network, onnxruntime's latency is not proportional to MACs: the
depthwise 3x3 convs hold few MACs but much of the time (memory-bound), the 1x1 convs at
low resolution the reverse. This tool trains such a network on Fashion-MNIST upsampled to
--size (tools/_mobilenet_fmnist.py, cached under .cache/), then, for each of --seeds, runs
tools/bench_optimize.py's three methods at matched accuracy after the same recovery:

  (a) `graphprune optimize`, XAI importance (LRP) + MEASURED latency on x86 (onnxruntime);
  (b) uniform L1 at the largest ratio within the accuracy budget after recovery;
  (c) the same search as (a) with MACs in place of latency;

and reports each one's latency speed-up over the original (every delivered model timed again
in interleaved rounds), the ratios (a)/(c) and (a)/(b) per seed and their spread, and a
per-layer breakdown (onnxruntime's profiler: time per layer kind against MACs per layer
kind) that explains the disagreement, plus a uniform sweep timed with channel counts
rounded to 8 (the x86 target's channel step) and unrounded.

    .venv/bin/python tools/bench_macs_vs_latency.py --seeds 0,1,2

Writes OUT/seed<N>/ (each seed's optimize outputs and bench_optimize.json), OUT/result.json,
and the committed docs/bench_macs_vs_latency.md (the measured section between markers) and
docs/bench_macs_vs_latency.png. OUT defaults to out/bench_macs_vs_latency.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import graphprune as gp  # noqa: E402
import _mobilenet_fmnist as mnv2  # noqa: E402
from _docs import run_prefix, update_section  # noqa: E402
from bench_optimize import (_final_latencies, _result, _scored_model, _searches, log, uniform_l1,  # noqa: E402
                            uniform_l1_matched)

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "bench_macs_vs_latency.md"
TITLE = "# Measured latency vs MACs as the search objective (MobileNetV2-style, x86)\n"
KINDS = ("stem", "expand", "dw", "project", "head", "fc")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out", default="out/bench_macs_vs_latency")
    ap.add_argument("--seeds", default="0,1,2", help="search/importance/recovery seeds (the trained model is one)")
    ap.add_argument("--size", type=int, default=64, help="input size the 28x28 images are upsampled to")
    ap.add_argument("--model-train-samples", type=int, default=30000)
    ap.add_argument("--model-epochs", type=int, default=4)
    ap.add_argument("--val-samples", type=int, default=500)
    ap.add_argument("--train-samples", type=int, default=2000, help="fine-tuning (recovery) samples")
    ap.add_argument("--target", default="x86")
    ap.add_argument("--method", default="lrp")
    ap.add_argument("--importance-samples", type=int, default=64)
    ap.add_argument("--budget", type=int, default=60)
    ap.add_argument("--max-drop", type=float, default=0.01)
    ap.add_argument("--recovery-slack", type=float, default=0.08)
    ap.add_argument("--recovery-tries", type=int, default=2)
    ap.add_argument("--epochs", type=float, default=2.0, help="recovery epochs (on --train-samples)")
    ap.add_argument("--finetune-steps", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--final-repeats", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prefer-weight", type=float, default=10.0)
    ap.add_argument("--resume", action="store_true",
                    help="reuse the seeds that finished in an earlier run (OUT/seed<N>/bench_optimize.json) and "
                         "resume the others' searches from their journals")
    ap.add_argument("--channel-step", type=int, default=None,
                    help="the searches' channel grid (default: the target's, 8 on x86); 1 lets them choose "
                         "channel counts onnxruntime runs slowly, which only measured latency sees")
    ap.add_argument("--cache-dir", default=str(mnv2.CACHE), help="where the trained model is cached")
    ap.add_argument("--from-json", action="store_true",
                    help="measure nothing: rewrite the docs from OUT/result.json (a change of presentation)")
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/ (a smoke run)")
    return ap


def one_seed(model, an, val, train, rows, base_err, args, seed: int, paths) -> dict:
    """bench_optimize's (a), (b), (c) for one seed, in OUT/seed<N>."""
    import onnx
    a = argparse.Namespace(**vars(args))
    a.seed, a.val, a.train, a.model = seed, str(paths[0]), str(paths[1]), str(args.model_path)
    out = Path(args.out) / f"seed{seed}"
    done = out / "bench_optimize.json"
    if args.resume and done.exists() and (out / "final_c.onnx").exists():   # this seed finished in an earlier run
        log(f"seed {seed}: reusing {done}")
        return json.loads(done.read_text())
    if not args.resume:
        for sub in ("a", "c"):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    runs = _searches(_scored_model(model, train, a, out), a, out)
    ts = time.time()
    best, b_model, b_rec, b_tried = uniform_l1_matched(model, an, rows, base_err, a, train, val)
    b_wall = time.time() - ts
    finals = {"original": model, "a": onnx.load(out / "a" / "best.onnx"), "b": b_model,
              "c": onnx.load(out / "c" / "best.onnx")}
    lat, med = _final_latencies(finals, a)
    res = _result(a, runs, best, b_rec, b_tried, b_wall, rows, finals, lat, med, base_err, val, train, t0, None)
    res["seed"] = seed
    res["a_front"] = runs["a"]["front"]
    (out / "bench_optimize.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    for k in ("a", "b", "c"):
        gp.save(finals[k], out / f"final_{k}.onnx")
    log(f"seed {seed}: speed-up a {res['speedup']['a']:.2f}x b {res['speedup']['b']:.2f}x "
        f"c {res['speedup']['c']:.2f}x; (a)/(c) {res['ratio_a_over_c']:.3f} (a)/(b) {res['ratio_a_over_b']:.3f}")
    return res


def kind_of(name: str) -> str:
    for k in KINDS:
        if f"/{k}/" in name or name.startswith(f"/{k}/"):
            return k
    return "other"


def node_macs(model) -> dict[str, int]:
    """MACs of every Conv/Gemm node by name (static shapes at batch 1)."""
    import math

    import onnx
    from graphprune.inputs import concrete_shapes, with_static_inputs
    m = onnx.shape_inference.infer_shapes(with_static_inputs(model, concrete_shapes(model, None, batch=1)))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(m.graph.value_info) + list(m.graph.output)}
    inits = {t.name: list(t.dims) for t in m.graph.initializer}
    out = {}
    for n in m.graph.node:
        if n.op_type in ("Conv", "Gemm") and n.output[0] in shapes and n.input[1] in inits:
            w = inits[n.input[1]]
            out[n.name] = math.prod(shapes[n.output[0]]) * (math.prod(w[1:]) if n.op_type == "Conv" else w[1])
    return out


def profile_kinds(model, runs: int = 300, threads: int = 1) -> dict[str, float]:
    """Mean microseconds per run per layer kind, from onnxruntime's profiler (graph optimisations on,
    as timed: fused Conv+BN+Clip nodes keep the conv's name; layout reorders count as "other")."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.enable_profiling = True
    so.profile_file_prefix = f"/tmp/bench_macs_prof_{os.getpid()}"
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: np.random.default_rng(0).standard_normal(
        [1, *[d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim][1:]]).astype(np.float32)}
    for _ in range(20):
        sess.run(None, feed)
    for _ in range(runs):
        sess.run(None, feed)
    prof = sess.end_profiling()
    events = json.loads(Path(prof).read_text())
    os.unlink(prof)
    tot: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            k = kind_of(e["name"][:-len("_kernel_time")])
            tot[k] = tot.get(k, 0.0) + e["dur"]
    return {k: v / (runs + 20) for k, v in tot.items()}


def breakdown(models: dict, threads: int) -> dict:
    """Per layer kind: MACs and profiled time of each model (original, (a), (c) of the first seed)."""
    out = {}
    for name, m in models.items():
        macs: dict[str, int] = {}
        for n, v in node_macs(m).items():
            macs[kind_of(n)] = macs.get(kind_of(n), 0) + v
        out[name] = {"macs": macs, "us": profile_kinds(m, threads=threads)}
    return out


def alignment_sweep(model, an, args) -> list[dict]:
    """Uniform L1 at a few ratios with channel counts rounded to the target's step (8) and not
    rounded (1): MACs and latency, timed interleaved, to show what ORT's kernels make of both."""
    from graphprune.targets import get_target, measure_latency
    step = get_target(args.target).channel_step
    models = {("original", 0.0, 1): model}
    for r in (0.25, 0.4, 0.55):
        for rt in (step, 1):
            models[(f"uniform {r}", r, rt)] = gp.prune(model, gp.choose(an, ratio=r, criterion="l1", round_to=rt))
    lat = {k: [] for k in models}
    for _ in range(args.rounds):
        for k, m in models.items():
            lat[k].append(measure_latency(m, target=args.target, repeats=args.final_repeats, threads=args.threads,
                                          cache=False).median_ms)
    return [{"name": k[0], "ratio": k[1], "round_to": k[2], "macs": gp.count(m).macs,
             "latency_ms": float(np.median(lat[k]))} for k, m in models.items()]


def rank_corr(cands: list[dict]) -> float | None:
    """Spearman's rank correlation of MACs and measured latency over the candidates (1: MACs rank them
    exactly as latency does, so a MAC-driven search picks what a latency-driven one picks)."""
    if len(cands) < 3:
        return None
    r = [np.argsort(np.argsort([c[k] for c in cands])) for k in ("macs", "latency_ms")]
    return float(np.corrcoef(r[0], r[1])[0, 1])


def _spread(v) -> str:
    v = sorted(v)
    return f"{v[0]:.2f} / {float(np.median(v)):.2f} / {v[-1]:.2f}"


def summarise(per_seed: list[dict]) -> dict:
    sp = {k: [r["speedup"][k] for r in per_seed] for k in ("a", "b", "c")}
    ac = [r["ratio_a_over_c"] for r in per_seed]
    ab = [r["ratio_a_over_b"] for r in per_seed]
    return {"speedup": sp, "a_over_c": ac, "a_over_b": ab,
            "a_over_c_mean_sd": [float(np.mean(ac)), float(np.std(ac, ddof=1)) if len(ac) > 1 else 0.0],
            "a_over_b_mean_sd": [float(np.mean(ab)), float(np.std(ab, ddof=1)) if len(ab) > 1 else 0.0]}


def _seed_rows(per_seed) -> list[str]:
    L = ["| seed | (a) config | (a) acc. % | (a) speed-up | (b) ratio | (b) acc. % | (b) speed-up | (c) config | "
         "(c) acc. % | (c) speed-up | (a)/(c) | (a)/(b) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in per_seed:
        acc, sp = r["accuracy_final"], r["speedup"]
        b = "none (unpruned)" if r["b_ratio"] is None else r["b_ratio"]
        L.append(f"| {r['seed']} | {r['a_config']} | {100 * acc['a']:.2f} | {sp['a']:.2f}x | {b} | {100 * acc['b']:.2f} | "
                 f"{sp['b']:.2f}x | {r['c_config']} | {100 * acc['c']:.2f} | {sp['c']:.2f}x | "
                 f"{r['ratio_a_over_c']:.3f} | {r['ratio_a_over_b']:.3f} |")
    return L


def _breakdown_rows(bd: dict) -> list[str]:
    o = bd["original"]
    tm, tu = sum(o["macs"].values()), sum(o["us"].values())
    L = ["| layer kind | original M MACs | MACs % | original us | time % | us per M MACs | (a) M MACs | (a) us | "
         "(c) M MACs | (c) us |", "|---|---|---|---|---|---|---|---|---|---|"]
    for k in (*KINDS, "other"):
        m, u = o["macs"].get(k, 0), o["us"].get(k, 0.0)
        cells = [f"{bd[n]['macs'].get(k, 0) / 1e6:.3f} | {bd[n]['us'].get(k, 0.0):.1f}" for n in ("a", "c")]
        per = f"{u / (m / 1e6):.1f}" if m else "-"
        L.append(f"| {k} | {m / 1e6:.3f} | {100 * m / tm:.1f} | {u:.1f} | {100 * u / tu:.1f} | {per} | "
                 + " | ".join(cells) + " |")
    L.append(f"| all | {tm / 1e6:.3f} | 100 | {tu:.1f} | 100 | {tu / (tm / 1e6):.1f} | "
             + " | ".join(f"{sum(bd[n]['macs'].values()) / 1e6:.3f} | {sum(bd[n]['us'].values()):.1f}"
                          for n in ("a", "c")) + " |")
    return L


def _sweep_rows(sweep) -> list[str]:
    o = sweep[0]
    L = ["| model | channels rounded to | M MACs | fewer MACs | latency ms | speed-up |", "|---|---|---|---|---|---|"]
    for r in sweep:
        L.append(f"| {r['name']} | {r['round_to'] if r['ratio'] else '-'} | {r['macs'] / 1e6:.3f} | "
                 f"{o['macs'] / r['macs']:.2f}x | {r['latency_ms']:.3f} | {o['latency_ms'] / r['latency_ms']:.2f}x |")
    return L


def markdown(res: dict) -> str:
    ps, s = res["per_seed"], res["summary"]
    r0 = ps[0]
    macs0 = {k: [r["macs"][k] for r in ps] for k in ("original", "a", "b", "c")}
    acc = {k: [r["accuracy_final"][k] for r in ps] for k in ("original", "a", "b", "c")}
    names = {"a": f"(a) XAI ({r0['importance_method']}) + measured latency", "b": "(b) uniform L1",
             "c": f"(c) XAI ({r0['importance_method']}) + MACs"}
    L = ["## Speed-up at matched accuracy, over seeds " + ", ".join(str(r["seed"]) for r in ps), "",
         "| method | speed-up min / median / max | accuracy after recovery % min / median / max | "
         "fewer MACs min / median / max |", "|---|---|---|---|",
         f"| original ({res['model_desc']}) | 1.00x | {100 * acc['original'][0]:.2f} | 1.00x |"]
    for k in ("a", "b", "c"):
        L.append(f"| {names[k]} | {_spread(s['speedup'][k])}x | {_spread([100 * v for v in acc[k]])} | "
                 f"{_spread([o / m for o, m in zip(macs0['original'], macs0[k])])}x |")
    mc, sc = s["a_over_c_mean_sd"]
    mb, sb = s["a_over_b_mean_sd"]
    L += ["", f"**(a)/(c)** (measured latency over MACs as the objective): {_spread(s['a_over_c'])} "
          f"(min / median / max; mean {mc:.3f} ± {sc:.3f} sd); goal >= 1.1.  ",
          f"**(a)/(b)** (over uniform L1): {_spread(s['a_over_b'])} (mean {mb:.3f} ± {sb:.3f} sd); goal >= 1.3.", "",
          "## Per seed", "", *_seed_rows(ps), "",
          *([f"Over the {len(res['a_candidates'])} candidates seed {r0['seed']}'s (a) measured, the rank "
             f"correlation (Spearman) of MACs and measured latency is {res['rank_corr']:.3f}.", ""]
            if res.get("rank_corr") is not None else []),
          f"## Where the time goes: onnxruntime profile per layer kind (original, and seed {r0['seed']}'s (a) and (c))",
          "", *_breakdown_rows(res["breakdown"]), "",
          "Kinds: `stem` 3x3 conv; per inverted-residual block `expand` 1x1, `dw` depthwise 3x3, `project` 1x1; "
          "`head` 1x1; `fc` the classifier; `other`: residual adds, global pooling, layout reorders "
          "onnxruntime inserts. Profiled with graph optimisations on (BN and Clip fused into the convs), "
          f"{res['threads']} thread, batch 1; profiler overhead makes the sum larger than the timed latency.", "",
          "## Uniform sweep: MACs against latency, channel counts rounded to 8 and not", "",
          *_sweep_rows(res["sweep"]), "",
          "## Protocol and host", "",
          f"Latency: {r0['latency_label']}; each delivered model and the original timed again at the end in "
          f"{len(r0['latency_ms_rounds']['a'])} interleaved rounds ({res['final_repeats']} runs each), median. "
          f"Accuracy on {r0['validation_samples']} Fashion-MNIST test images (upsampled) the fine-tuning never saw; "
          f"matched: each method delivers its fastest candidate within {100 * r0['max_drop']:.0f} pp of the "
          f"original after the same recovery ({r0['finetune_steps']} steps, {r0['epochs']} epoch(s) in all on "
          f"{r0['train_samples']} training images, lr {res['lr']}); candidates may lose "
          f"{100 * (r0['max_drop'] + r0['recovery_slack']):.0f} pp before recovery, at most "
          f"{r0['recovery_tries']} are recovered per method. Search budget {r0['budget']} candidates per search, "
          f"importance {r0['importance_method']} on {res['importance_samples']} training images. "
          f"Matched within the budget: {json.dumps({r['seed']: r['matched'] for r in ps})}.", "",
          f"Host: {res['host']}; load average (1/5/15 min) at start {res['load_start']}, at end {res['load_end']}"
          f"{'; run under `' + res['nice'].strip() + '`' if res.get('nice') else ''}.", "",
          f"Wall time: {res['wall_s'] / 60:.1f} min (model training {res['train_wall_s']:.0f} s, "
          "cached afterwards).  ",
          f"Produced by: `{res.get('nice', '')}.venv/bin/python {res['command']}`", ""]
    return "\n".join(L)


def plot(path: Path, res: dict) -> None:
    """Left: latency against MACs of every candidate the first seed's (a) measured, and every
    seed's delivered models. Right: share of MACs vs share of time per layer kind (original)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 5))
    cand = res.get("a_candidates", [])
    if cand:
        ax.scatter([c["macs"] / 1e6 for c in cand], [c["latency_ms"] for c in cand], s=10, c="0.7",
                   label=f"(a) seed {res['per_seed'][0]['seed']}: every measured candidate")
    style = {"a": ("D", "tab:blue", "(a) latency search"), "b": ("s", "tab:orange", "(b) uniform L1"),
             "c": ("^", "tab:green", "(c) MACs search")}
    for k, (mk, col, lab) in style.items():
        ax.scatter([r["macs"][k] / 1e6 for r in res["per_seed"]],
                   [r["latency_ms_median_of_rounds"][k] for r in res["per_seed"]], marker=mk, s=80, c=col,
                   zorder=5, label=f"{lab}, delivered (one per seed)")
    r0 = res["per_seed"][0]
    ax.scatter([r0["macs"]["original"] / 1e6], [r0["latency_ms_median_of_rounds"]["original"]], marker="*", s=160,
               c="k", zorder=6, label="original")
    ax.set_xlabel("M MACs")
    ax.set_ylabel("latency [ms] (x86, onnxruntime, 1 thread)")
    ax.set_title(f"latency vs MACs of the search's candidates (rank correlation {res['rank_corr']:.2f})"
                 if res.get("rank_corr") is not None else "latency vs MACs", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    o = res["breakdown"]["original"]
    kinds = [k for k in (*KINDS, "other") if o["macs"].get(k) or o["us"].get(k)]
    tm, tu = sum(o["macs"].values()), sum(o["us"].values())
    xs = np.arange(len(kinds))
    bx.bar(xs - 0.2, [100 * o["macs"].get(k, 0) / tm for k in kinds], 0.4, label="share of MACs")
    bx.bar(xs + 0.2, [100 * o["us"].get(k, 0) / tu for k in kinds], 0.4, label="share of time (ORT profile)")
    bx.set_xticks(xs, kinds)
    bx.set_ylabel("% of the original model")
    bx.set_title("original: MACs vs time per layer kind", fontsize=10)
    bx.legend(fontsize=8)
    bx.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _host() -> str:
    import platform
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    import onnxruntime as ort
    return f"{cpu}, {os.cpu_count()} cores, onnxruntime {ort.__version__}"


def _candidates(out: Path) -> list[dict]:
    """Every (a) record with both MACs and latency, from the first seed's journal."""
    from graphprune.search.outdir import JOURNAL_NAME
    p = out / "a" / JOURNAL_NAME
    if not p.exists():
        return []
    recs = [json.loads(ln) for ln in p.read_text().splitlines()[1:] if ln.strip()]
    return [{"macs": r["macs"], "latency_ms": r["latency_ms"]} for r in recs
            if r.get("macs") and r.get("latency_ms")]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    command = " ".join(["tools/bench_macs_vs_latency.py"] + [shlex.quote(a) for a in argv])
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    if args.from_json:
        res = json.loads((out / "result.json").read_text())
        res["rank_corr"] = rank_corr(res["a_candidates"])
        write_docs(res, out, args.no_doc)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    load_start = " ".join(f"{v:.2f}" for v in os.getloadavg())
    t0 = time.time()
    mnv2.CACHE = Path(args.cache_dir)
    path = mnv2.trained_model(args.size, args.model_train_samples, args.model_epochs, threads=1, log=log)
    train_wall = time.time() - t0
    paths = mnv2.write_data(out / "data", args.size, args.val_samples, args.train_samples)
    from graphprune.data import load_for_model
    from graphprune.search import objectives as obj
    from graphprune.targets import get_target
    model = gp.load(str(path))
    args.model_path = path
    an = gp.analyse(model)
    val, train = (load_for_model(str(p), model, require_labels=True, option=o) for p, o in zip(paths, ("--val", "--train")))
    base_err = obj.error_rate(model, val.x, val.y)
    log(f"original accuracy {100 * (1 - base_err):.2f} % on {len(val)} validation images, "
        f"{gp.count(model).macs / 1e6:.2f} M MACs")
    args.out = str(out)
    rows = uniform_l1(model, an, val.x, val.y, get_target(args.target).channel_step,
                      stop_error=base_err + args.max_drop + args.recovery_slack)
    per_seed = [one_seed(model, an, val, train, rows, base_err, args, s, paths) for s in seeds]
    import onnx
    s0 = out / f"seed{seeds[0]}"
    bd = breakdown({"original": model, "a": onnx.load(s0 / "final_a.onnx"), "c": onnx.load(s0 / "final_c.onnx")},
                   args.threads)
    sweep = alignment_sweep(model, an, args)
    res = {"per_seed": per_seed, "summary": summarise(per_seed), "breakdown": bd, "sweep": sweep,
           "a_candidates": _candidates(s0), "model_path": str(path),
           "model_desc": f"MobileNetV2-style, 1x{args.size}x{args.size}, {gp.count(model).macs / 1e6:.2f} M MACs",
           "threads": args.threads, "final_repeats": args.final_repeats, "lr": args.lr,
           "importance_samples": args.importance_samples, "host": _host(), "nice": run_prefix(), "load_start": load_start,
           "load_end": " ".join(f"{v:.2f}" for v in os.getloadavg()), "wall_s": time.time() - t0,
           "train_wall_s": train_wall, "command": command}
    res["rank_corr"] = rank_corr(res["a_candidates"])
    (out / "result.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    write_docs(res, out, args.no_doc)
    return 0


def write_docs(res: dict, out: Path, no_doc: bool = False) -> None:
    """OUT's markdown and plot, and (unless no_doc) the committed docs section and plot."""
    md = markdown(res)
    (out / "bench_macs_vs_latency.md").write_text(TITLE + "\n" + md)
    plot(out / "bench_macs_vs_latency.png", res)
    if not no_doc:
        update_section(DOC, "bench_macs_vs_latency", md, title=TITLE)
        plot(DOC.with_suffix(".png"), res)
    print(md)


if __name__ == "__main__":
    sys.exit(main())
