#!/usr/bin/env python
"""Does channel_step 16 pay on this AVX-512 host? ResNet-18 at about half width, inner widths on
multiples of 8 against multiples of 16, timed by tuned TVM (NHWC + pre-packed weights, schedules
replayed from the full model's base) and by onnxruntime.

A search with `channel_step` S only proposes kept counts that are multiples of S (prune's
`--round-to`). With NHWC convolutions, TVM vectorises over output channels (16 fp32 lanes with
AVX-512), so a count that is a multiple of 8 but not of 16 might cost as much as the next multiple
of 16. Each variant keeps the inner width of every basic block (the first conv's filters, what
filter pruning removes there) at one width per stage:

    m16      32, 64, 128, 256      (half width; multiples of 16)
    m8-      24, 56, 120, 248      (8 below: multiples of 8, not of 16)
    m16-     16, 48, 112, 240      (16 below: multiples of 16)
    m8+      40, 72, 136, 264      (8 above: multiples of 8, not of 16)

If the step-8 widths cost more per MAC than their multiple-of-16 neighbours (m8- slower than m16,
or above the line from m16- to m16), step 16 pays; if latency follows MACs, step 8's finer grid
is free. Models are rebuilt as in tools/bench_tvm_vs_ort.py (random weights, 224x224, batch 1).

    nice -n 5 .venv/bin/python tools/bench_channel_step.py --work /tmp/gpstep --tune-time 10m
    # or reuse a base tuned by bench_tvm_vs_ort.py --threads 1 (its NAME-new-base/ folder):
    nice -n 5 .venv/bin/python tools/bench_channel_step.py --work /tmp/gpstep \
        --base-cache /tmp/gpbench/resnet18-new-base

Writes the table into docs/latency.md (section bench_channel_step) unless --no-doc.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import update_section  # noqa: E402
from bench_tvm_vs_ort import BasicBlock, _bn_conv, _maxdiff, _target, export_net  # noqa: E402

VARIANTS = {"m16": (32, 64, 128, 256), "m8-": (24, 56, 120, 248), "m16-": (16, 48, 112, 240),
            "m8+": (40, 72, 136, 264)}


class ResNet18Widths(nn.Module):
    """torchvision resnet18 layer shapes with an explicit inner width per stage (None: full)."""

    def __init__(self, inner=None, classes=1000):
        super().__init__()
        self.stem = nn.Sequential(_bn_conv(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 64
        for s, (cout, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2))):
            for i in range(2):
                blocks.append(BasicBlock(cin, cout, stride if i == 0 else 1, inner[s] if inner else cout))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


def export(name: str, inner, folder: Path):
    return export_net(lambda: ResNet18Widths(inner), folder / f"resnet18_{name}.onnx")


def _measure(model, args, target) -> dict:
    """onnxruntime (interleaved rounds) and replayed TVM for one variant."""
    import graphprune as gp
    from graphprune.targets.compile import compile_model
    from graphprune.targets.measure_local import measure_ort, measure_tvm_local
    t0 = time.monotonic()
    c = compile_model(model, target, tune_trials=args.trials, tune_time=args.tune_time)
    row = {"compile_s": round(time.monotonic() - t0, 1), "tuning": c.tuning, "macs": gp.count(model).macs,
           "maxdiff": _maxdiff(model, c)}
    ort, tvm = [], []
    for _ in range(args.rounds):   # alternating, so slow drift of the shared host hits both alike
        ort.append(measure_ort(model, repeats=args.repeats, threads=1).median_ms)
        tvm.append(measure_tvm_local(c, model, repeats=args.repeats).median_ms)
    row.update(ort_ms=float(np.median(ort)), tvm_ms=float(np.median(tvm)), ort_rounds=ort, tvm_rounds=tvm)
    return row


def markdown(rep: dict) -> str:
    rows = rep["variants"]
    ref = rows["m16"]
    lines = ["| variant | inner widths | multiple of | M MACs | ORT ms | ORT ms / GMAC | TVM ms | TVM ms / GMAC "
             "| TVM vs m16 | ORT vs m16 | TVM/ORT | max abs diff vs ORT |", "|---" * 12 + "|"]
    for name, r in rows.items():
        mult = 16 if all(w % 16 == 0 for w in VARIANTS.get(name, (1,))) else 8
        widths = "-".join(map(str, VARIANTS[name])) if name in VARIANTS else "full"
        lines.append(f"| {name} | {widths} | {mult if name in VARIANTS else '-'} | {r['macs'] / 1e6:.0f} | "
                     f"{r['ort_ms']:.2f} | {r['ort_ms'] / r['macs'] * 1e9:.2f} | {r['tvm_ms']:.2f} | "
                     f"{r['tvm_ms'] / r['macs'] * 1e9:.2f} | {r['tvm_ms'] / ref['tvm_ms']:.3f} | "
                     f"{r['ort_ms'] / ref['ort_ms']:.3f} | {r['tvm_ms'] / r['ort_ms']:.2f} | {r['maxdiff']:.1e} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="folder for the models and the tuning cache")
    p.add_argument("--base-cache", help="a GRAPHPRUNE_CACHE folder holding an x86-1core resnet18 base to copy")
    p.add_argument("--trials", type=int, default=512)
    p.add_argument("--tune-time", default=None, help="time budget for tuning the full model when there is no base")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-doc", action="store_true")
    p.add_argument("--note", default="")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = "1"
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    if args.base_cache and not cache.exists():
        shutil.copytree(Path(args.base_cache) / "tuning", cache / "tuning")
        for old in next((cache / "tuning").iterdir()).glob("replayed*"):
            shutil.rmtree(old)   # replays are made here
    os.environ["GRAPHPRUNE_CACHE"] = str(cache.resolve())
    target = _target(1)
    load0, t0 = os.getloadavg()[0], time.monotonic()
    rep = {"variants": {}}
    base = export("full", None, work)
    rep["variants"]["full"] = _measure(base, args, target)   # tunes the base when the cache has none
    print(json.dumps({"full": rep["variants"]["full"]}), flush=True)
    for name, inner in VARIANTS.items():
        rep["variants"][name] = _measure(export(name, inner, work), args, target)
        print(json.dumps({name: rep["variants"][name]}), flush=True)
    from graphprune.targets.tuning.records import database_dir
    runs = (database_dir(target) / "base" / "tuning_runs.jsonl").read_text().splitlines()
    rep["base_run"] = json.loads(runs[-1])
    (work / "report.json").write_text(json.dumps(rep, indent=1))
    md = markdown(rep)
    print(md)
    if not args.no_doc:
        b = rep["base_run"]
        note = (f"Produced by `.venv/bin/python tools/bench_channel_step.py {' '.join(argv)}` on "
                f"{time.strftime('%Y-%m-%d')} in {(time.monotonic() - t0) / 60:.0f} min: {os.cpu_count()} CPUs, load "
                f"average {load0:.1f} before and {os.getloadavg()[0]:.1f} after (shared host); batch 1, 224x224, "
                f"random weights, 1 thread for both runtimes, medians of {args.rounds} alternating rounds of "
                f"{args.repeats} runs. Base: the full model, {b['trials']} trials in {b['seconds']} s "
                f"({b['pipeline']}, {b['time']}); the full model's own build: {rep['variants']['full']['tuning']}."
                + (f" {args.note}" if args.note else ""))
        update_section(ROOT / "docs/latency.md", "bench_channel_step", f"{note}\n\n{md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
