#!/usr/bin/env python
"""Joint prune + quantize search vs prune-then-quantize vs quantize-only (issue 14): docs/bench_joint.md.

For each Fashion-MNIST example (examples/fashion_mnist_resnet.onnx, examples/fashion_mnist_vgg.onnx):
* quantize only: QuantizeInt8Pass (per-channel int8, QDQ) on the fp32 original;
* prune only: `graphprune optimize` (--quantize off), fastest configuration within
  --max-drop of the original (objectives latency,error);
* prune, then quantize: that prune-only model quantized int8 with the same calibration;
* joint int8 / joint mixed: `graphprune optimize --quantize int8|mixed` with the same budget,
  data, constraint and seed: every candidate is judged as deployed (pruned, then int8 or
  per-layer fp32/int8).
Same calibration everywhere: --calib samples of the Fashion-MNIST training split (fixed
seed, as optimize --quantize picks them from --train-data). No fine-tuning (no recovery) for
any method: "the same recovery" is none, so matched quality holds before recovery.

Quality: top-1 on the --val images of the test split the searches select on, and on the
rest of the test split, which no search saw (held out). Latency: onnxruntime on this host,
batch 1, 1 intra-op thread, every final model measured again at the end in --rounds
interleaved rounds (median of the rounds' medians). Size: graphprune.cost.model_size
(tensors at their precision). Energy: ESTIMATED (graphprune.cost.estimate_energy, Horowitz
ISSCC 2014 45 nm model); RAPL is not readable on this host.

    nice -n 5 .venv/bin/python tools/bench_joint.py [--budget 40] [--val 2000] [--no-write]
    nice -n 5 .venv/bin/python tools/bench_joint.py --model slider --budget 40 --held 12

--model NAME: a public model of the robustness work (captcha-recognizer's YOLO11s-seg `slider`,
rapidocr's `ppocr_det`, rembg's `u2netp`) on synthetic unlabelled images, with recovery
(tools/_bench_joint_real.py; data, metric and search settings shared with tools/bench_unlabelled.py
through tools/_real_models.py).

Writes OUT (default out/bench_joint)/<model>/{prune,joint_int8,joint_mixed}/ (optimize's outputs),
OUT/bench_joint.json, and docs/bench_joint.md (table between markers) + docs/bench_joint_<model>.png.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import cpu_name, load_text, run_prefix, update_section  # noqa: E402

MODELS = ("fashion_mnist_resnet", "fashion_mnist_vgg")
RUNS = {"prune": "off", "joint_int8": "int8", "joint_mixed": "mixed"}
DOC = ROOT / "docs" / "bench_joint.md"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write_data(out: Path, n_val: int, n_train: int):
    """val.npz (searched on), held-out test images (reported), train.npz (calibration)."""
    from graphprune.data import load_fashion_mnist
    test = load_fashion_mnist("test")
    idx = np.random.default_rng(0).permutation(len(test))
    val, held = test.take(np.sort(idx[:n_val])), test.take(np.sort(idx[n_val:]))
    train = load_fashion_mnist("train").subsample(n_train, seed=1)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "val.npz", x=val.x, y=val.y)
    np.savez(out / "train.npz", x=train.x, y=train.y)
    return val, held, train


def calibration(train, n: int, seed: int):
    """The sample optimize --quantize calibrates on (graphprune.search.joint.prepare)."""
    from graphprune.search.precision import _CALIB_SEED
    return train.subsample(n, seed + _CALIB_SEED).x


def run_search(model: str, out: Path, mode: str, args) -> dict:
    from graphprune.search.optimize import OptimizeOptions
    o = OptimizeOptions(model=model, data=str(out.parent.parent / "val.npz"), outdir=str(out),
                        train_data=str(out.parent.parent / "train.npz"), budget=args.budget, repeats=args.repeats,
                        threads=1, max_error_increase=args.max_drop, objectives="latency,error", quantize=mode,
                        calibration_samples=args.calib, progress=False, seed=args.seed,
                        resume=(out / "journal.jsonl").exists())
    return run_options(o, out)


def run_options(o, out: Path) -> dict:
    """Run one search (OptimizeOptions `o`, outdir `out`): its pareto.json, measured candidates, wall time."""
    from graphprune.errors import GraphpruneError
    from graphprune.search.optimize import run_optimize
    t = time.time()
    try:
        run_optimize(o, log=lambda m: log(f"{out.name}: {m}"))
    except GraphpruneError as exc:   # nothing within the bound: the outputs say so, best.onnx absent
        log(f"{out.name}: {exc}")
    (out / "bench_wall_s.txt").write_text(f"{time.time() - t:.1f}\n")
    return finished(out)


def finished(out: Path) -> dict:
    """A finished search's pareto.json with its measured candidates (journal) under _measured."""
    s = json.loads((out / "pareto.json").read_text())
    lines = (out / "journal.jsonl").read_text().splitlines()[1:]
    s["_measured"] = [r for r in map(json.loads, lines) if r.get("type") == "measured"]
    wall = out / "bench_wall_s.txt"   # written by run_options: the search's own wall time
    s["wall_s"] = float(wall.read_text()) if wall.exists() else float("nan")
    return s


def evaluate(m: onnx.ModelProto, val, held) -> dict:
    from graphprune.cost import estimate_energy, model_size
    from graphprune.quant import graph_precision
    from graphprune.quant.check import run_batched
    name = m.graph.input[0].name
    acc = {k: float(np.mean(run_batched(m, {name: d.x}, 500)[0].argmax(1) == d.y)) for k, d in
           (("val", val), ("held", held))}
    prec = graph_precision(m)
    return {**acc, "bytes": model_size(m).bytes, "uj": estimate_energy(m, {name: [1, *val.x.shape[1:]]}).total_uj,
            "int8": sum(p == "int8" for p in prec.values()), "layers": len(prec)}


def latencies(models: dict, rounds: int, repeats: int, shape: dict, warmup: int = 20) -> dict:
    """Median of per-round medians, the models interleaved in every round (a busy host's drift
    hits all alike)."""
    from targets.measure_local import measure_ort
    per = {k: [] for k in models}
    for r in range(rounds):
        for k, m in models.items():
            per[k].append(measure_ort(m, repeats=repeats, warmup=warmup, threads=1, input_shapes=shape).median_ms)
        log(f"latency round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in per.items()))
    return {k: float(np.median(v)) for k, v in per.items()}


def bench_model(name: str, args, val, held, train) -> dict:
    from graphprune.passes import QuantizeInt8Pass
    path = str(ROOT / "examples" / f"{name}.onnx")
    out = Path(args.out) / name
    base = onnx.load(path)
    calib = calibration(train, args.calib, args.seed)
    searches = {k: run_search(path, out / k, mode, args) for k, mode in RUNS.items()}
    delivered = {k: onnx.load(str(out / k / "best.onnx")) for k in searches if (out / k / "best.onnx").exists()}
    models = {"fp32 original": base, "quantize only (int8)": QuantizeInt8Pass(calib).run(base)}
    if "prune" in delivered:
        models["prune only"] = delivered["prune"]
        models["prune, then int8"] = QuantizeInt8Pass(calib).run(delivered["prune"])
    for k, label in (("joint_int8", "joint (--quantize int8)"), ("joint_mixed", "joint (--quantize mixed)")):
        if k in delivered:
            models[label] = delivered[k]
    shape = {base.graph.input[0].name: [1, *val.x.shape[1:]]}
    lat = latencies(models, args.rounds, args.lat_repeats, shape)
    rows = [{"method": k, "ms": lat[k], **evaluate(m, val, held)} for k, m in models.items()]
    fronts = front_points(searches)
    plot(name, fronts, rows, Path(args.out) / f"bench_joint_{name}.png")
    return {"model": name, "rows": rows, "fronts": fronts,
            "searches": {k: {"wall_s": s["wall_s"], "measured": s["counts"]["measured_this_run"],
                             "chosen": s["chosen"]["key"] if s.get("chosen") else None,
                             "choice_reason": s["choice_reason"]} for k, s in searches.items()}}


def front_points(searches: dict) -> dict:
    """(latency, size, accuracy) of every measured candidate, by family: prune only (the off run),
    quantize only (the quantized runs' candidates that prune nothing), joint (their pruned candidates
    with at least one int8 layer)."""
    fam = {"prune only": [], "quantize only": [], "joint": []}
    for k, s in searches.items():
        groups = [g for g in s["space"]["groups"] if g["id"] >= 0]
        for r in s["_measured"]:
            pruned = any(int(r["config"][str(g["id"])]) != g["units"] for g in groups)
            int8 = r.get("int8_layers", 0) > 0
            # a quantized run's fp32 candidates (its group sensitivity sweep) belong to no family
            f = "prune only" if k == "prune" else None if not int8 else "joint" if pruned else "quantize only"
            if f and r.get("latency_ms") is not None:
                fam[f].append((r["latency_ms"], r["size_bytes"], 100 * (1 - r["error"])))
    return fam


def _front(pts, xi):
    """Non-dominated (min x, max accuracy) points, sorted by x."""
    out, best = [], -1.0
    for p in sorted(pts, key=lambda p: (p[xi], -p[2])):
        if p[2] > best:
            out.append(p)
            best = p[2]
    return out


def plot(name: str, fronts: dict, rows: list[dict], path: Path,
         ylabel: str = "top-1 [%] on the search's test images") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    colours = {"prune only": "tab:blue", "quantize only": "tab:orange", "joint": "tab:green"}
    for ax, xi, xl in ((axes[0], 0, "latency [ms] (onnxruntime, this host, 1 thread; search timings)"),
                       (axes[1], 1, "size [bytes] (tensors at their precision)")):
        for fam, pts in fronts.items():
            if pts:
                ax.scatter([p[xi] for p in pts], [p[2] for p in pts], s=6, c=colours[fam], alpha=0.25)
                fr = _front(pts, xi)
                ax.plot([p[xi] for p in fr], [p[2] for p in fr], "o-", c=colours[fam], ms=4,
                        label=f"{fam} front ({len(pts)} measured)")
        for r in rows:
            x = r["ms"] if xi == 0 else r["bytes"]
            ax.scatter([x], [100 * r["val"]], marker="*", s=110, zorder=5)
            ax.annotate(r["method"], (x, 100 * r["val"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel(xl)
        ax.set_ylabel(ylabel)
        ax.set_ylim(max(0, 100 * rows[0]["val"] - 8), 100 * rows[0]["val"] + 1.5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{name}: prune only vs quantize only vs joint (stars: final models, latency re-measured; "
                 f"energy not plotted: estimated only)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table(res: dict, n_val: int, n_held: int) -> str:
    rows, b = res["rows"], res["rows"][0]
    out = [f"**{res['model']}** (examples/{res['model']}.onnx)", "",
           f"| method | top-1, search data ({n_val}) | vs fp32 | top-1, held out ({n_held}) | vs fp32 | "
           "latency ms (ORT, 1 thread) | speed-up | size bytes | smaller | energy uJ, **estimated** | less energy | "
           "int8 layers |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['method']} | {r['val']:.2%} | {100 * (r['val'] - b['val']):+.2f} pp | {r['held']:.2%} | "
                   f"{100 * (r['held'] - b['held']):+.2f} pp | {r['ms']:.3f} | {b['ms'] / r['ms']:.2f}x | "
                   f"{r['bytes']:,} | {b['bytes'] / r['bytes']:.2f}x | {r['uj']:.1f} | {b['uj'] / r['uj']:.2f}x | "
                   f"{r['int8']}/{r['layers']} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--budget", type=int, default=40)
    ap.add_argument("--val", type=int, default=None, help="images the searches select on (2000 test images; "
                    "--model: the model's validation images, default 12)")
    ap.add_argument("--train", type=int, default=None, help="training images written (calibration draws from them; "
                    "4096; --model: the model's, 12 for slider)")
    ap.add_argument("--calib", type=int, default=None, help="calibration samples (256; --model: all training images)")
    ap.add_argument("--max-drop", type=float, default=0.01)
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per search candidate (20; --model: the "
                    "model's, 3 for slider)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lat-repeats", type=int, default=None, help="final timing runs per round (200; --model: 10)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "out" / "bench_joint"))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--model", default=None, help="a public model of the robustness work instead of the Fashion-MNIST "
                                                  "examples (tools/_real_models.py: slider, ppocr_det, u2netp); "
                                                  "tools/_bench_joint_real.py")
    args, rest = ap.parse_known_args()
    if args.model:
        from _bench_joint_real import main_real
        return main_real(args, rest)
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    args.val, args.calib, args.repeats = args.val or 2000, args.calib or 256, args.repeats or 20
    args.lat_repeats, args.train = args.lat_repeats or 200, args.train or 4096
    os.environ.setdefault("GRAPHPRUNE_CACHE", str(Path(args.out) / "latency_cache"))
    import onnxruntime as ort
    t0, load0 = time.time(), os.getloadavg()
    val, held, train = write_data(Path(args.out), args.val, args.train)
    results = []
    for name in args.models.split(","):
        log(f"== {name}")
        results.append(bench_model(name, args, val, held, train))
        print(table(results[-1], len(val), len(held)), flush=True)
    load1 = os.getloadavg()
    Path(args.out, "bench_joint.json").write_text(json.dumps(results, indent=1))
    md = (f"Measured by `{run_prefix()}.venv/bin/python tools/bench_joint.py --budget {args.budget}` on {cpu_name()} "
          f"({platform.machine()}), onnxruntime {ort.__version__}, {time.strftime('%Y-%m-%d', time.gmtime())}, "
          f"{time.time() - t0:.0f} s wall; {load_text(load0, load1)}. Searches: budget {args.budget}, seed "
          f"{args.seed}, error bound +{100 * args.max_drop:g} pp on {len(val)} test images, no recovery; "
          f"calibration {args.calib} training images. Energy is **estimated** (Horowitz ISSCC 2014 45 nm model; "
          f"RAPL not readable here).\n\n" + "\n\n".join(table(r, len(val), len(held)) for r in results))
    print(md)
    if not args.no_write:
        import shutil
        update_section(DOC, "bench-joint", md, title="# Joint pruning + quantization benchmark\n")
        for r in results:
            png = f"bench_joint_{r['model']}.png"
            shutil.copy(Path(args.out) / png, ROOT / "docs" / png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
