"""`graphprune optimize`: the Pareto front of pruned models, latency on a target vs a quality metric."""
from __future__ import annotations

import argparse

from graphprune.cli.options import add_input_shape, add_no_progress


def register(sub) -> None:
    p = sub.add_parser(
        "optimize", help="search kept channels per group for the latency/quality Pareto front on a target",
        description="Multi-objective search (nevergrad) over kept units per channel group, measuring latency on "
                    "the target and error (1 - --metric) on --data; writes best.onnx, pareto.json, pareto.png, "
                    "report.md and a journal that --resume continues. See docs/optimize.md and docs/metrics.md.")
    p.add_argument("model", help="ONNX model (classifier, detector, segmenter, ...)")
    p.add_argument("--data", required=True,
                   help=".npz with x (and y labels, optional) or one array per model input named like the inputs; "
                        "or an image folder (one subfolder per class, or images without labels)")
    p.add_argument("-o", "--output", metavar="OUTDIR", help="output folder (default: <model stem>_optimized)")
    p.add_argument("--metric", help="quality metric: accuracy (labels), agreement, fidelity, detection, "
                                    "segmentation, text-boxes, saliency or package.module:function (default: accuracy with "
                                    "labels, "
                                    "agreement for a classifier without, fidelity otherwise; docs/metrics.md)")
    _add_image_folders(p)
    _add_latency(p)
    _add_objectives(p)
    _add_search(p)
    g = _add_recovery(p)
    _add_recovery_without_labels(p)
    _add_quantize(p)
    g.add_argument("--json", action="store_true", help="print pareto.json's summary to stdout")
    p.set_defaults(func=optimize)


def _add_image_folders(p) -> None:
    g = p.add_argument_group("image folders (--data, --train-data)")
    g.add_argument("--size", type=int, nargs="+", help="resize to H [W] (default: the model's static input size)")
    g.add_argument("--mean", help="per-channel mean after --scale, e.g. '0.485,0.456,0.406'")
    g.add_argument("--std", help="per-channel std after --scale")
    g.add_argument("--scale", help="pixel scale applied first (default 1/255)")
    g.add_argument("--channel-order", choices=("rgb", "bgr"), help="channel order (default rgb)")
    g.add_argument("--layout", choices=("nchw", "nhwc"), help="tensor layout (default nchw)")


def _add_latency(p) -> None:
    g = p.add_argument_group("latency (as `graphprune bench`)")
    g.add_argument("--target", default="x86", help="target, or a comma list searched in one run (docs/scaling.md)")
    g.add_argument("--backend", default="ort", help="ort or tvm; a comma list aligned with --target")
    g.add_argument("--rpc-tracker", metavar="HOST:PORT", help="a comma list aligned with --target ('' = this host)")
    g.add_argument("--rpc-key", metavar="KEY", help="a comma list aligned with --target")
    g.add_argument("--tune-trials", type=int, default=0, metavar="N",
                   help="MetaSchedule trials for tuning the original once (--backend tvm); candidates replay it")
    g.add_argument("--tune-time", metavar="DURATION",
                   help="time budget for that tuning, e.g. 90s, 20m, 1h (with --tune-trials: whichever ends "
                        "first; alone: tune until it is up), with a progress bar")
    g.add_argument("--repeats", type=int, default=30, help="timed runs per candidate (median reported)")
    g.add_argument("--threads", type=int, default=None,
                   help="onnxruntime intra-op threads when timing (default: the cores available, as bench)")
    g.add_argument("--timeout", type=float, default=60.0,
                   help="seconds per RPC attempt: a hung device costs this once, then another device (default 60)")
    g.add_argument("--stand-in", metavar="TARGET",
                   help="measure on this target instead when --target has no reachable device; every output "
                        "is labelled as stand-in timings")
    g.add_argument("--targets-file", metavar="JSON")


def _add_objectives(p) -> None:
    g = p.add_argument_group("objectives, constraints, preferences")
    g.add_argument("--objectives", default="latency,error",
                   help="comma list of latency, error, macs, params, energy (default latency,error)")
    g.add_argument("--max-error-increase", type=float, metavar="E",
                   help="constraint: error may rise by at most E over the original (0.01 = 1 pp)")
    g.add_argument("--latency-budget", metavar="T", help="constraint: latency at most T (e.g. 4ms, 800us)")
    g.add_argument("--prefer", action="append", metavar="OBJ=W",
                   help="weight of an objective in the final choice (default 1 each), e.g. latency=2")


def _add_search(p) -> None:
    g = p.add_argument_group("search")
    g.add_argument("--optimizer", default="DE", help="nevergrad optimizer name (DE, TwoPointsDE, NGOpt, CMA, ...)")
    g.add_argument("--budget", type=int, default=60, help="candidates the optimizer proposes (default 60)")
    g.add_argument("--workers", type=int, default=None, help="parallel evaluations on this host (latency is always "
                                                             "timed alone; default 1)")
    g.add_argument("--cluster", metavar="tcp://HOST:PORT",
                   help="evaluate candidates on a running Dask cluster (pip install graphprune[cluster]; "
                        "not with --workers; docs/scaling.md)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--criterion", default="l1", choices=["l1", "l2", "bn", "metadata", "random"],
                   help="which channels go within a group (metadata: `graphprune importance` scores)")
    g.add_argument("--channel-step", type=int, metavar="N", help="kept-channel multiple (default: the target's)")
    g.add_argument("--min-keep", type=float, default=0.25, help="smallest kept fraction per group (default 0.25)")
    g.add_argument("--group-bounds", metavar="G:MIN:MAX,...", help="per-group kept-fraction bounds")
    g.add_argument("--sensitivity-ratios", default="0.25,0.5,0.75", help="removed fractions swept per group")
    g.add_argument("--holdout", type=int, default=6, help="random configurations measured to test the surrogate")
    g.add_argument("--search-start", default="auto", choices=["auto", "near", "random"],
                   help="near: light perturbations of the original before the optimizer's random draws; auto "
                        "(default): near when no hold-out configuration met the error bound (docs/optimize.md)")
    g.add_argument("--samples", type=int, help="evaluate the metric on a fixed-seed subset of --data")
    g.add_argument("--resume", action="store_true", help="continue the search in OUTDIR from its journal")
    add_input_shape(g, "for the analysis and the latency timed", default="the analysis keeps dynamic dims "
                    "symbolic; latency is timed at the data's shape with batch 1")
    add_no_progress(g)


def _add_recovery(p):
    """The recovery group (returned: --json is added to it last, where --help has always listed it)."""
    g = p.add_argument_group("recovery by fine-tuning")
    g.add_argument("--epochs", type=float, default=0.0, help="fine-tuning epochs in all (0: no recovery)")
    g.add_argument("--train-data", help="training data for fine-tuning (default: hold out part of --data)")
    g.add_argument("--recovery-slack", type=float, default=0.0, metavar="E",
                   help="search candidates losing up to --max-error-increase + E before recovery, and deliver "
                        "the best one that meets --max-error-increase after it (e.g. 0.03; default 0: the "
                        "constraint holds before recovery)")
    g.add_argument("--recovery-tries", type=int, default=3, metavar="K",
                   help="with --recovery-slack: fine-tune at most K front members, best first (default 3)")
    g.add_argument("--finetune-steps", type=int, default=2, help="prune in this many steps, fine-tuning between")
    g.add_argument("--lr", type=float, default=0.01, help="SGD (momentum 0.9) learning rate (default 0.01)")
    g.add_argument("--batch-size", type=int, default=64)
    return g


def _add_recovery_without_labels(p) -> None:
    g = p.add_argument_group("recovery without labels, BN recalibration, reconstruction (docs/recovery.md)")
    g.add_argument("--distill-weight", type=float, metavar="W",
                   help="recovery loss = (1-W) x cross-entropy on the labels + W x distillation from the original "
                        "model (default: 0 with labels, as before; without labels always 1)")
    g.add_argument("--temperature", type=float, default=4.0,
                   help="distillation temperature on classifier logits (default 4)")
    g.add_argument("--bn-recalibrate", action="store_true",
                   help="judge every search candidate after recomputing its BatchNorm statistics on "
                        "--bn-samples samples (recovery always recalibrates before training)")
    g.add_argument("--bn-samples", type=int, default=256, metavar="N",
                   help="samples of the training data (else --data) for --bn-recalibrate (default 256)")
    g.add_argument("--reconstruct", action="store_true",
                   help="refit the convolutions that read pruned channels by least squares to the original's "
                        "outputs, in every search candidate and before recovery's training (no labels; for "
                        "networks without BatchNorm that pruning breaks, e.g. u2netp)")
    g.add_argument("--reconstruct-samples", type=int, default=16, metavar="N",
                   help="samples of the training data (else --data) the refit runs on (default 16)")


def _add_quantize(p) -> None:
    g = p.add_argument_group("joint pruning + quantization (docs/quantization.md)")
    g.add_argument("--quantize", default="off", metavar="{off,int8,mixed,fp16}",
                   help="off (default): prune only; int8: every candidate is the pruned model quantized int8 "
                        "(QDQ, calibrated); mixed: fp32/int8 per quantizable layer is searched with the channels; "
                        "fp16: every candidate converted to fp16 (targets with fp16 arithmetic, e.g. cuda)")
    g.add_argument("--calibration-samples", type=int, default=256, metavar="N",
                   help="--quantize: calibration samples, a fixed-seed subset of --train-data (else of the "
                        "part held out for fine-tuning, else of --data) (default 256)")
    g.add_argument("--calibration", default="minmax", metavar="METHOD",
                   help="--quantize int8/mixed: how activation ranges are chosen: minmax (default), percentile "
                        "(or percentile=P) (graphprune quantize --help)")
    g.add_argument("--quantize-exclude", action="append", default=[], metavar="NODE,...",
                   help="--quantize: nodes kept fp32 in every candidate (comma-separated, repeatable), e.g. a "
                        "detector's box decoding after its last convolutions")


def _recovery_without_labels(args: argparse.Namespace) -> dict:
    return {"distill_weight": args.distill_weight, "temperature": args.temperature,
            "bn_recalibrate": args.bn_recalibrate, "bn_samples": args.bn_samples,
            "reconstruct": args.reconstruct, "reconstruct_samples": args.reconstruct_samples,
            "quantize": args.quantize, "calibration_samples": args.calibration_samples,
            "calibration": args.calibration,
            "quantize_exclude": tuple(n for a in args.quantize_exclude for n in a.split(",") if n)}


def _workers(args: argparse.Namespace) -> int:
    from graphprune.errors import GraphpruneError
    if args.cluster and args.workers is not None:
        raise GraphpruneError("--cluster and --workers exclude each other: --workers N is this host's process pool, "
                              "--cluster evaluates on the cluster's workers")
    return 1 if args.workers is None else args.workers


def optimize(args: argparse.Namespace) -> int:
    from graphprune.errors import GraphpruneError
    from graphprune.inputs import parse_input_shapes
    from graphprune.search.jsonsafe import dumps
    from graphprune.search.optimize import OptimizeOptions, parse_duration_ms, parse_prefer, run_optimize

    try:
        ratios = tuple(float(v) for v in args.sensitivity_ratios.split(",") if v.strip())
    except ValueError:
        raise GraphpruneError(f"--sensitivity-ratios: expected numbers, got {args.sensitivity_ratios!r}") from None
    o = OptimizeOptions(
        model=args.model, data=args.data, outdir=args.output, target=args.target, backend=args.backend,
        rpc_tracker=args.rpc_tracker, rpc_key=args.rpc_key, tune_trials=args.tune_trials, repeats=args.repeats,
        tune_time=args.tune_time,
        threads=args.threads, timeout=args.timeout, stand_in=args.stand_in, targets_file=args.targets_file, objectives=args.objectives,
        max_error_increase=args.max_error_increase, latency_budget_ms=parse_duration_ms(args.latency_budget),
        prefer=parse_prefer(args.prefer), optimizer=args.optimizer, budget=args.budget, workers=_workers(args),
        cluster=args.cluster,
        seed=args.seed, criterion=args.criterion, channel_step=args.channel_step, min_keep=args.min_keep,
        group_bounds=args.group_bounds, sensitivity_ratios=ratios, holdout=args.holdout, samples=args.samples,
        search_start=args.search_start,
        epochs=args.epochs, recovery_slack=args.recovery_slack,
        recovery_tries=args.recovery_tries, train_data=args.train_data, finetune_steps=args.finetune_steps, lr=args.lr,
        batch_size=args.batch_size, resume=args.resume, progress=not args.no_progress, metric=args.metric,
        size=args.size, mean=args.mean, std=args.std, scale=args.scale, channel_order=args.channel_order,
        layout=args.layout, input_shapes=parse_input_shapes(args.input_shape), **_recovery_without_labels(args))
    from graphprune.search.multitarget import is_multi
    if is_multi(o):
        s = run_optimize(o, log=_stderr)
        print(dumps(s) if args.json else "\n".join(multi_lines(s, o.outdir)))
        return 0
    s = run_optimize(o)
    s.pop("_measured", None)
    if args.json:
        print(dumps(s))
        return 0
    for line in summary_lines(s, o.outdir):
        print(line)
    return 0


def _stderr(msg: str) -> None:
    import sys
    print(msg, file=sys.stderr, flush=True)


def multi_lines(s: dict, outdir: str | None) -> list[str]:
    """One line per target of a multi-target run, then where the comparison is."""
    lines = []
    for name, e in s["targets"].items():
        sp = f", {e['speedup']:.2f}x faster (final)" if e.get("speedup") else ""
        lines.append(f"{name}: chosen {e['chosen']}, {e['latency_ms']:.3f} ms in the search, error {e['error']:.4f}"
                     f"{sp}; front {len(e['front'])}; {e['quality_shared']} of {e['measured']} quality results shared")
    return lines + [f"wrote {outdir}/<target>/ (best.onnx, pareto.json, report.md) and {outdir}/report.md"]


def summary_lines(s: dict, outdir: str) -> list[str]:
    """What a user reads on stdout. The speed-up is the final side-by-side measurement's, never the
    search's (possibly cached) latencies."""
    from graphprune.search.quality import value_text
    ch, b, d = s["chosen"], s["baseline"], s["delivered"]
    m = s.get("metric") or {"name": "accuracy", "key": "accuracy", "reference": "labels", "percent": True}
    q = lambda err: value_text(1 - err, m)  # noqa: E731
    lines = [f"metric: {m['name']} against {m['reference']}" + (f" ({m['why']})" if m.get("why") else ""),
             f"front: {len(s['front'])} configurations; original {q(b['error'])} / "
             f"{b['latency_ms']:.3f} ms in the search ({s['latency_label']})",
             f"chosen {ch['key']}: {q(ch['error'])} / {ch['latency_ms']:.3f} ms in the search -- "
             f"{s['choice_reason']}"]
    if s.get("recovery"):
        r = s["recovery"]
        lines.append(f"after recovery: {100 * r['accuracy_after']:.2f} % (before {100 * r['accuracy_before']:.2f} %)")
    if s.get("recovery_rejected"):
        r = s["recovery_rejected"]
        lines.append(f"recovery REJECTED: {r['reason']}; delivered the pruned model before recovery, "
                     f"{q(1 - d[m.get('key', 'accuracy')])}")
    if s.get("final"):
        lines.append(f"speed-up: {s['final']['text']}")
    from graphprune.search.joint import console_lines
    lines += console_lines(s)
    lines.append(f"wrote {outdir}/best.onnx, pareto.json, pareto.png, report.md")
    return lines
