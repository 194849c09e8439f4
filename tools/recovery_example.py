#!/usr/bin/env python
"""Recovery on the bundled example, with and without labels: the numbers in docs/recovery.md.

examples/fashion_mnist_resnet.onnx (9 BatchNormalization) pruned uniformly by L1 at
--ratio; accuracy on a fixed-seed subset of the Fashion-MNIST test split:
  raw pruned -> after BN recalibration (no labels) -> after recovery (same steps, epochs,
  lr, seed) with cross-entropy on labels / distillation alone on x only / both mixed.

    .venv/bin/python tools/recovery_example.py --ratio 0.5 --train 3000 --epochs 1

--ranking K: K random configurations (fixed seed), each judged raw, after BN recalibration,
and after a short recovery (--ranking-epochs, labels); prints the Spearman rank correlation
of raw and of recalibrated accuracy with accuracy after recovery (what --bn-recalibrate buys
the search).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import graphprune as gp  # noqa: E402
from graphprune.data import Dataset, load_fashion_mnist  # noqa: E402
from graphprune.recovery import recalibrate_bn  # noqa: E402
from graphprune.search.finetune import recover  # noqa: E402
from graphprune.search.objectives import error_rate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "examples/fashion_mnist_resnet.onnx"))
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--val", type=int, default=2000)
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ranking", type=int, default=0, metavar="K")
    ap.add_argument("--ranking-epochs", type=float, default=0.5)
    args = ap.parse_args(argv)
    if args.ranking:
        return ranking(args)
    val = load_fashion_mnist("test").subsample(args.val, args.seed)
    train = load_fashion_mnist("train").subsample(args.train, args.seed)
    model = gp.load(args.model)
    an = gp.analyse(model)
    plan = gp.choose(an, ratio=args.ratio, criterion="l1")
    cfg = plan.config()
    acc = lambda m: 100 * (1 - error_rate(m, val.x, val.y))  # noqa: E731
    pruned = gp.prune(model, plan)
    t0 = time.time()
    cal, rep = recalibrate_bn(pruned, train.x[:512])
    rows = [("original", acc(model), ""), (f"L1 {args.ratio:.0%} pruned, raw", acc(pruned), ""),
            ("+ BN recalibration (512 unlabelled samples)", acc(cal), f"{time.time() - t0:.1f} s, {rep.layers} BN")]
    for name, data, weight in (("recovery: cross-entropy on labels", train, 0.0),
                               ("recovery: distillation, no labels", Dataset(train.x), 1.0),
                               ("recovery: 0.5 cross-entropy + 0.5 distillation", train, 0.5)):
        t0 = time.time()
        m, r = recover(model, an, cfg, "l1", data, val.x, val.y, epochs=args.epochs, steps=2, lr=args.lr,
                       batch_size=64, seed=args.seed, distill_weight=weight)
        rows.append((name, 100 * r["accuracy_after"], f"{time.time() - t0:.0f} s"))
    print(f"| {args.model.split('/')[-1]}, {args.train} training samples, {args.epochs:g} epoch(s), "
          f"accuracy on {args.val} test samples | accuracy % | time |")
    print("|---|---|---|")
    for name, a, note in rows:
        print(f"| {name} | {a:.2f} | {note} |")
    return 0


def ranking(args) -> int:
    import numpy as np
    from scipy.stats import spearmanr
    val = load_fashion_mnist("test").subsample(args.val, args.seed)
    train = load_fashion_mnist("train").subsample(args.train, args.seed)
    model = gp.load(args.model)
    an = gp.analyse(model)
    groups = [g for g in an.groups if g.prunable]
    rng = np.random.default_rng(args.seed)
    acc = lambda m: 100 * (1 - error_rate(m, val.x, val.y))  # noqa: E731
    rows = []
    for k in range(args.ranking):
        cfg = {g.id: max(1, int(round(g.units * rng.uniform(0.25, 0.9)))) for g in groups}
        pruned = gp.prune(model, gp.choose(an, keep=cfg, criterion="l1"))
        cal = recalibrate_bn(pruned, train.x[:256])[0]
        _, r = recover(model, an, cfg, "l1", train, val.x, val.y, epochs=args.ranking_epochs, steps=1, lr=args.lr,
                       batch_size=64, seed=args.seed)
        rows.append((acc(pruned), acc(cal), 100 * r["accuracy_after"]))
        print(f"config {k}: raw {rows[-1][0]:.2f} %, recalibrated {rows[-1][1]:.2f} %, "
              f"recovered {rows[-1][2]:.2f} %", flush=True)
    a = np.asarray(rows)
    print(f"Spearman with accuracy after recovery over {len(rows)} configurations: raw "
          f"{spearmanr(a[:, 0], a[:, 2])[0]:.2f}, BN-recalibrated {spearmanr(a[:, 1], a[:, 2])[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
