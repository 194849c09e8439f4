#!/usr/bin/env python
"""`graphprune optimize` on trained non-classifiers from public packages, with unlabelled data only.

Per model (--models, in this order by default):
  ppocr_det  rapidocr's PP-OCRv4 text detector (DB head, MobileNetV3-style backbone, 3 BNs),
             timed and searched at --input-shape 1,3,224,224 on rendered text (metric:
             text-boxes, the F1 of its DB text boxes against the original's, IoU >= 0.5);
  u2netp     rembg's salient-object segmenter at 128x128 (a copy of u2netp.onnx with its input
             set to 128x128 -- the graph computes every Resize target from shapes, so it is the
             same network at a smaller input; written to OUT, never committed) on synthetic
             scenes (metric: saliency, 1 - MAE of the normalised map vs the original's);
  slider     captcha-recognizer's slider.onnx (YOLO11s-seg, 640x640) on slider-captcha-like
             scenes (metric: detection, mAP@0.5 vs the original's boxes).
Images, epochs, timed runs, slack and budget are per model (MODELS, DEFAULTS): the two slow
models get fewer images so that the whole run stays near 30 minutes on 2 shared cores.
For each:
  (a) `optimize` (Python API): objectives latency,error, --max-error-increase 0.01 holding
      AFTER recovery (--recovery-slack), distillation recovery from the original (no labels),
      --bn-recalibrate when the model has BatchNormalization (not for ppocr_det: recalibrating
      its 3 BNs on these images costs the unpruned model 0.11 mIoU; reported in the doc);
  (b) uniform L1 at the largest ratio (0.05 grid) whose metric after the same recovery is within
      0.01 of the original (tools/bench_optimize.uniform_l1_matched, the same rule);
then the original and each delivered model are timed side by side (graphprune.targets.paired:
alternating runs in one process, same feeds, --threads), speed-up = median per-pair ratio with
its IQR. The metric is always measured on the validation folder, which the recovery never sees.
All images are generated here (tools/_synthetic_images.py), none downloaded.

    .venv/bin/python tools/bench_unlabelled.py                # all three; ~30 min on 2 shared cores
    .venv/bin/python tools/bench_unlabelled.py --models ppocr_det

Writes OUT/<model>/{a,b,result.json}, OUT/<model>.png and docs/bench_unlabelled.md (the
table between markers, one section per model run) with docs/bench_unlabelled_<model>.png.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import graphprune as gp  # noqa: E402
from _docs import update_section  # noqa: E402
from _real_models import (DEFAULTS, MODELS, image_options, model_file, search_options, searched_groups,  # noqa: E402
                          setting, write_data)
from bench_optimize import log, uniform_l1, uniform_l1_matched  # noqa: E402
from graphprune.errors import GraphpruneError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "bench_unlabelled.md"
TITLE = "# Optimising trained non-classifiers without labels\n"


def _parser():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="ppocr_det,u2netp,slider")
    ap.add_argument("-o", "--out", default="out/bench_unlabelled")
    ap.add_argument("--val", type=int, default=None,
                    help="validation images per model (search + reported metric; default: the model's, 48 for "
                         "ppocr_det, fewer for the slower u2netp and slider)")
    ap.add_argument("--train", type=int, default=None, help="training images per model (recovery; default: 2x val)")
    ap.add_argument("--budget", type=int, default=None, help="optimize's --budget (default 150)")
    ap.add_argument("--max-drop", type=float, default=0.01)
    ap.add_argument("--recovery-slack", type=float, default=None,
                    help="candidates may lose max-drop + this before recovery (default 0.1; ppocr_det 0.02: "
                         "recovery never brought its fastest members within 0.26 back to 0.99)")
    ap.add_argument("--recovery-tries", type=int, default=2)
    ap.add_argument("--epochs", type=float, default=None, help="recovery epochs (default 2, slider 1)")
    ap.add_argument("--finetune-steps", type=int, default=1)
    ap.add_argument("--lr", type=float, default=None,
                    help="recovery learning rate (default 0.01; 0.001 for slider and 1e-5 for u2netp, which have "
                         "no BN: SGD diverges on u2netp at lr >= 1e-4, docs/bench_unlabelled.md)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed runs per candidate in the search (default 10, slider 3, ppocr_det 30: 10 were noise "
                         "on a loaded host)")
    ap.add_argument("--pairs", type=int, default=40, help="alternating pairs in the final side-by-side timing")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    return ap


def _data(name, spec, args, out: Path):
    return write_data(spec, _setting(args, spec, "val"), _setting(args, spec, "train"), args.seed, out)


_model_file, _setting, _image_options = model_file, setting, image_options   # (tools/_real_models.py)


def _search(model_path, val_dir, train_dir, spec, has_bn, args, out):
    from graphprune.search.optimize import OptimizeOptions, run_optimize
    o = OptimizeOptions(**search_options(model_path, val_dir, train_dir, spec, has_bn, args, out / "a"))
    try:
        s = run_optimize(o, log=lambda m: log(f"(a) {m}"))
    except GraphpruneError as e:   # e.g. no candidate meets the bound: the table says so
        return None, str(e)
    s.pop("_measured", None)
    return s, None


def _metric_fns(model, val, train, spec, has_bn, args):
    """(sweep, judge): error = 1 - metric vs the original on the validation images. The sweep's
    candidates are judged after BN recalibration on the training images when the model has BNs (as
    --bn-recalibrate judges (a)'s); recovered models are judged as they are delivered."""
    from graphprune.metrics import get_metric, reference_outputs
    from graphprune.metrics.runner import evaluate
    from graphprune.recovery import recalibrate_bn
    metric = get_metric(spec["metric"], model, has_labels=False)
    ref = reference_outputs(model, val.x, metric, None, threads=args.threads)
    calib = train.x[:256]

    def judge(m):
        return 1.0 - evaluate(m, val.x, metric, ref, None, threads=args.threads)

    def sweep(m):
        return judge(recalibrate_bn(m, calib, args.batch_size)[0] if has_bn else m)
    return sweep, judge


def _reconstruct_x(spec, train, args):
    """The training images (a) refits its candidates on (optimize's own fixed-seed subset), or None."""
    if not spec.get("reconstruct"):
        return None
    from graphprune.search.stages import fixed_subset
    return fixed_subset(train.x, spec["reconstruct"], args.seed + 13)


def _scored(path: Path, spec, train, args, out: Path) -> Path:
    """The model (a) searches: with spec["criterion"], a copy whose metadata holds that importance
    method's scores on the refit's training images (optimize then ranks channels by them)."""
    method = spec.get("criterion")
    if not method:
        return path
    from graphprune.importance import compute_importance
    x = _reconstruct_x(spec, train, args) if spec.get("reconstruct") else train.x
    model = onnx.load(path)
    dst = out / f"{path.stem}_{method}.onnx"
    onnx.save(compute_importance(model, (x, None), method, samples=None).to_model(model), dst)
    log(f"(a) channels ranked by `{method}` importance on {len(x)} training images ({dst.name})")
    return dst


def _refit_text(r) -> str:
    """The --reconstruct and searched-groups settings of a model's run ('' when off)."""
    txt = ""
    if r.get("reconstruct"):
        txt += (f"--reconstruct on {r['reconstruct']} training images ((a)'s candidates and (b)'s ratios judged "
                "refitted, both refitted again before training); ")
    if r.get("criterion"):
        txt += f"(a) ranks channels by `{r['criterion']}` importance on those images, (b) by L1; "
    if r.get("search_start", "auto") != "auto":
        txt += f"(a) starts {r['search_start']} the original (`--search-start {r['search_start']}`); "
    if r.get("searched_groups"):
        txt += (f"(a) searches the {len(r['searched_groups'])} groups whose halving saves >= {r.get('search_share', 0):.0%} of the MACs "
                f"({', '.join(map(str, r['searched_groups']))}), (b) prunes every group; ")
    return txt


def _refit(model, rx, seed):
    from graphprune.recovery.reconstruct import reconstruct
    return lambda pruned, plan: reconstruct(model, plan, pruned, rx, seed=seed)[0]


def _uniform(model, an, val, train, spec, has_bn, args):
    sweep, judge = _metric_fns(model, val, train, spec, has_bn, args)
    base_err = 0.0   # every metric here compares with the original's own outputs: the original scores 1
    rx = _reconstruct_x(spec, train, args)
    repair = None if rx is None else _refit(model, rx, args.seed)   # judged as (a) judges its candidates
    rows = uniform_l1(model, an, None, None, spec["step"], error_fn=sweep,
                      stop_error=base_err + args.max_drop + args.recovery_slack, label=spec["metric"], repair=repair)
    row, m, rec, tried = uniform_l1_matched(model, an, rows, base_err, args, train, val, error_fn=judge,
                                            distill_weight=1.0, reconstruct_x=rx)
    return row, m, rec, tried, rows, judge


def run_model(name, args, out_root: Path) -> dict:
    from graphprune.data import load_for_model
    from graphprune.targets.paired import paired_ort
    spec = MODELS[name]
    args = argparse.Namespace(**vars(args))
    args.epochs, args.repeats = _setting(args, spec, "epochs"), _setting(args, spec, "repeats")
    args.recovery_slack, args.budget = _setting(args, spec, "recovery_slack"), _setting(args, spec, "budget")
    args.lr = _setting(args, spec, "lr")
    out = out_root / name
    import os
    import shutil
    shutil.rmtree(out, ignore_errors=True)   # a fresh search: no journal, no cached latencies
    out.mkdir(parents=True)
    # a latency cache of this run only: a cached original timed on a quieter host would be compared
    # with candidates timed now (the search's front and its surrogate mix them)
    os.environ["GRAPHPRUNE_CACHE"] = str(out / "cache")
    t0 = time.time()
    path = _model_file(name, spec, out)
    model = gp.load(path)
    inp = model.graph.input[0].name
    shapes = {inp: spec["input_shape"]} if spec.get("input_shape") else None
    an = gp.analyse(model, input_shapes=shapes)
    # --bn-recalibrate when the model has BNs, unless measured to hurt (spec: ppocr_det, see the doc)
    has_bn = any(n.op_type == "BatchNormalization" for n in model.graph.node) and spec.get("bn_recalibrate", True)
    val_dir, train_dir = _data(name, spec, args, out_root)
    val, train = (load_for_model(p, model, **_image_options(spec), option=o)
                  for p, o in ((val_dir, "--data"), (train_dir, "--train-data")))
    log(f"{name}: {path.name}, {len(an.groups)} groups, BN {has_bn}, {len(val)} val / {len(train)} train images")
    args.group_bounds, searched = None, None
    if spec.get("search_share"):
        args.group_bounds, searched = searched_groups(model, an, spec["search_share"], spec["step"])
        log(f"{name}: searching the {len(searched)} groups whose halving saves >= {spec['search_share']:.0%} of the "
            f"MACs ({', '.join(map(str, searched))}); the others stay at full width")
    ta = time.time()
    s, a_fail = _search(_scored(path, spec, train, args, out), val_dir, train_dir, spec, has_bn, args, out)
    wall_a = time.time() - ta
    tb = time.time()
    row, b_model, b_rec, b_tried, b_rows, judge = _uniform(model, an, val, train, spec, has_bn, args)
    wall_b = time.time() - tb
    a_model = onnx.load(out / "a" / "best.onnx") if s else model
    timing = {k: paired_ort(model, m, repeats=args.pairs, threads=args.threads, seed=args.seed, input_shapes=shapes)
              for k, m in (("a", a_model), ("b", b_model))}
    macs0 = gp.count(model, input_shapes=shapes).macs
    res = {"model": name, "file": str(spec["path"]), "metric": spec["metric"], "bn_recalibrate": has_bn,
           "has_bn": any(n.op_type == "BatchNormalization" for n in model.graph.node),
           "input": spec.get("input_shape") or [1, 3, spec["size"], spec["size"]],
           "val_images": len(val), "train_images": len(train), "a_failed": a_fail, "epochs": args.epochs,
           "repeats": args.repeats, "max_drop": args.max_drop,
           "recovery_slack": args.recovery_slack, "channel_step": spec["step"], "budget": args.budget, "lr": args.lr,
           "reconstruct": spec.get("reconstruct"), "searched_groups": searched, "search_share": spec.get("search_share"),
           "criterion": spec.get("criterion"), "search_start": spec.get("search_start", "auto"),
           "a": _a_row(s) if s else None, "b": _b_row(row, b_rec, b_tried),
           "timing": timing, "macs_ratio": {k: gp.count(m, input_shapes=shapes).macs / macs0
                                            for k, m in (("a", a_model), ("b", b_model))},
           "b_sweep": [{"ratio": r["ratio"], "metric": 1 - r["error"]} for r in b_rows],
           "wall_s": {"a": wall_a, "b": wall_b, "total": time.time() - t0}}
    if res["has_bn"] and not has_bn:   # why the search does not recalibrate: what it does to the original
        from graphprune.recovery import recalibrate_bn
        res["bn_recal_original"] = 1 - judge(recalibrate_bn(model, train.x[:256], args.batch_size)[0])
    (out / "result.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    _plot(out_root / f"{name}.png", s, res)
    return res


def _a_row(s):
    rec, ch = s.get("recovery"), s["chosen"]
    return {"key": ch["key"], "metric_before": 1 - ch["error"],
            "metric_after": rec["accuracy_after"] if rec else 1 - ch["error"], "recovered": rec is not None,
            "reason": s["choice_reason"], "metric_info": s["metric"], "front": s["front"],
            "original_ms_search": s["baseline"]["latency_ms"], "final": s.get("final")}


def _b_row(row, rec, tried):
    if row is None:
        return {"ratio": None, "tried": tried}
    return {"ratio": row["ratio"], "metric_before": 1 - row["error"],
            "metric_after": rec["accuracy_after"] if rec else 1 - row["error"], "tried": tried}


def _plot(path, s, res):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.6))
    t = res["timing"]
    orig = t["a"]["original_ms"]
    if s:
        fr = sorted(s["front"], key=lambda r: r["latency_ms"])
        scale = orig / s["baseline"]["latency_ms"]   # search timings onto the side-by-side scale
        ax.plot([r["latency_ms"] * scale for r in fr], [1 - r["error"] for r in fr], "o-", ms=4, c="tab:blue",
                label="(a) Pareto front before recovery (search timings, rescaled)")
    ax.scatter([orig], [1.0], marker="*", s=140, c="k", zorder=5, label=f"original: {orig:.2f} ms")
    for k, mk, col, lab in (("a", "D", "tab:blue", "(a) optimize"), ("b", "s", "tab:orange", "(b) uniform L1")):
        r = res[k]
        if r and r.get("metric_after") is not None:
            ax.scatter([t[k]["delivered_ms"]], [r["metric_after"]], marker=mk, s=110, c=col, zorder=5,
                       label=f"{lab} after recovery: {r['metric_after']:.4f}, {t[k]['delivered_ms']:.2f} ms "
                             f"({t[k]['speedup']:.2f}x)")
    ax.axhline(1 - res.get("max_drop", 0.01), ls=":", c="0.5", label="original - 0.01")
    ax.set_ylim(max(0.0, 0.9), 1.005)
    ax.set_xlabel(f"latency [ms], onnxruntime x86, {t['a']['threads']} thread(s), input {res['input']}")
    ax.set_ylabel(f"{res['metric']} vs the original's outputs")
    ax.set_title(f"{res['model']}: optimize without labels vs uniform L1", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt_speed(t):
    lo, hi = t["speedup_iqr"]
    return f"{t['speedup']:.2f}x [{lo:.2f}, {hi:.2f}]"


def table_row(r) -> str:
    t, a, b = r["timing"], r["a"], r["b"]
    a_txt = (f"{a['metric_before']:.4f} -> {a['metric_after']:.4f}" if a else f"none: {r['a_failed']}")
    b_txt = (f"ratio {b['ratio']}: {b['metric_before']:.4f} -> {b['metric_after']:.4f}" if b["ratio"] is not None
             else "no ratio within budget (unpruned)")
    return (f"| {r['model']} | {r['metric']} (vs original = 1) | {'x'.join(map(str, r['input']))} | "
            f"{t['a']['original_ms']:.2f} | {t['a']['delivered_ms']:.2f} | {_fmt_speed(t['a'])} | {a_txt} | "
            f"{r['macs_ratio']['a']:.2f} | {t['b']['delivered_ms']:.2f} | {_fmt_speed(t['b'])} | {b_txt} | "
            f"{r['macs_ratio']['b']:.2f} | {r['wall_s']['total'] / 60:.1f} |")


def _bn_text(r) -> str:
    if r["bn_recalibrate"]:
        return "on"
    if not r.get("has_bn"):
        return "off (no BatchNormalization)"
    return ("off: recalibrating the unpruned model's BNs on these images alone loses "
            f"{1 - r['bn_recal_original']:.3f} of the metric" if r.get("bn_recal_original") is not None else "off")


def _a_text(r) -> str:
    a = r["a"]
    if not a:
        return f"nothing delivered ({r['a_failed']})"
    if r["macs_ratio"]["a"] == 1.0:
        tries = re.findall(r"(\d+\.\d+ %) -> (\d+\.\d+ %)", a["reason"])
        return ("no pruned configuration within 0.01 after recovery, delivered the original; recovered front "
                "members (before -> after): " + ("; ".join(f"{x} -> {y}" for x, y in tries) or "none"))
    return f"configuration {a['key']}"


def kept_rows(doc: Path, rerun: set) -> dict:
    """model -> (table row, notes line, command, plot line) of models in the doc's current section that
    this run does not redo: a run of one model leaves the others' measured rows as they were."""
    text = doc.read_text() if doc.exists() else ""
    begin, end = "<!-- bench_unlabelled:begin -->", "<!-- bench_unlabelled:end -->"
    if begin not in text or end not in text:
        return {}
    sec = text[text.index(begin):text.index(end)].splitlines()
    cmds = re.findall(r"`\.venv/bin/python (tools/bench_unlabelled\.py[^`]*)`", text[text.index(begin):text.index(end)])
    out = {}
    for name in MODELS:
        if name in rerun:
            continue
        row = next((ln for ln in sec if ln.startswith(f"| {name} |")), None)
        note = next((ln for ln in sec if ln.startswith(f"- {name}: ")), None)
        if row and note:
            cmd = next((c for c in cmds if re.search(rf"--models \S*\b{name}\b", c)), "tools/bench_unlabelled.py")
            out[name] = (row, note, cmd, f"![{name}: front and delivered models](bench_unlabelled_{name}.png)")
    return out


def markdown(results: list[dict], args, command: str, kept: dict | None = None) -> str:
    kept = kept or {}
    order = {k: i for i, k in enumerate(MODELS)}
    rows = sorted([(r["model"], table_row(r)) for r in results] + [(k, v[0]) for k, v in kept.items()],
                  key=lambda t: order[t[0]])
    L = ["| model | metric (reference) | input | original ms | (a) ms | (a) speed-up [IQR] | (a) metric before -> "
         "after recovery | (a) MACs ratio | (b) ms | (b) speed-up [IQR] | (b) uniform L1 metric before -> after | "
         "(b) MACs ratio | wall min |", "|" + "---|" * 13]
    L += [row for _, row in rows]
    L += ["", f"Latency: onnxruntime on this x86 host (2 shared cores), {args.threads} thread(s); original and "
          f"delivered model timed side by side, {args.pairs} alternating pairs, median (speed-up: median per-pair "
          "ratio, [interquartile range]). Metric 1.0 = identical to the original model's own outputs on the "
          "validation images (never used for recovery); budget: at most 0.01 below after recovery "
          f"(candidates may lose 0.01 + the slack below before it; at most {args.recovery_tries} recovered per method). "
          f"Recovery, the same for (a) and (b): distillation from the original, {args.finetune_steps} step(s), "
          f"batch {args.batch_size}; optimize: sensitivity at ratio 0.5.", ""]
    notes = {}
    for r in results:
        notes[r["model"]] = (f"- {r['model']}: {r['val_images']} validation / {r['train_images']} training images; "
                 f"{r['epochs']:g} recovery epoch(s), lr {r.get('lr', 0.01):g}; slack {r['recovery_slack']:g}; "
                 f"budget {r.get('budget', DEFAULTS['budget'])}; channel step "
                 f"{r['channel_step']}; {r['repeats']} timed runs per search candidate; BN "
                 f"recalibration in the search {_bn_text(r)}; {_refit_text(r)}"
                 f"(a) {_a_text(r)}; (b) sweep "
                 + ", ".join(f"{x['ratio']}: {x['metric']:.4f}" for x in r["b_sweep"])
                 + "; (b) recovered: " + ("; ".join(f"{t['ratio']}: {t['accuracy_before']:.4f} -> "
                                                   f"{t['accuracy_after']:.4f}" for t in r["b"]["tried"]) or "-"))
    notes.update({k: v[1] for k, v in kept.items()})
    L += [notes[k] for k, _ in rows]
    by_model = {r["model"]: r.get("command", command) for r in results} | {k: v[2] for k, v in kept.items()}
    cmds = list(dict.fromkeys(by_model[k] for k, _ in rows))
    L += ["", "Produced by: " + "; ".join(f"`.venv/bin/python {c}`" for c in cmds)
          + ("" if not kept else f" ({', '.join(kept)}: the rows of an earlier run, kept as they were)"), ""]
    for k, _ in rows:   # the plot per model: (a)'s front before recovery, the delivered models after
        L += [f"![{k}: front and delivered models](bench_unlabelled_{k}.png)", ""]
    return "\n".join(L)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    args.max_drop = float(args.max_drop)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.models.split(","):
        if name not in MODELS:
            raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
        results.append(run_model(name, args, out))
        results[-1]["command"] = " ".join(["tools/bench_unlabelled.py"] + [shlex.quote(a) for a in argv])
        # each finished model is written at once, so a long run leaves its complete rows behind
        prev = out / "results.json"
        done = {r["model"]: r for r in (json.loads(prev.read_text()) if prev.exists() else [])}
        done.update({r["model"]: r for r in results})
        ordered = [done[k] for k in MODELS if k in done]
        prev.write_text(json.dumps(ordered, indent=1, default=str) + "\n")
        command = " ".join(["tools/bench_unlabelled.py"] + [shlex.quote(a) for a in argv])
        kept = kept_rows(DOC, {r["model"] for r in ordered})
        update_section(DOC, "bench_unlabelled", markdown(ordered, args, command, kept), title=TITLE)
        import shutil
        shutil.copy(out / f"{name}.png", ROOT / "docs" / f"bench_unlabelled_{name}.png")
        print(table_row(results[-1]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
