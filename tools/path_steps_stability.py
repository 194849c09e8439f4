#!/usr/bin/env python
"""How many path steps do ig and conductance need before the filter ranking stops changing?

Both integrate gradients along the straight path from a zero baseline to the
input; their cost is n_steps (+1 for conductance) forward/backward passes per
batch, which dominates on large models. Pruning only uses the order of the
filters within each layer, so the question is whether the per-layer ranking at
few steps matches the ranking at many. This script scores the bundled
Fashion-MNIST ResNet at several n_steps and reports, per method, the Spearman
rank correlation of each layer's scores with the reference (largest) n_steps:
minimum and mean over layers, and the scoring time.

    .venv/bin/python tools/path_steps_stability.py --samples 256 --steps 4,8,16,32
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from _docs import update_section  # noqa: E402  (tools/ is on sys.path when run as a script)

from graphprune.data import load_fashion_mnist  # noqa: E402
from graphprune.importance import compute_importance  # noqa: E402


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation without scipy: Pearson correlation of the ranks (scores are continuous, ties are rare)."""
    ra, rb = np.argsort(np.argsort(a)).astype(float), np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "examples/fashion_mnist_resnet.onnx"))
    ap.add_argument("--methods", default="ig,conductance")
    ap.add_argument("--steps", default="4,8,16,32", help="n_steps values; the largest is the reference")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--doc", default=str(ROOT / "docs/importance.md"))
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps = sorted(int(s) for s in args.steps.split(","))
    model = onnx.load(args.model)
    data = load_fashion_mnist("train")
    rows = ["| method | n_steps | Spearman vs reference: min over layers | mean | scoring time (s) |",
            "|---|---|---|---|---|"]
    for method in args.methods.split(","):
        scores, secs = {}, {}
        for n in steps:
            t0 = time.perf_counter()
            scores[n] = compute_importance(model, data, method, samples=args.samples, batch_size=args.batch_size,
                                           seed=args.seed, progress=False, n_steps=n).scores
            secs[n] = time.perf_counter() - t0
            print(f"{method} n_steps={n}: {secs[n]:.1f} s", flush=True)
        ref = scores[steps[-1]]
        for n in steps:
            rho = [spearman(np.asarray(scores[n][k]), np.asarray(ref[k])) for k in ref]
            label = " (reference)" if n == steps[-1] else ""
            rows.append(f"| {method} | {n}{label} | {min(rho):.3f} | {np.mean(rho):.3f} | {secs[n]:.1f} |")
    body = "\n".join([
        f"Model `{Path(args.model).name}`, {args.samples} Fashion-MNIST training images (seed {args.seed}, batch "
        f"{args.batch_size}), {args.threads} torch threads. Produced by `tools/path_steps_stability.py --samples "
        f"{args.samples} --steps {args.steps} --methods {args.methods}`.", "", *rows])
    print(body)
    if not args.no_doc:
        update_section(Path(args.doc), "path_steps_stability", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
