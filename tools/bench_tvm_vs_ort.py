#!/usr/bin/env python
"""Measure tuned-TVM vs onnxruntime latency, tuning wall time, and replayed vs freshly tuned
pruned variants, for resnet18- and mobilenet_v2-like models at batch 1 on this host (target x86),
with the current tuning pipeline (NHWC + pre-packed weights, FLOP-weighted trial caps) and, with
`--pipelines new legacy`, the pipeline before it (NCHW, trials split evenly) on the same host.

torchvision cannot be imported in the project venv, so the two architectures are rebuilt here
as plain torch.nn modules (same layer shapes, random weights: latency does not depend on the
values). Pruned variants shrink the inner channels the way filter pruning does (the first conv
of each ResNet basic block; the expansion width of each MobileNetV2 block).

    .venv/bin/python tools/bench_tvm_vs_ort.py --trials 64 --variants 0.75 0.5 --json out.json
    .venv/bin/python tools/bench_tvm_vs_ort.py --pipelines new legacy --trials 160 --tune-time 6m \
        --threads 1 --variants 0.5 --no-fresh --no-untuned

Each phase uses its own cache folder under --work so nothing is reused by accident:
NAME-PIPELINE-base/ (tune the base model, then replay onto variants), NAME-PIPELINE-fresh-R/
(variant R tuned from scratch). --threads 1 runs onnxruntime with one intra-op thread and the TVM
runtime with TVM_NUM_THREADS=1, and tunes for a one-core x86 target (num-cores 1).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import update_section  # noqa: E402


def _bn_conv(cin, cout, k, s=1, groups=1, act=True):
    layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True) if act == "relu6" else nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, inner):
        super().__init__()
        self.a = _bn_conv(cin, inner, 3, stride)
        self.b = _bn_conv(inner, cout, 3, 1, act=False)
        self.down = _bn_conv(cin, cout, 1, stride, act=False) if stride != 1 or cin != cout else None

    def forward(self, x):
        return torch.relu(self.b(self.a(x)) + (self.down(x) if self.down is not None else x))


class ResNet18(nn.Module):
    """torchvision resnet18 layer shapes; `keep` scales the inner width of every basic block."""

    def __init__(self, keep=1.0, classes=1000):
        super().__init__()
        self.stem = nn.Sequential(_bn_conv(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            for i in range(2):
                blocks.append(BasicBlock(cin, cout, stride if i == 0 else 1, max(1, int(cout * keep))))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, hidden):
        super().__init__()
        layers = [] if hidden == cin else [_bn_conv(cin, hidden, 1, act="relu6")]
        layers += [_bn_conv(hidden, hidden, 3, stride, groups=hidden, act="relu6"), _bn_conv(hidden, cout, 1, act=False)]
        self.body = nn.Sequential(*layers)
        self.res = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.res else self.body(x)


class MobileNetV2(nn.Module):
    """torchvision mobilenet_v2 (width 1.0) layer shapes; `keep` scales each block's expansion width."""

    def __init__(self, keep=1.0, classes=1000):
        super().__init__()
        cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
        layers, cin = [_bn_conv(3, 32, 3, 2, act="relu6")], 32
        for t, c, n, s in cfg:
            for i in range(n):
                hidden = cin if t == 1 else max(1, int(cin * t * keep))
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, hidden))
                cin = c
        layers.append(_bn_conv(cin, 1280, 1, act="relu6"))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(1280, classes)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


MODELS = {"resnet18": ResNet18, "mobilenet_v2": MobileNetV2}


def export(name: str, keep: float, folder: Path) -> onnx.ModelProto:
    return export_net(lambda: MODELS[name](keep), folder / f"{name}_{keep}.onnx")


def export_net(make, path: Path) -> onnx.ModelProto:
    """`make()` built under seed 0, given random BN statistics, exported to `path` (224x224, batch 1)."""
    torch.manual_seed(0)
    net = make().eval()
    for m in net.modules():  # non-trivial BN statistics, so folding is exercised
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    torch.onnx.export(net, torch.randn(1, 3, 224, 224), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"])
    return onnx.load(str(path))


def _maxdiff(model, compiled) -> float:
    from graphprune.targets.inputs import random_inputs
    from graphprune.targets.measure_local import ort_session, run_tvm_local
    feeds = random_inputs(model, seed=1)
    ref = ort_session(model).run(None, feeds)[0]
    return float(np.abs(run_tvm_local(compiled, feeds)[0] - ref).max())


PIPELINES = {"new": None, "legacy": "nchw-legacy"}   # values of $GRAPHPRUNE_TVM_PIPELINE


def _target(threads: int | None):
    """x86, or with --threads 1 an x86 target tuned for one core (MetaSchedule's num-cores)."""
    import dataclasses
    from graphprune.targets import get_target
    x86 = get_target("x86")
    if not threads:
        return x86
    return dataclasses.replace(x86, name=f"x86-{threads}core", tvm={**x86.tvm, "num-cores": threads})


def _last_run(cache: Path, target) -> dict:
    """What the base tuning in `cache` did (tuning_runs.jsonl): trials measured and seconds."""
    from graphprune.targets.tuning.records import database_dir
    runs = database_dir(target) / "base" / "tuning_runs.jsonl"
    return json.loads(runs.read_text().splitlines()[-1]) if runs.exists() else {}


def _tune_and_measure(model, cache: Path, args, target):
    """Compile with tuning against the database in `cache` (tunes when it lacks the shapes, replays
    or reuses records otherwise); return the build, its wall time in s and its median latency in ms."""
    from graphprune.targets.compile import compile_model
    from graphprune.targets.measure_local import measure_tvm_local
    os.environ["GRAPHPRUNE_CACHE"] = str(cache)
    t0 = time.monotonic()
    compiled = compile_model(model, target, tune_trials=args.trials, tune_time=args.tune_time)
    wall = round(time.monotonic() - t0, 1)
    return compiled, wall, measure_tvm_local(compiled, model, repeats=args.repeats).median_ms


def _pipeline_row(name: str, base, pipe: str, work: Path, args, target, ort_ms: float) -> dict:
    """Tune the base with one pipeline, time it, replay onto the variants."""
    from graphprune.targets.compile import compile_model
    from graphprune.targets.measure_local import measure_tvm_local
    os.environ.pop("GRAPHPRUNE_TVM_PIPELINE", None)
    if PIPELINES[pipe]:
        os.environ["GRAPHPRUNE_TVM_PIPELINE"] = PIPELINES[pipe]
    row: dict = {}
    cache = work / f"{name}-{pipe}-base"
    c, row["tune_base_wall_s"], row["tvm_tuned_ms"] = _tune_and_measure(base, cache, args, target)
    run = _last_run(cache, target)
    row.update(tuning=c.tuning, trials=run.get("trials"), tuning_s=run.get("seconds"),
               tuned_over_ort=row["tvm_tuned_ms"] / ort_ms, tuned_maxdiff_vs_ort=_maxdiff(base, c))
    print(json.dumps({name: {pipe: row}}), flush=True)
    row["variants"] = {}
    for keep in args.variants:
        v = export(name, keep, work)
        vr: dict = {"ort_ms": measure_ort_ms(v, args)}
        c, vr["replay_compile_wall_s"], vr["replayed_ms"] = _tune_and_measure(v, cache, args, target)
        vr["replay_tuning"] = c.tuning
        vr["replayed_maxdiff_vs_ort"] = _maxdiff(v, c)
        if args.untuned:
            vr["untuned_ms"] = measure_tvm_local(compile_model(v, target), v, repeats=args.repeats).median_ms
        if args.fresh:
            _, vr["fresh_tune_wall_s"], vr["fresh_ms"] = _tune_and_measure(v, work / f"{name}-{pipe}-fresh-{keep}",
                                                                           args, target)
        row["variants"][str(keep)] = vr
        print(json.dumps({name: {pipe: {keep: vr}}}), flush=True)
    return row


def measure_ort_ms(model, args) -> float:
    from graphprune.targets.measure_local import measure_ort
    return measure_ort(model, repeats=args.repeats, threads=args.threads).median_ms


def run(args) -> dict:
    from graphprune.targets.compile import compile_model
    from graphprune.targets.measure_local import measure_tvm_local
    work = Path(args.work or tempfile.mkdtemp(prefix="gp-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    target = _target(args.threads)
    report = {"host": os.uname().nodename, "cpus": os.cpu_count(), "threads": args.threads or "all",
              "trials": args.trials, "tune_time_s": args.tune_time, "models": {}}
    for name in args.models:
        base = export(name, 1.0, work)
        row: dict = {"ort_ms": measure_ort_ms(base, args), "pipelines": {}}
        if args.untuned:
            row["tvm_untuned_ms"] = measure_tvm_local(compile_model(base, target), base, repeats=args.repeats).median_ms
        for pipe in args.pipelines:
            row["pipelines"][pipe] = _pipeline_row(name, base, pipe, work, args, target, row["ort_ms"])
        report["models"][name] = row
    return report


def markdown(report: dict) -> str:
    budget = f"{report['trials']} trials" + (f" or {report['tune_time_s']:g} s" if report.get("tune_time_s") else "")
    lines = [f"tuning budget per base model: {budget}, whichever ends first; host CPUs: {report['cpus']}, "
             f"threads: {report['threads']}", "",
             "| model | pipeline | ORT ms | TVM untuned ms | TVM tuned ms | tuned/ORT | trials | tuning s | "
             "max abs diff vs ORT |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["models"].items():
        untuned = f"{r['tvm_untuned_ms']:.2f}" if "tvm_untuned_ms" in r else "-"
        for pipe, p in r["pipelines"].items():
            lines.append(f"| {name} | {pipe} | {r['ort_ms']:.2f} | {untuned} | {p['tvm_tuned_ms']:.2f} | "
                         f"{p['tuned_over_ort']:.2f} | {p['trials']} | {p['tuning_s']} | {p['tuned_maxdiff_vs_ort']:.1e} |")
    lines += ["", "| variant | pipeline | ORT ms | untuned ms | replayed ms | replayed/ORT | replay compile s | "
              "fresh-tuned ms | fresh tune s | replayed max abs diff vs ORT |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["models"].items():
        for pipe, p in r["pipelines"].items():
            for keep, v in p["variants"].items():
                fresh = f"{v['fresh_ms']:.2f}" if "fresh_ms" in v else "-"   # --no-fresh: not measured
                untuned = f"{v['untuned_ms']:.2f}" if "untuned_ms" in v else "-"
                lines.append(f"| {name} keep {keep} | {pipe} | {v['ort_ms']:.2f} | {untuned} | {v['replayed_ms']:.2f} | "
                             f"{v['replayed_ms'] / v['ort_ms']:.2f} | {v['replay_compile_wall_s']} | {fresh} | "
                             f"{v.get('fresh_tune_wall_s', '-')} | {v['replayed_maxdiff_vs_ort']:.1e} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--pipelines", nargs="+", default=["new"], choices=list(PIPELINES),
                   help="new: NHWC + pre-packed weights (the default pipeline); legacy: the NCHW one before it")
    p.add_argument("--trials", type=int, default=64)
    p.add_argument("--tune-time", help="time budget per base tuning, e.g. 6m (graphprune's --tune-time)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime and TVM runtime threads (default: all)")
    p.add_argument("--variants", nargs="*", type=float, default=[0.75, 0.5])
    p.add_argument("--no-fresh", dest="fresh", action="store_false", help="skip tuning each variant from scratch")
    p.add_argument("--no-untuned", dest="untuned", action="store_false", help="skip timing untuned builds")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--work", help="folder for models and tuning databases (default: a temp dir)")
    p.add_argument("--json", help="write the full report here")
    p.add_argument("--doc", default=str(ROOT / "docs/latency.md"),
                   help="write the tables into this doc's bench_tvm_vs_ort section (the README copies them)")
    p.add_argument("--no-doc", action="store_true")
    p.add_argument("--note", default="", help="a sentence for the doc section (e.g. what else ran on the host)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    if args.threads:
        os.environ["TVM_NUM_THREADS"] = str(args.threads)   # before the TVM runtime starts its pool
    if args.tune_time is not None:
        from graphprune.targets.tuning.budget import parse_tune_time
        args.tune_time = parse_tune_time(args.tune_time, "--tune-time")
    load_before = os.getloadavg()[0]
    t0 = time.monotonic()
    report = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    print(markdown(report))
    if not args.no_doc:
        shown = [a for i, a in enumerate(argv) if a != "--note" and (i == 0 or argv[i - 1] != "--note")]
        note = (f"Produced by `.venv/bin/python tools/bench_tvm_vs_ort.py {' '.join(shown)}` on {time.strftime('%Y-%m-%d')} "
                f"in {(time.monotonic() - t0) / 60:.0f} min: {os.cpu_count()} CPUs, load average {load_before:.1f} before "
                f"and {os.getloadavg()[0]:.1f} after; batch 1, 224x224, target x86, random weights; onnxruntime and "
                f"the TVM runtime on {args.threads or 'all'} thread(s).{' ' + args.note if args.note else ''}")
        tuning = "; ".join(f"{n} ({pipe}): {pr['tuning']}" for n, r in report["models"].items()
                           for pipe, pr in r["pipelines"].items())
        update_section(Path(args.doc), "bench_tvm_vs_ort", f"{note}\n\n{markdown(report)}\n\nTuning: {tuning}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
