#!/usr/bin/env python
"""Where a compiled TVM library spends its time: per kernel, tuned convolutions against the rest.

Compiles MODEL for x86 (tuned against the database under --work, the folder
tools/bench_tvm_vs_ort.py --work left, or tuning it there with --trials), runs it in the Relax
VM on one thread with an instrument that times every call the VM makes (each fused kernel,
each VM builtin), and prints the time per kernel and per kind: `conv`/`matmul` (the tasks
MetaSchedule tunes), every other fused kernel by name (layout transposes, elementwise ops the
tuned pipeline does not fuse), and the VM's own builtins. The instrument's per-call overhead
makes the sum larger than the timed latency; read the shares.

    .venv/bin/python tools/profile_tvm.py /tmp/gpbench/mobilenet_v2_1.0.onnx --work /tmp/gpbench/mobilenet_v2-new-base
    GRAPHPRUNE_TVM_FRONTEND=tvm .venv/bin/python tools/profile_tvm.py ...   # TVM's own ONNX converters

Why it exists: it showed that TVM 0.27's Clip converter (an opaque TOPI call) made the NHWC
pipeline wrap each ReLU6 of MobileNetV2 in two transposes, most of the tuned library's time
(targets/onnx_converters.py, docs/latency.md).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def kind(name: str) -> str:
    if "conv2d" in name:
        return "conv (tuned tasks)"
    if "matmul" in name:
        return "matmul (tuned tasks)"
    if name.startswith("vm.builtin."):
        return "VM builtins"
    return "other kernels: " + re.sub(r"\d+", "", name)


def profile(compiled, x, repeats: int) -> dict:
    import numpy as np
    import tvm
    from tvm import relax
    dev = tvm.cpu()
    vm = relax.VirtualMachine(compiled.executable, dev)
    args = [tvm.runtime.tensor(np.ascontiguousarray(v), dev) for v in x.values()]
    for _ in range(3):
        vm["main"](*args)
    total, calls, started = collections.defaultdict(float), collections.Counter(), {}

    def instrument(func, name, before, ret, *a):
        if before:
            started[name] = time.perf_counter()
        else:
            total[name] += time.perf_counter() - started.pop(name)
            calls[name] += 1
        return 0
    vm.set_instrument(instrument)
    t0 = time.perf_counter()
    for _ in range(repeats):
        vm["main"](*args)
    wall = (time.perf_counter() - t0) / repeats
    per = {k: v / repeats * 1e3 for k, v in total.items()}
    kinds = collections.defaultdict(float)
    for k, v in per.items():
        kinds[kind(k)] += v
    return {"wall_ms": wall * 1e3, "instrumented_ms": sum(per.values()),
            "kinds_ms": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
            "kernels": [{"name": k, "ms": v, "calls": calls[k] // repeats}
                        for k, v in sorted(per.items(), key=lambda kv: -kv[1])]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--work", required=True, help="cache folder holding (or to hold) the tuning database")
    ap.add_argument("--trials", type=int, default=1024, help="tuning trials when the database lacks the model")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--json", help="write the profile here")
    args = ap.parse_args(argv)
    os.environ["GRAPHPRUNE_CACHE"] = args.work
    os.environ["TVM_NUM_THREADS"] = "1"
    import onnx

    from bench_tvm_vs_ort import _target
    from graphprune.targets import compile_model
    from graphprune.targets.inputs import random_inputs
    from graphprune.targets.onnx_converters import frontend
    model = onnx.load(args.model)
    c = compile_model(model, _target(1), tune_trials=args.trials)
    res = {"model": args.model, "frontend": frontend(), "tuning": c.tuning,
           **profile(c, random_inputs(model, seed=0), args.repeats)}
    print(f"{Path(args.model).name}, ONNX converters {res['frontend']}; {res['tuning']}")
    print(f"timed {res['wall_ms']:.2f} ms per run with the instrument, {res['instrumented_ms']:.2f} ms inside calls")
    for k, v in res["kinds_ms"].items():
        print(f"  {v:8.3f} ms  {100 * v / res['instrumented_ms']:5.1f} %  {k}")
    print("top kernels:")
    for r in res["kernels"][:args.top]:
        print(f"  {r['ms']:8.3f} ms  x{r['calls']:<3d} {r['name']}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
