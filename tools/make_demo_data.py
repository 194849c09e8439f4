#!/usr/bin/env python
"""Write the Fashion-MNIST .npz files the `graphprune optimize` demo reads.

From the Debian package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist),
preprocessed exactly as examples/fashion_mnist_resnet.onnx was trained
(graphprune.data.load_fashion_mnist: scaled to [0,1], training-set mean/std):

    .venv/bin/python tools/make_demo_data.py -o out/demo_data
    -> out/demo_data/val.npz    a fixed-seed subset of the TEST split (accuracy, search)
       out/demo_data/train.npz  a fixed-seed subset of the TRAIN split (recovery fine-tuning)

The two never overlap (different splits), so the reported accuracy is on data the
fine-tuning never saw.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from graphprune.data import load_fashion_mnist  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--outdir", default="out/demo_data")
    ap.add_argument("--val", type=int, default=2000, help="test-split samples in val.npz (default 2000)")
    ap.add_argument("--train", type=int, default=3000, help="train-split samples in train.npz (0: none)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    for split, n, name in (("test", args.val, "val.npz"), ("train", args.train, "train.npz")):
        if n <= 0:
            continue
        d = load_fashion_mnist(split).subsample(n, args.seed)
        np.savez(out / name, x=d.x, y=d.y)
        print(f"wrote {out / name}: {len(d)} samples of the {split} split, x {d.x.shape}, "
              f"classes {np.bincount(d.y, minlength=10).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
