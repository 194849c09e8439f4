"""Prune every model in the local zoo and report what works: docs/coverage.md.

Why: the claim "graphprune prunes real CNNs" is only as good as the set of
graphs it has been run on. This script runs the whole pipeline on each model
and checks what a user would check:

  load -> analyse -> choose(ratio, l1) -> prune
  -> onnx.checker.check_model(pruned, full_check=True)
  -> onnxruntime runs original and pruned on the same random input,
     and every output keeps its shape
  -> gp.verify (pruned vs. the original with the pruned channels zeroed, at every
     intermediate tensor, each at its own scale: see graphprune/verify.py)
  -> gp.count (MACs and parameters, after / before)

Models (see tools/export_torchvision.py and tools/fetch_real_models.sh):
  .cache/models/torchvision/*.{ts,dynamo}.onnx   torchvision zoo, both exporters
  .cache/models/rapidocr/*.onnx                  PaddleOCR via paddle2onnx
  onnx/backend/test/data/light/*.onnx            inside the installed onnx wheel
                                                 (their all-equal weights are redrawn,
                                                 seeded, so verify compares real outputs)

Each model runs in its own subprocess (with a time limit), so a crash, a hang
or a memory blow-up in one model is recorded as that model's failure and the
run goes on. Input is seeded (numpy default_rng(0)), so rerunning the script
on the same commit reproduces every number. Symbolic input dims: batch -> 1,
other unknown dims -> 64 (or --shape; a few real models have known shapes).

Outputs: a markdown table printed and written to docs/coverage.md (between its
`coverage-zoo` markers; other sections of that file belong to other tools), and the
full records (with traceback tails of failures) in .cache/coverage.json.

Usage: .venv/bin/python tools/coverage.py [--models resnet50,densenet121.ts] [--ratio 0.3]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from _docs import update_section  # noqa: E402
from graphprune.verify import DEFAULT_RELATIVE_TOLERANCE  # noqa: E402
CACHE = ROOT / ".cache"
MD_OUT = ROOT / "docs" / "coverage.md"
JSON_OUT = CACHE / "coverage.json"

# Real models whose free dims must take specific values (PP-OCR recogniser and
# classifier are trained for 48-pixel-high text lines).
KNOWN_SHAPES = {
    "ch_PP-OCRv4_rec_infer": [1, 3, 48, 320],
    "ch_ppocr_mobile_v2.0_cls_infer": [1, 3, 48, 192],
}


def discover() -> list[dict]:
    """All zoo models as {id, model, source, path}; id is what --models matches."""
    import onnx  # only for its install path

    found = []
    for p in sorted((CACHE / "models" / "torchvision").glob("*.onnx")):
        name, exporter = p.name[: -len(".onnx")].rsplit(".", 1)
        found.append({"model": name, "source": f"torchvision/{exporter}", "path": str(p)})
    for p in sorted((CACHE / "models" / "rapidocr").glob("*.onnx")):
        found.append({"model": p.stem, "source": "rapidocr", "path": str(p)})
    light = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
    for p in sorted(glob.glob(os.path.join(light, "*.onnx"))):
        found.append({"model": Path(p).stem.replace("light_", ""), "source": "onnx-light", "path": p})
    for r in found:
        r["id"] = f"{r['model']}.{r['source'].split('/')[-1]}"
    return found


def select(models: list[dict], spec: str | None) -> list[dict]:
    """--models a,b: a term is a model name, an id (resnet50.ts) or a source (rapidocr, torchvision/ts)."""
    if not spec:
        return models
    terms = {t for t in spec.split(",") if t}
    return [m for m in models
            if terms & {m["model"], m["id"], m["source"], m["source"].split("/")[0]}]


# --------------------------------------------------------------- child process
def feeds_for(model, name: str, shape_override: list[int] | None):
    """Seeded random inputs for the graph inputs that are not initializers."""
    import numpy as np
    from onnx import helper

    rng = np.random.default_rng(0)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.dim_value > 0 else None for d in tt.shape.dim]
        fixed = shape_override or KNOWN_SHAPES.get(name)
        if fixed and len(fixed) == len(dims):
            dims = [d if d is not None else f for d, f in zip(dims, fixed)]
        dims = [d if d is not None else (1 if i == 0 else 64) for i, d in enumerate(dims)]
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(dims).astype(dtype)
        else:
            feeds[vi.name] = rng.integers(0, 2, dims).astype(dtype)
    return feeds


def randomise_constant_weights(model) -> int:
    """Redraw Conv/Gemm/MatMul weights whose elements are all equal; returns how many.

    The onnx wheel's light models store every weight as ConstantOfShape(0.02):
    all channels are identical, every output is the same constant, and gp.verify
    compares constants. Seeded He-normal weights make the comparison meaningful.
    """
    import numpy as np
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    inits = {t.name: t for t in model.graph.initializer}
    n = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        t = inits.get(node.input[1])
        if t is None:
            continue
        w = numpy_helper.to_array(t)
        if w.size < 2 or w.min() != w.max():
            continue
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        fan_in = w.size // w.shape[0] if node.op_type == "Conv" or trans_b else w.shape[0]
        new = (rng.standard_normal(w.shape) * np.sqrt(2.0 / fan_in)).astype(w.dtype)
        t.CopyFrom(numpy_helper.from_array(new, t.name))
        n += 1
    return n


def run_ort(model, feeds):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def one(path: str, model_name: str, ratio: float, shape: list[int] | None, randomise: bool) -> dict:
    """Run the pipeline on one model; return the record. Raises nothing."""
    import traceback

    import numpy as np
    import onnx

    import graphprune as gp

    rec: dict = {"stage": "load"}
    t0 = time.perf_counter()
    try:
        m = gp.load(path)
        if randomise:
            rec["randomised_weights"] = randomise_constant_weights(m)
        rec["stage"] = "analyse"
        t1 = time.perf_counter()
        an = gp.analyse(m)
        rec["groups_total"] = len(an.groups)
        rec["groups_prunable"] = sum(1 for g in an.groups if g.prunable)
        rec["stage"] = "choose"
        plan = gp.choose(an, ratio=ratio, criterion="l1", round_to=1)
        rec["stage"] = "prune"
        pruned = gp.prune(m, plan)
        rec["prune_s"] = time.perf_counter() - t1  # analyse + choose + prune
        rec["stage"] = "count"
        c0, c1 = gp.count(m), gp.count(pruned)
        rec["mac_ratio"] = c1.macs / c0.macs if c0.macs else None
        rec["param_ratio"] = c1.params / c0.params if c0.params else None
        rec["stage"] = "checker"
        onnx.checker.check_model(pruned, full_check=True)
        rec["stage"] = "ort"
        feeds = feeds_for(m, model_name, shape)
        outs0 = run_ort(m, feeds)
        outs1 = run_ort(pruned, feeds)
        rec["stage"] = "shape"
        bad = [(i, a.shape, b.shape) for i, (a, b) in enumerate(zip(outs0, outs1)) if a.shape != b.shape]
        if len(outs0) != len(outs1) or bad:
            raise AssertionError(f"output shapes changed: {len(outs0)} vs {len(outs1)} outputs, "
                                 f"(index, before, after) {bad}")
        rec["stage"] = "verify"
        rep = gp.verify(m, plan, pruned)
        # a vacuous comparison is worth saying: outputs that carry no information
        rec["outputs_constant"] = all(o.size == 0 or float(np.ptp(o)) == 0.0 for o in outs0)
        rec["output_scale"] = max((float(np.abs(o).max()) for o in outs0 if o.size), default=0.0)
        rec["max_abs_diff"] = float(rep.max_abs_diff)
        rec["rel_diff"] = float(rep.max_rel_diff)
        rec["worst_tensor"] = rep.worst_tensor
        rec["tensors_compared"] = rep.tensors_compared
        rec["tensors_skipped"] = rep.tensors_skipped
        rec["skipped"] = dict(rep.skipped)
        rec["verify_passed"] = bool(rep.passed)
        rec["inexact"] = [str(r) for r in (rep.inexact or [])]
        rec["stage"] = "done"
        rec["ok"] = bool(rep.passed)
        if not rep.passed:
            rec["error"] = f"verify failed: {rep.summary()[:300]}"
        if rec["outputs_constant"]:
            rec["warning"] = "original outputs are constant on the test input"
    except Exception as exc:
        rec["ok"] = False
        rec["error"] = f"{rec['stage']}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        rec["traceback"] = traceback.format_exc().splitlines()[-25:]
    rec["time_s"] = time.perf_counter() - t0
    return rec


# -------------------------------------------------------------- parent process
def run_child(entry: dict, args) -> dict:
    cmd = [sys.executable, __file__, "--_one", entry["path"], "--_name", entry["model"],
           "--ratio", str(args.ratio)]
    if entry["source"] == "onnx-light":
        cmd.append("--_randomise")
    if args.shape:
        cmd += ["--shape", args.shape]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timeout after {args.timeout}s", "time_s": args.timeout}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr or p.stdout).strip().splitlines()[-20:]
        return {"ok": False, "error": f"child exited {p.returncode}: {tail[-1] if tail else ''}"[:300],
                "traceback": tail, "time_s": time.perf_counter() - t0}
    return json.loads(lines[-1])


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def table(records: list[dict]) -> str:
    rows = ["| model | source | groups (prunable/total) | MACs after/before | params after/before "
            "| tensors compared (skipped) | worst relative diff | largest output | passed | time s | note |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        groups = f"{r['groups_prunable']}/{r['groups_total']}" if "groups_total" in r else "-"
        note = r.get("error", "") or r.get("warning", "")
        if r.get("randomised_weights"):
            note = f"{r['randomised_weights']} constant weights redrawn (seeded). " + note
        if not note and r.get("inexact"):
            note = "inexact: " + "; ".join(r["inexact"])[:150]
        if r.get("skipped"):
            note = (note + " " if note else "") + "skipped: " + ", ".join(f"{n} {k}" for k, n in r["skipped"].items())
        note = note.replace("|", "\\|")
        compared = f"{r['tensors_compared']} ({r.get('tensors_skipped', 0)})" if "tensors_compared" in r else "-"
        rows.append(f"| {r['model']} | {r['source']} | {groups} | {fmt(r.get('mac_ratio'), '.3f')} "
                    f"| {fmt(r.get('param_ratio'), '.3f')} | {compared} | {fmt(r.get('rel_diff'), '.2e')} "
                    f"| {fmt(r.get('output_scale'), '.1e')} | {'yes' if r.get('ok') else '**no**'} "
                    f"| {fmt(r.get('time_s'), '.1f')} | {note} |")
    return "\n".join(rows)


def git_head() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=ROOT).stdout.strip() or "?"
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", help="comma-separated model names or ids (resnet50, resnet50.dynamo)")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--shape", help="input shape for unknown dims, e.g. 1x3x64x64")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per model")
    ap.add_argument("--_one", help=argparse.SUPPRESS)
    ap.add_argument("--_name", help=argparse.SUPPRESS)
    ap.add_argument("--_randomise", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    shape = [int(s) for s in args.shape.split("x")] if args.shape else None

    if args._one:  # child: one model, one JSON line on stdout
        print(json.dumps(one(args._one, args._name, args.ratio, shape, args._randomise)))
        return 0

    entries = select(discover(), args.models)
    if not entries:
        print("no models found: run tools/export_torchvision.py and tools/fetch_real_models.sh", file=sys.stderr)
        return 1
    commit = git_head()
    records = []
    for e in entries:
        rec = {"model": e["model"], "source": e["source"], **run_child(e, args), "commit": commit}
        records.append(rec)
        status = "ok  " if rec.get("ok") else "FAIL"
        print(f"{status} {e['id']:<40} {fmt(rec.get('time_s'), '6.1f')}s {rec.get('error', '')}", flush=True)

    # A --models run updates its rows in the last full run's records, so
    # rerunning only the failing models keeps the table whole.
    if args.models and JSON_OUT.exists():
        old = json.loads(JSON_OUT.read_text())
        new = {(r["model"], r["source"]): r for r in records}
        merged = [new.pop((r["model"], r["source"]), r) for r in old]
        records = merged + list(new.values())
        records = [r for r in records if r.get("ratio", args.ratio) == args.ratio]
    for r in records:
        r.setdefault("ratio", args.ratio)

    n_ok = sum(bool(r.get("ok")) for r in records)
    commits = sorted({r.get("commit", "?") for r in records})
    body = (f"## torchvision, PaddleOCR and the onnx wheel's models: prune at ratio {args.ratio} (l1)\n\n"
            f"Generated by `.venv/bin/python tools/coverage.py"
            f"{' --ratio ' + str(args.ratio) if args.ratio != 0.3 else ''}` "
            f"(commit {', '.join(commits)}): {n_ok}/{len(records)} models pass: "
            f"`onnx.checker.check_model(full_check=True)` accepts the pruned model, onnxruntime runs it "
            f"with unchanged output shapes, and `gp.verify` passes.\n\n"
            f"What `gp.verify` compares: the pruned model against the original with the removed channels "
            f"zeroed, on seeded random input, at EVERY intermediate tensor both models have (not only the "
            f"outputs): the reference's surviving channels (sliced along the tensor's channel axis with the "
            f"plan's mask) against the pruned tensor. Each tensor is judged at its own scale, the magnitude "
            f"of the terms that produced it (its own largest value; for sums, pass-through ops and "
            f"products, their operands'; see graphprune/verify_scale.py), with no absolute floor, and fails "
            f"above a relative difference of {DEFAULT_RELATIVE_TOLERANCE:g}; NaN/Inf fail unless they match "
            f"exactly. `tensors compared (skipped)`: tensors compared, and tensors in both models not "
            f"compared (integer shape computations; channel mapping unknown), counted by reason in the note. "
            f"`worst relative diff`: the largest per-tensor relative difference. `largest output`: the "
            f"largest |value| of the original's outputs, to show the scale an output-only check would have "
            f"seen. MACs and params are after/before (`gp.count`); time is the whole per-model check "
            f"(load, analyse, prune with its onnxruntime run, count, checker, two onnxruntime runs, "
            f"verify) on a 2-core machine shared with other jobs. Models: tools/export_torchvision.py "
            f"(random weights, seed 0), tools/fetch_real_models.sh, the onnx wheel.\n\n")
    md = body + table(records) + "\n"
    print()
    print(md)
    MD_OUT.parent.mkdir(exist_ok=True)
    update_section(MD_OUT, "coverage-zoo", md, title="# Coverage: graphprune on models nobody here wrote\n")
    CACHE.mkdir(exist_ok=True)
    JSON_OUT.write_text(json.dumps(records, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
