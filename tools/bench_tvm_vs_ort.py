#!/usr/bin/env python
"""Measure tuned-TVM vs onnxruntime latency, tuning wall time, and replayed vs freshly tuned
pruned variants, for resnet18- and mobilenet_v2-like models at batch 1 on this host (target x86).

torchvision cannot be imported in the project venv, so the two architectures are rebuilt here
as plain torch.nn modules (same layer shapes, random weights: latency does not depend on the
values). Pruned variants shrink the inner channels the way filter pruning does (the first conv
of each ResNet basic block; the expansion width of each MobileNetV2 block).

    .venv/bin/python tools/bench_tvm_vs_ort.py --trials 64 --variants 0.75 0.5 --json out.json

Each phase uses its own cache folder under --work so nothing is reused by accident:
base/ (tune the base model, then replay onto variants), fresh-R/ (variant R tuned from scratch).
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
    torch.manual_seed(0)
    net = MODELS[name](keep).eval()
    for m in net.modules():  # non-trivial BN statistics, so folding is exercised
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = folder / f"{name}_{keep}.onnx"
    torch.onnx.export(net, torch.randn(1, 3, 224, 224), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"])
    return onnx.load(str(path))


def _maxdiff(model, compiled) -> float:
    from graphprune.targets.inputs import random_inputs
    from graphprune.targets.measure_local import ort_session, run_tvm_local
    feeds = random_inputs(model, seed=1)
    ref = ort_session(model).run(None, feeds)[0]
    return float(np.abs(run_tvm_local(compiled, feeds)[0] - ref).max())


def _tune_and_measure(model, cache: Path, trials: int, repeats: int):
    """Compile with tuning against the database in `cache` (tunes when it lacks the shapes, replays
    or reuses records otherwise); return the build, its wall time in s and its median latency in ms."""
    from graphprune.targets.compile import compile_model
    from graphprune.targets.measure_local import measure_tvm_local
    os.environ["GRAPHPRUNE_CACHE"] = str(cache)
    t0 = time.monotonic()
    compiled = compile_model(model, "x86", tune_trials=trials)
    wall = round(time.monotonic() - t0, 1)
    return compiled, wall, measure_tvm_local(compiled, model, repeats=repeats).median_ms


def run(args) -> dict:
    from graphprune.targets.compile import compile_model
    from graphprune.targets.measure_local import measure_ort, measure_tvm_local
    work = Path(args.work or tempfile.mkdtemp(prefix="gp-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    report = {"host": os.uname().nodename, "cpus": os.cpu_count(), "trials": args.trials, "models": {}}
    for name in args.models:
        row: dict = {}
        base = export(name, 1.0, work)
        row["ort_ms"] = measure_ort(base, repeats=args.repeats).median_ms
        row["tvm_untuned_ms"] = measure_tvm_local(compile_model(base, "x86"), base, repeats=args.repeats).median_ms
        c, row["tune_base_wall_s"], row["tvm_tuned_ms"] = _tune_and_measure(base, work / f"{name}-base",
                                                                            args.trials, args.repeats)
        row["tuning"] = c.tuning
        row["tuned_over_ort"] = row["tvm_tuned_ms"] / row["ort_ms"]
        row["tuned_maxdiff_vs_ort"] = _maxdiff(base, c)
        print(json.dumps({name: row}), flush=True)
        row["variants"] = {}
        for keep in args.variants:
            v = export(name, keep, work)
            vr: dict = {"ort_ms": measure_ort(v, repeats=args.repeats).median_ms}
            c, vr["replay_compile_wall_s"], vr["replayed_ms"] = _tune_and_measure(v, work / f"{name}-base",
                                                                                  args.trials, args.repeats)
            vr["replay_tuning"] = c.tuning
            vr["replayed_maxdiff_vs_ort"] = _maxdiff(v, c)
            vr["untuned_ms"] = measure_tvm_local(compile_model(v, "x86"), v, repeats=args.repeats).median_ms
            if args.fresh:
                _, vr["fresh_tune_wall_s"], vr["fresh_ms"] = _tune_and_measure(v, work / f"{name}-fresh-{keep}",
                                                                               args.trials, args.repeats)
            row["variants"][str(keep)] = vr
            print(json.dumps({name: {keep: vr}}), flush=True)
        report["models"][name] = row
        print(json.dumps({name: {k: v for k, v in row.items() if k != "variants"}}), flush=True)
    return report


def markdown(report: dict) -> str:
    lines = [f"trials per base model: {report['trials']}, host CPUs: {report['cpus']}", "",
             "| model | ORT ms | TVM untuned ms | TVM tuned ms | tuned/ORT | tuning wall s |",
             "|---|---|---|---|---|---|"]
    for name, r in report["models"].items():
        lines.append(f"| {name} | {r['ort_ms']:.2f} | {r['tvm_untuned_ms']:.2f} | {r['tvm_tuned_ms']:.2f} | "
                     f"{r['tuned_over_ort']:.2f} | {r['tune_base_wall_s']} |")
    lines += ["", "| variant | ORT ms | untuned ms | replayed ms | replay compile s | fresh-tuned ms | fresh tune s | replayed max abs diff vs ORT |",
              "|---|---|---|---|---|---|---|---|"]
    for name, r in report["models"].items():
        for keep, v in r["variants"].items():
            fresh = f"{v['fresh_ms']:.2f}" if "fresh_ms" in v else "-"   # --no-fresh: not measured
            lines.append(f"| {name} keep {keep} | {v['ort_ms']:.2f} | {v['untuned_ms']:.2f} | {v['replayed_ms']:.2f} | "
                         f"{v['replay_compile_wall_s']} | {fresh} | "
                         f"{v.get('fresh_tune_wall_s', '-')} | {v['replayed_maxdiff_vs_ort']:.1e} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--trials", type=int, default=64)
    p.add_argument("--variants", nargs="*", type=float, default=[0.75, 0.5])
    p.add_argument("--no-fresh", dest="fresh", action="store_false", help="skip tuning each variant from scratch")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--work", help="folder for models and tuning databases (default: a temp dir)")
    p.add_argument("--json", help="write the full report here")
    p.add_argument("--doc", default=str(ROOT / "docs/latency.md"),
                   help="write the tables into this doc's bench_tvm_vs_ort section (the README copies them)")
    p.add_argument("--no-doc", action="store_true")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    load_before = os.getloadavg()[0]
    report = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    print(markdown(report))
    if not args.no_doc:
        note = (f"Produced by `.venv/bin/python tools/bench_tvm_vs_ort.py {' '.join(argv)}` on {time.strftime('%Y-%m-%d')}: "
                f"{os.cpu_count()} CPUs, load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after; "
                f"batch 1, 224x224, target x86, random weights; onnxruntime and the TVM runtime on all cores.")
        tuning = "; ".join(f"{n}: {r['tuning']}" for n, r in report["models"].items())
        update_section(Path(args.doc), "bench_tvm_vs_ort", f"{note}\n\n{markdown(report)}\n\nTuning: {tuning}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
