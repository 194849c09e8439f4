"""`tools/bench_joint.py --model NAME`: the joint-search benchmark on a public model of the robustness work.

The same comparison as on the Fashion-MNIST examples, on a trained non-classifier with unlabelled
synthetic images (tools/_real_models.py: the data, preprocessing, metric and search settings
tools/bench_unlabelled.py uses), at matched quality AFTER THE SAME RECOVERY:
* quantize only: QuantizeInt8Pass on the fp32 original (nothing pruned, so nothing to recover);
* prune only: `optimize --quantize off` with distillation recovery (bench_unlabelled's protocol:
  the bound holds after recovery, candidates may lose --recovery-slack more before it);
* prune, then int8: that delivered (recovered) model quantized with the same calibration;
* joint: `optimize --quantize int8`, same budget, seed, data, recovery and bound (recovery
  fine-tunes the pruned fp32 model, then quantizes it; optimize judges the quantized result).
Mixed precision is not run here: one axis per layer (100+ on the YOLO model) makes its
sensitivity sweep alone longer than the time this benchmark may take on the shared host.
Nodes the model's int8 versions keep fp32 (`quantize_exclude`, e.g. a YOLO head's box decoding)
are excluded in every method alike (`--quantize-exclude` for the search).

Quality: the metric against the original's own outputs (1.0 = identical) on the validation
images the searches select on, and on --held other images no search or recovery saw. Latency,
size and ESTIMATED energy as on the examples; every final model is timed again at the end in
--rounds interleaved rounds.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import onnx

from _docs import cpu_name, load_text, run_prefix, update_section
from _real_models import (MODELS, image_options, model_file, quantize_exclude, search_options, setting,
                          write_data)
from bench_joint import DOC, ROOT, calibration, finished, front_points, latencies, log, plot, run_options

RUNS = {"prune": "off", "joint_int8": "int8"}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bench_joint.py --model NAME", description="real-model options")
    ap.add_argument("--held", type=int, default=12, help="held-out images (reported, never searched or trained on)")
    ap.add_argument("--epochs", type=float, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--recovery-slack", type=float, default=None)
    ap.add_argument("--recovery-tries", type=int, default=2)
    ap.add_argument("--finetune-steps", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resume", action="store_true", help="reuse finished searches (their pareto.json and best.onnx) "
                                                         "and continue unfinished ones' journals")
    ap.add_argument("--only", choices=sorted(RUNS), default=None,
                    help="run this one search and stop (another process may run the other; then --resume assembles)")
    return ap


def _settings(args, rest) -> tuple[argparse.Namespace, dict]:
    spec = MODELS.get(args.model)
    if spec is None:
        raise SystemExit(f"unknown --model {args.model!r}; choose from {', '.join(MODELS)}")
    a = argparse.Namespace(**vars(args), **vars(_parser().parse_args(rest)))
    a.val = args.val or 12
    a.train = setting(a, spec, "train")
    a.epochs, a.lr = setting(a, spec, "epochs"), setting(a, spec, "lr")
    a.recovery_slack, a.repeats = setting(a, spec, "recovery_slack"), args.repeats or setting(a, spec, "repeats")
    a.calib = args.calib or a.train
    a.lat_repeats = args.lat_repeats or 10
    return a, spec


def _quality(model, spec, threads):
    """model -> metric vs the original's outputs, per image set."""
    from graphprune.metrics import get_metric
    from graphprune.metrics.runner import evaluate, reference_outputs
    metric = get_metric(spec["metric"], model, has_labels=False)

    def make(ds):
        ref = reference_outputs(model, ds.x, metric, None, threads=threads)
        return lambda m: evaluate(m, ds.x, metric, ref, None, threads=threads)
    return metric, make


def _row(m, judges: dict, shape: dict) -> dict:
    from graphprune.cost import estimate_energy, model_size
    from graphprune.quant import graph_precision
    prec = graph_precision(m)
    return {**{k: float(f(m)) for k, f in judges.items()}, "bytes": model_size(m).bytes,
            "uj": estimate_energy(m, shape).total_uj, "int8": sum(p == "int8" for p in prec.values()),
            "layers": len(prec)}


def bench_real(a, spec) -> dict:
    from graphprune.data import load_for_model
    from graphprune.passes import QuantizeInt8Pass
    from graphprune.search.optimize import OptimizeOptions
    out = Path(a.out) / a.model
    runs = {a.only: RUNS[a.only]} if a.only else RUNS
    for k in runs if not a.resume else ():
        shutil.rmtree(out / k, ignore_errors=True)   # fresh searches, and a latency cache of this run only
        shutil.rmtree(out / f"cache_{k}", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    path = model_file(a.model, spec, out)
    base = onnx.load(str(path))
    ex = quantize_exclude(spec, base)
    has_bn = any(n.op_type == "BatchNormalization" for n in base.graph.node) and spec.get("bn_recalibrate", True)
    val_dir, train_dir, held_dir = write_data(spec, a.val, a.train, a.seed, Path(a.out), a.held)
    val, train, held = (load_for_model(p, base, **image_options(spec), option=o) for p, o in
                        ((val_dir, "--data"), (train_dir, "--train-data"), (held_dir, "--data")))
    log(f"{a.model}: {len(val)} val / {len(train)} train / {len(held)} held-out images; {len(ex)} node(s) kept fp32 "
        f"in int8 models")
    searches = {}
    for k, mode in runs.items():
        if a.resume and (out / k / "pareto.json").exists():   # finished (by this or another process)
            searches[k] = finished(out / k)
            continue
        os.environ["GRAPHPRUNE_CACHE"] = str(out / f"cache_{k}")   # each search's own latency cache
        o = OptimizeOptions(**search_options(path, val_dir, train_dir, spec, has_bn, a, out / k), quantize=mode,
                            calibration_samples=a.calib, quantize_exclude=tuple(ex) if mode != "off" else (),
                            resume=(out / k / "journal.jsonl").exists())
        searches[k] = run_options(o, out / k)
    if a.only:
        return None
    calib = calibration(train, a.calib, a.seed)
    delivered = {k: onnx.load(str(out / k / "best.onnx")) for k in searches if (out / k / "best.onnx").exists()}
    models = {"fp32 original": base, "quantize only (int8)": QuantizeInt8Pass(calib, exclude=ex).run(base)}
    if "prune" in delivered:
        models["prune only (recovered)"] = delivered["prune"]
        models["prune (recovered), then int8"] = QuantizeInt8Pass(calib, exclude=ex).run(delivered["prune"])
    if "joint_int8" in delivered:
        models["joint (--quantize int8, recovered)"] = delivered["joint_int8"]
    inp = base.graph.input[0].name
    shape = {inp: spec.get("input_shape") or [1, *val.x.shape[1:]]}
    lat = latencies(models, a.rounds, a.lat_repeats, shape, warmup=3)
    _, make = _quality(base, spec, a.threads)
    judges = {"val": make(val), "held": make(held)}
    rows = [{"method": k, "ms": lat[k], **_row(m, judges, shape)} for k, m in models.items()]
    fronts = front_points(searches)
    plot(a.model, fronts, rows, Path(a.out) / f"bench_joint_{a.model}.png",
         ylabel=f"{spec['metric']} metric vs the original x 100, validation images")
    return {"model": a.model, "file": spec["path"], "metric": spec["metric"], "input": shape[inp], "rows": rows,
            "excluded": ex, "fronts": fronts, "n": {"val": len(val), "held": len(held), "train": len(train)},
            "searches": {k: {"wall_s": s["wall_s"], "measured": s["counts"]["measured_this_run"],
                             "chosen": s["chosen"]["key"] if s.get("chosen") else None,
                             "choice_reason": s["choice_reason"]} for k, s in searches.items()}}


def table(res: dict, max_drop: float) -> str:
    rows, b, n = res["rows"], res["rows"][0], res["n"]
    out = [f"**{res['model']}** (.cache/models/{res['file']}, input {'x'.join(map(str, res['input']))}, metric "
           f"`{res['metric']}` vs the original's outputs)", "",
           f"| method | metric, validation ({n['val']}) | within {max_drop:g} | metric, held out ({n['held']}) | "
           "latency ms (ORT, 1 thread) | speed-up | size bytes | smaller | energy uJ, **estimated** | less energy | "
           "int8 layers |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ok = "yes" if r["val"] >= b["val"] - max_drop - 1e-12 else "**no**"
        out.append(f"| {r['method']} | {r['val']:.4f} | {ok} | {r['held']:.4f} | {r['ms']:.1f} | "
                   f"{b['ms'] / r['ms']:.2f}x | {r['bytes']:,} | {b['bytes'] / r['bytes']:.2f}x | {r['uj']:.0f} | "
                   f"{b['uj'] / r['uj']:.2f}x | {r['int8']}/{r['layers']} |")
    for k, label in (("prune", "prune only"), ("joint_int8", "joint (--quantize int8)")):
        if res["searches"][k]["chosen"] is None:   # nothing within the bound: no model, say why
            out.append(f"| {label} | nothing delivered: {_short(res['searches'][k]['choice_reason'])} "
                       "| | | | | | | | | |")
    return "\n".join(out)


def _short(reason: str) -> str:
    """optimize's reason without the long configuration keys."""
    import re
    text = re.sub(r"(\d+-){8,}\d+", "(configuration)", reason)
    return text.translate({ord("["): None, ord("]"): None, ord("|"): "/"})[:400]


def main_real(args, rest) -> int:
    import onnxruntime as ort
    a, spec = _settings(args, rest)
    t0, load0 = time.time(), os.getloadavg()
    res = bench_real(a, spec)
    if res is None:   # --only: one search done
        return 0
    load1 = os.getloadavg()
    res.update(wall_s=time.time() - t0, load=[load0[0], load1[0]])
    Path(a.out, f"bench_joint_{a.model}.json").write_text(json.dumps(res, indent=1, default=str))
    s = res["searches"]
    md = (f"Measured by `{run_prefix()}.venv/bin/python tools/bench_joint.py --model {a.model} --budget {a.budget}"
          f"{' ' + ' '.join(rest) if rest else ''}` on {cpu_name()} ({platform.machine()}), onnxruntime "
          f"{ort.__version__}, {time.strftime('%Y-%m-%d', time.gmtime())}, {res['wall_s'] / 60:.0f} min wall; "
          f"{load_text(load0, load1)}. "
          f"Searches: budget {a.budget}, seed {a.seed}, bound -{a.max_drop:g} after recovery (slack "
          f"{a.recovery_slack:g} before it), {a.repeats} timed runs per candidate; recovery: distillation from the "
          f"original, {a.epochs:g} epoch(s), lr {a.lr:g}, at most {a.recovery_tries} tries; calibration "
          f"{a.calib} training images; {len(res['excluded'])} node(s) kept fp32 in every int8 model "
          f"({spec.get('quantize_exclude')}). Final models timed in {a.rounds} interleaved rounds of "
          f"{a.lat_repeats} runs. Energy is **estimated** (Horowitz ISSCC 2014 45 nm model; RAPL not readable "
          f"here). Search wall time: " + ", ".join(f"{k} {v['wall_s'] / 60:.1f} min ({v['measured']} measured)"
                                                   for k, v in s.items()) + ".\n\n" + table(res, a.max_drop))
    print(md, flush=True)
    if not args.no_write:
        update_section(DOC, f"bench-joint-{a.model}", md, title="# Joint pruning + quantization benchmark\n")
        shutil.copy(Path(a.out) / f"bench_joint_{a.model}.png", ROOT / "docs" / f"bench_joint_{a.model}.png")
    return 0
