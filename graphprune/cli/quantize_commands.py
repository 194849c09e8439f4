"""`graphprune quantize`: int8 (QDQ) or fp16 model out, checked against the fp32 original.

    graphprune quantize MODEL.onnx -o MODEL.int8.onnx --data calib.npz --per-channel \\
        [--symmetric] [--exclude NODE,...] [--precision int8|fp16] [--calibration percentile]

The quantized model is run in onnxruntime on the data and compared with the fp32 model
(max abs and relative error per output, top-1 agreement and accuracy for classifiers);
its size and estimated energy are reported next to the original's. Only a model within
--tolerance is written (atomically); otherwise the report is printed and the exit
status is 1, as `prune --verify` does.
"""
from __future__ import annotations

import sys

from graphprune.cli.options import add_input_shape
from graphprune.errors import GraphpruneError

_CHECK_SAMPLES = 1000


def register(sub) -> None:
    p = sub.add_parser("quantize", help="int8 (QDQ, calibrated) or fp16 model, checked against the fp32 one",
                       description=__doc__.splitlines()[0])
    p.add_argument("model", help="fp32 ONNX model")
    p.add_argument("-o", "--output", required=True, help="quantized ONNX model to write")
    p.add_argument("--data", help="calibration and check data: .npz with x (N,...) [and y labels], or an image "
                                  "folder (scaled to [0,1], resized to the model's input size)")
    p.add_argument("--precision", default="int8", help="int8 (QDQ, default) or fp16 (for targets with fp16 "
                                                       "arithmetic, e.g. CUDA)")
    p.add_argument("--per-channel", action="store_true", help="int8: one weight scale per output channel "
                                                              "(more accurate; default one per tensor)")
    p.add_argument("--symmetric", action="store_true", help="int8: symmetric int8 activations (zero point 0; what "
                                                            "ARM/GPU kernels prefer); default asymmetric uint8")
    p.add_argument("--calibration", default="minmax", metavar="METHOD",
                   help="int8: how activation ranges are chosen: minmax (default: the full observed range), "
                        "or percentile (99.999, or percentile=P: onnxruntime's histogram calibrator, clips "
                        "outliers; slower)")
    p.add_argument("--exclude", action="append", metavar="NODE,...",
                   help="nodes kept in fp32 (mixed precision); comma-separated, repeatable")
    p.add_argument("--samples", type=int, default=256, help="calibration samples (fixed-seed subset; default 256)")
    p.add_argument("--check-samples", type=int, default=_CHECK_SAMPLES,
                   help=f"samples of --data the check runs (default {_CHECK_SAMPLES})")
    p.add_argument("--tolerance", type=float, default=None,
                   help="largest accepted error per output, as a fraction of the fp32 output's largest |value| "
                        "(default 0.15)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample subsets")
    add_input_shape(p, "for the energy estimate (default: the data's sample shape, batch 1)")
    p.set_defaults(func=quantize)


def _options(args) -> tuple[str, list[str], float]:
    """Everything checkable before a file is read: one-line errors for nonsense options."""
    from graphprune.quant.calibration import parse_calibration
    from graphprune.quant.check import DEFAULT_TOLERANCE
    from graphprune.quant.precision import canonical

    precision = canonical(args.precision, ("int8", "fp16"), "--precision")
    if precision == "fp16" and (args.per_channel or args.symmetric or args.calibration != "minmax"):
        raise GraphpruneError("--per-channel, --symmetric and --calibration apply to --precision int8 only")
    parse_calibration(args.calibration, "--calibration")
    exclude = [n.strip() for spec in args.exclude or [] for n in spec.split(",") if n.strip()]
    tolerance = DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
    if not 0 <= tolerance < float("inf"):
        raise GraphpruneError(f"--tolerance must be a non-negative number, got {args.tolerance}")
    for opt in ("samples", "check_samples"):
        if getattr(args, opt) <= 0:
            raise GraphpruneError(f"--{opt.replace('_', '-')} must be positive, got {getattr(args, opt)}")
    if not 0 <= args.seed < 2 ** 32 - 1:   # the check subset uses seed + 1
        raise GraphpruneError(f"--seed must be in 0 .. 2^32-2, got {args.seed}")
    if not args.data:
        raise GraphpruneError("quantize needs --data: int8 calibration measures activation ranges on it, and "
                              "the quantized model is checked against the fp32 one on it")
    return precision, exclude, tolerance


def quantize(args) -> int:
    from graphprune.inputs import check_input_shapes, parse_input_shapes
    from graphprune.modelio import read_model, refuse_overwriting_input, write_model
    from graphprune.quant.check import compare

    precision, exclude, tolerance = _options(args)
    refuse_overwriting_input(args.output, args.model)
    shapes = parse_input_shapes(args.input_shape)
    model = read_model(args.model)
    check_input_shapes(model, shapes)
    data = _load_data(args.data, model)
    calib, check_set = data.subsample(args.samples, args.seed), data.subsample(args.check_samples, args.seed + 1)
    out = _run_pass(model, precision, calib, exclude, args)
    feeds = _feeds(model, check_set.x)
    check = compare(model, out, feeds, tolerance)    # onnxruntime must run it, or this is an error
    _report(model, out, check, check_set, feeds, shapes, precision)
    if not check.passed:
        print(f"graphprune: error: the {precision} model is not within --tolerance {tolerance:g} of the fp32 model; "
              "nothing written (exclude the most sensitive layers with --exclude, or try --per-channel)",
              file=sys.stderr)
        return 1
    write_model(out, args.output, source=args.model)
    print(f"wrote {args.output}")
    return 0


def _run_pass(model, precision: str, calib, exclude: list[str], args):
    from graphprune.passes import Float16Pass, QuantizeInt8Pass

    if precision == "fp16":
        return Float16Pass(exclude=exclude).run(model)
    return QuantizeInt8Pass(calib, per_channel=args.per_channel, symmetric_activations=args.symmetric,
                            exclude=exclude, calibration=args.calibration).run(model)


def _load_data(path: str, model):
    from graphprune.data import load_data
    from graphprune.inputs import graph_inputs

    inputs = graph_inputs(model)
    if len(inputs) != 1:
        raise GraphpruneError(f"quantize reads --data for models with one input; this one has {len(inputs)} "
                              f"({', '.join(i.name for i in inputs)}); use the QuantizeInt8Pass API for more")
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in inputs[0].type.tensor_type.shape.dim]
    size = dims[2:4] if len(dims) == 4 and all(dims[2:4]) else None
    return load_data(path, size=size, channels=dims[1] if len(dims) == 4 and dims[1] else 3,
                     require_labels=False, input_names=[inputs[0].name])


def _feeds(model, x):
    from graphprune.quant.calibration import calibration_feeds
    return calibration_feeds(model, x)


def _report(model, out, check, data, feeds, shapes, precision: str) -> None:
    from graphprune.cost import estimate_energy, model_size
    from graphprune.quant import graph_precision

    layers = graph_precision(out)
    counts = {p: sum(v == p for v in layers.values()) for p in ("int8", "fp16", "fp32")}
    print("layers: " + ", ".join(f"{n} {p}" for p, n in counts.items() if n))
    print(f"check: {check.summary()}")
    if data.y is not None and check.outputs and check.outputs[0].top1_agreement is not None:
        _accuracy(model, out, feeds, data.y, precision)
    before, after = model_size(model), model_size(out)
    print(f"size: {before.bytes:,} -> {after.bytes:,} bytes ({before.bytes / max(after.bytes, 1):.2f}x smaller; "
          f"weights at their stored precision)")
    name, x = next(iter(feeds.items()))
    at = shapes or {name: [1, *x.shape[1:]]}
    e0, e1 = estimate_energy(model, at), estimate_energy(out, at)
    print(f"energy (estimated): {e0.total_uj:.2f} -> {e1.total_uj:.2f} uJ/inference "
          f"({e0.total_uj / max(e1.total_uj, 1e-12):.2f}x less; {e1.table} model, see docs/quantization.md)")
    _measured_energy(model, out, {name: x[:1]})


def _accuracy(model, out, feeds, y, precision: str) -> None:
    import numpy as np

    from graphprune.quant.check import run_batched
    logits = [run_batched(m, feeds)[0] for m in (model, out)]
    k = logits[0].shape[1]
    if y.size and y.max() >= k:
        raise GraphpruneError(f"label {int(y.max())} is out of range for a model with {k} outputs; nothing written")
    accs = [float(np.mean(z.argmax(1) == y)) for z in logits]
    print(f"accuracy on the labelled check samples: fp32 {accs[0]:.2%}, {precision} {accs[1]:.2%}")


def _measured_energy(model, out, feed) -> None:
    from graphprune.cost.rapl import measure_energy, rapl_unavailable
    from graphprune.runtime import session

    reason = rapl_unavailable()
    if reason:
        print(f"energy (measured): not available: {reason}")
        return
    got = []
    for m in (model, out):
        sess = session(m, threads=1)
        got.append(measure_energy(lambda: sess.run(None, feed), repeats=200))
    print(f"energy (measured, RAPL, whole CPU package incl. other processes): {got[0].per_call_uj:.1f} -> "
          f"{got[1].per_call_uj:.1f} uJ/inference")
