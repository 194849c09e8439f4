#!/usr/bin/env python
"""Which third-party ONNX models TVM imports, compiles for arm-a72, and runs like onnxruntime.

For each model (default: every third-party *.onnx under .cache/models/, fetched by
tools/fetch_real_models.sh; the torchvision zoo exported here is left out, as in
tools/coverage_thirdparty.py, whose table this one completes):

1. `graphprune bench MODEL --backend tvm --tune-trials 0` (subprocess, as a user runs it):
   imports and compiles for this host, then times; its one-line error when it cannot.
2. `graphprune compile MODEL --target x86 -o m.so`, loaded here and run on the same random inputs
   as onnxruntime on the original model: the max abs difference, and whether it is within
   float tolerance of each output (max |diff| <= 1e-3 * max |ref|, NaN fails).
3. `graphprune compile MODEL --target arm-a72 -o m.so` (cross-linked with aarch64-linux-gnu-gcc):
   the library must be an aarch64 ELF.

Inputs with dynamic dims: the shapes the models are trained for (coverage_thirdparty.KNOWN_SHAPES,
passed as --input-shape), else graphprune's one rule (batch 1, other dims 64); integer inputs
take coverage_thirdparty.known_values (silero's sample rate). The table goes into
docs/latency.md (section tvm_import_coverage).

    .venv/bin/python tools/tvm_import_coverage.py [MODEL.onnx ...] [--no-docs]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import update_section  # noqa: E402
from coverage_thirdparty import KNOWN_SHAPES, OURS, known_values  # noqa: E402

PY = sys.executable
EM_AARCH64 = 183


def _cli(args: list[str], env: dict, timeout: float) -> tuple[int, str, str, float]:
    t0 = time.monotonic()
    try:
        p = subprocess.run([PY, "-m", "graphprune", *args], capture_output=True, text=True, env=env,
                           timeout=timeout, cwd=ROOT)
        return p.returncode, p.stdout, p.stderr, time.monotonic() - t0
    except subprocess.TimeoutExpired:
        return -1, "", f"timed out after {timeout:g} s", time.monotonic() - t0


def _err(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "").replace("graphprune: error: ", "").replace("|", "/")[:160]


def _shape_args(model: Path) -> list[str]:
    return [f"--input-shape={k}={','.join(map(str, v))}" for k, v in KNOWN_SHAPES.get(model.stem, {}).items()]


def _max_diff(model_path: Path, lib: Path) -> tuple[float, bool]:
    """(max abs diff over outputs, all within tolerance) of the library vs onnxruntime."""
    import onnx
    import onnxruntime as ort
    import tvm
    from tvm import relax
    from graphprune.targets.inputs import random_inputs
    m = onnx.load(str(model_path))
    feeds = random_inputs(m, seed=1, input_shapes=KNOWN_SHAPES.get(model_path.stem))
    values = known_values(model_path.stem)
    for name, v in feeds.items():
        if not np.issubdtype(v.dtype, np.floating) and name in values:
            feeds[name] = np.full(v.shape, values[name], v.dtype)
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(v) for v in feeds.values()])
    outs = [out.numpy()] if isinstance(out, tvm.runtime.Tensor) else [o.numpy() for o in out]
    if len(outs) != len(ref):
        return float("nan"), False
    worst, ok = 0.0, True
    for a, b in zip(outs, ref):
        b = np.asarray(b)
        if a.shape != b.shape:
            return float("nan"), False
        d = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
        scale = float(np.max(np.abs(b))) if b.size else 0.0
        ok = ok and np.isfinite(d) and d <= 1e-3 * max(scale, 1e-6)
        worst = max(worst, d) if np.isfinite(d) else float("nan")
    return worst, bool(ok)


def check(model: Path, work: Path, env: dict, timeout: float) -> dict:
    row = {"model": str(model.relative_to(ROOT) if model.is_relative_to(ROOT) else model)}
    rc, out, err, secs = _cli(["bench", str(model), "--backend", "tvm", "--tune-trials", "0", "--repeats", "3",
                               "--no-cache", "--json", *_shape_args(model)], env, timeout)
    row["bench_s"] = round(secs, 1)
    row["imports"] = rc == 0
    row["bench"] = json.loads(out)["median_ms"] if rc == 0 else None
    row["bench_error"] = "" if rc == 0 else f"exit {rc}: {_err(err)}"
    lib = work / (model.stem + "_x86.so")
    rc, _, err, secs = _cli(["compile", str(model), "--target", "x86", "-o", str(lib), *_shape_args(model)], env,
                          timeout)
    row["diff"], row["matches"] = (_max_diff(model, lib) if rc == 0 else (None, False))
    row["compile_error"] = "" if rc == 0 else f"exit {rc}: {_err(err)}"
    arm = work / (model.stem + "_a72.so")
    rc, _, err, secs = _cli(["compile", str(model), "--target", "arm-a72", "-o", str(arm), *_shape_args(model)],
                             env, timeout)
    row["arm_s"] = round(secs, 1)
    row["arm"] = rc == 0 and int.from_bytes(arm.read_bytes()[18:20], "little") == EM_AARCH64
    row["arm_error"] = "" if rc == 0 else f"exit {rc}: {_err(err)}"
    return row


def table(rows: list[dict], argv: list[str]) -> str:
    lines = [f"Produced by `.venv/bin/python tools/tvm_import_coverage.py {' '.join(argv)}` on "
             f"{time.strftime('%Y-%m-%d')} ({os.cpu_count()} CPUs shared with other jobs: seconds are noisy). "
             "Inputs: the shapes the models are trained for where their dims are dynamic (tools/"
             "coverage_thirdparty.py KNOWN_SHAPES), else batch 1 and 64 for other dynamic dims; random inputs; "
             "untuned TVM (bench: median of 3 runs, ms).", "",
             "| model | imports (bench --backend tvm) | bench ms | max abs diff vs ORT | within tolerance | compiles arm-a72 "
             "| bench s | arm-a72 s | error |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        diff = "-" if r["diff"] is None else f"{r['diff']:.1e}"
        err = r["bench_error"] or r["compile_error"] or r["arm_error"]
        ms = "-" if r["bench"] is None else f"{r['bench']:.1f}"
        lines.append(f"| {r['model']} | {'yes' if r['imports'] else 'no'} | {ms} | {diff} | {'yes' if r['matches'] else 'no'} "
                     f"| {'yes' if r['arm'] else 'no'} | {r['bench_s']} | {r['arm_s']} | {err} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", type=Path)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per command")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--no-docs", action="store_true", help="do not update docs/latency.md")
    args = ap.parse_args()
    models = [m.resolve() for m in args.models] or sorted(
        p for p in (ROOT / ".cache" / "models").glob("*/*.onnx") if p.parent.name not in OURS)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tvm-cov-") as tmp:
        env = dict(os.environ, GRAPHPRUNE_CACHE=str(Path(tmp) / "cache"))
        for m in models:
            rows.append(check(m, Path(tmp), env, args.timeout))
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if not args.no_docs:
        update_section(ROOT / "docs" / "latency.md", "tvm_import_coverage", table(rows, sys.argv[1:]),
                       title="# Latency on real targets\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
