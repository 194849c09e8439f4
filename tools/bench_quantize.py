"""fp32 vs int8 vs fp16 on the Fashion-MNIST example models: docs/quantization.md.

For each bundled example (examples/fashion_mnist_vgg.onnx, examples/fashion_mnist_resnet.onnx):
* fp32: the model as shipped;
* int8: QuantizeInt8Pass, per-channel weights, asymmetric uint8 activations, calibrated on
  --calib samples of the Fashion-MNIST *training* split (fixed seed);
* int8 mixed: the same with the first conv kept fp32 (the layer that sees raw pixels);
* fp16: Float16Pass (fp32 inputs/outputs).
Reported per variant: top-1 accuracy on the 10,000-image test split, the check against
fp32 (max relative error of the logits, top-1 agreement), size (graphprune.cost.model_size:
tensors at their stored precision), estimated energy per inference (graphprune.cost,
Horowitz 45 nm model, labelled "estimated"), and onnxruntime latency on this host
(batch 1, 1 thread, median and interquartile range of --repeats runs after a warm-up;
targets.measure_local.measure_ort). The host is shared with other jobs and noisy:
latencies are indicative, the ratios between variants measured back to back more so.

Usage: .venv/bin/python tools/bench_quantize.py [--repeats 300] [--calib 256] [--no-write]
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import cpu_name, update_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MD_OUT = ROOT / "docs" / "quantization.md"
MODELS = ("fashion_mnist_vgg", "fashion_mnist_resnet")


def variants(model: onnx.ModelProto, calib) -> dict[str, onnx.ModelProto]:
    from graphprune.passes import Float16Pass, QuantizeInt8Pass
    from graphprune.quant import quantizable_nodes

    first = quantizable_nodes(model)[0]
    return {"fp32": model,
            "int8 (per-channel)": QuantizeInt8Pass(calib, per_channel=True).run(model),
            f"int8 mixed ({first} fp32)": QuantizeInt8Pass(calib, per_channel=True, exclude=[first]).run(model),
            "fp16": Float16Pass().run(model)}


def measure(name: str, base: onnx.ModelProto, m: onnx.ModelProto, test, base_logits, repeats: int) -> dict:
    """Accuracy, the check against fp32 (on the logits the fp32 model gave), size, energy, latency."""
    from graphprune.cost import estimate_energy, model_size
    from graphprune.quant.check import output_error, run_batched
    from targets.measure_local import measure_ort

    feeds = {base.graph.input[0].name: test.x}
    logits = run_batched(m, feeds, batch_size=500)[0] if m is not base else base_logits
    err = output_error(base.graph.output[0].name, base_logits, logits)
    shape = {base.graph.input[0].name: [1, *test.x.shape[1:]]}
    lat = measure_ort(m, repeats=repeats, warmup=20, threads=1, input_shapes=shape)
    return {"variant": name, "acc": float(np.mean(logits.argmax(1) == test.y)), "rel": err.max_rel,
            "agree": err.top1_agreement, "bytes": model_size(m).bytes,
            "uj": estimate_energy(m, shape).total_uj, "ms": lat.median_ms, "iqr": lat.spread_ms}


def table(model_name: str, rows: list[dict]) -> str:
    base = rows[0]
    out = [f"**{model_name}** (examples/{model_name}.onnx)", "",
           "| variant | top-1 (10k test) | vs fp32 | max rel. error / top-1 agreement | size (bytes) | "
           "energy, estimated (uJ/inference) | ORT latency, 1 thread (ms, median [IQR]) | speed-up |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['variant']} | {r['acc']:.2%} | {100 * (r['acc'] - base['acc']):+.2f} pp | "
                   f"{r['rel']:.2%} / {r['agree']:.2%} | {r['bytes']:,} ({base['bytes'] / r['bytes']:.2f}x smaller) | "
                   f"{r['uj']:.1f} ({base['uj'] / r['uj']:.2f}x less) | {r['ms']:.3f} [{r['iqr']:.3f}] | "
                   f"{base['ms'] / r['ms']:.2f}x |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--calib", type=int, default=256)
    ap.add_argument("--no-write", action="store_true", help="print the tables, leave the doc alone")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import onnxruntime as ort

    from graphprune.data import load_fashion_mnist

    t0 = time.time()
    calib = load_fashion_mnist("train").subsample(args.calib, seed=0)
    test = load_fashion_mnist("test")
    parts = []
    for name in MODELS:
        base = onnx.load(str(ROOT / "examples" / f"{name}.onnx"))
        from graphprune.quant.check import run_batched
        base_logits = run_batched(base, {base.graph.input[0].name: test.x}, batch_size=500)[0]
        rows = [measure(v, base, m, test, base_logits, args.repeats) for v, m in variants(base, calib).items()]
        parts.append(table(name, rows))
        print(parts[-1], flush=True)
    cpu = cpu_name()
    md = (f"Measured by `tools/bench_quantize.py` on {cpu} ({platform.machine()}), onnxruntime {ort.__version__}, "
          f"{time.strftime('%Y-%m-%d', time.gmtime())}; calibration: {args.calib} training images; latency: batch 1, "
          f"1 intra-op thread, {args.repeats} runs. This host is shared with other jobs: latencies are noisy. "
          f"Energy is *estimated* (Horowitz 45 nm model below); RAPL is not readable here. "
          f"Run time {time.time() - t0:.0f} s.\n\n" + "\n\n".join(parts))
    if not args.no_write:
        update_section(MD_OUT, "bench-quantize", md, title="# Quantization\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
