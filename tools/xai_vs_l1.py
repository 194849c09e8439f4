#!/usr/bin/env python
"""Do XAI channel scores prune better than weight magnitude? Fashion-MNIST, no fine-tuning.

Prunes every channel group of examples/fashion_mnist_resnet.onnx uniformly at
each ratio with each criterion and reports the pruned model's test accuracy
(onnxruntime, all 10,000 test images). Data-free criteria (l1, l2, bn, and
`random` as the floor) use graphprune's built-in criteria; XAI criteria are
computed with graphprune.importance on `--samples` training images, stored in
the model's metadata and selected with criterion="metadata" -- the same path as
`graphprune importance` followed by `graphprune prune --criterion metadata`.

    .venv/bin/python tools/xai_vs_l1.py            # prints the table, updates docs/importance.md
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from _docs import update_section  # noqa: E402  (tools/ is on sys.path when run as a script)

import graphprune as gp  # noqa: E402
from graphprune.data import load_fashion_mnist  # noqa: E402
from graphprune.importance import compute_importance  # noqa: E402

BUILTIN = ("l1", "l2", "bn", "random")
XAI = ("lrp", "taylor", "gradcam", "deeplift", "ig", "conductance")  # cheapest first



def accuracy(model, x, y, bs: int = 1000) -> float:
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    pred = np.concatenate([sess.run(None, {name: x[i:i + bs]})[0].argmax(1) for i in range(0, len(x), bs)])
    return float((pred == y).mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "examples/fashion_mnist_resnet.onnx"))
    ap.add_argument("--ratios", default="0.3,0.5")
    ap.add_argument("--criteria", default=",".join(BUILTIN + XAI))
    ap.add_argument("--samples", type=int, default=256, help="training images for the XAI criteria")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--n-steps", type=int, default=16, help="ig/conductance integration steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--doc", default=str(ROOT / "docs/importance.md"))
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)
    ratios = [float(r) for r in args.ratios.split(",")]
    criteria = args.criteria.split(",")
    from graphprune.modelio import read_model
    raw = read_model(args.model)
    test = load_fashion_mnist("test")
    calib = load_fashion_mnist("train").subsample(args.samples, args.seed)
    base_acc = accuracy(raw, test.x, test.y)
    print(f"unpruned test accuracy {base_acc:.4f}", flush=True)

    rows = []
    for crit in criteria:
        t0 = time.time()
        if crit in XAI:
            opts = {"n_steps": args.n_steps} if crit in ("ig", "conductance") else {}
            imp = compute_importance(raw, calib, crit, samples=args.samples, batch_size=args.batch_size,
                                     seed=args.seed, progress=False, **opts)
            model, sel = gp.load(imp.to_model(raw)), "metadata"
        else:
            model, sel = gp.load(raw), crit
        score_s = time.time() - t0
        an = gp.analyse(model)
        accs = []
        for r in ratios:
            plan = gp.choose(an, ratio=r, criterion=sel, seed=args.seed)
            accs.append(accuracy(gp.prune(model, plan), test.x, test.y))
        rows.append((crit, accs, score_s))
        print(f"{crit:12s} " + " ".join(f"{a:.4f}" for a in accs) + f"   (scoring {score_s:.1f}s)", flush=True)
        if not args.no_doc:  # after every row, so a long run leaves a usable partial table
            write_doc(args, ratios, base_acc, rows, len(criteria))
    print("\n" + render(ratios, base_acc, rows))
    return 0


def render(ratios, base_acc, rows) -> str:
    lines = ["| criterion | " + " | ".join(f"acc @ {int(r * 100)}% pruned" for r in ratios) + " | scoring time (s) |",
             "|" + "---|" * (len(ratios) + 2),
             "| (unpruned) | " + " | ".join(f"{base_acc:.4f}" for _ in ratios) + " | - |"]
    for crit, accs, s in rows:
        lines.append(f"| {crit} | " + " | ".join(f"{a:.4f}" for a in accs) + f" | {s:.1f} |")
    return "\n".join(lines)


def write_doc(args, ratios, base_acc, rows, n_criteria) -> None:
    note = (f"Model `{Path(args.model).name}`, Fashion-MNIST test set (10,000 images), every channel group "
            f"pruned uniformly, no fine-tuning. XAI criteria from {args.samples} training images "
            f"(seed {args.seed}, batch {args.batch_size}, ig/conductance n_steps={args.n_steps}); "
            f"{args.threads} torch threads on a shared CPU. Produced by `tools/xai_vs_l1.py "
            f"--samples {args.samples} --batch-size {args.batch_size} --n-steps {args.n_steps} "
            f"--ratios {args.ratios} --threads {args.threads}`.")
    if len(rows) < n_criteria:
        note += f" Partial: {len(rows)} of {n_criteria} criteria done."
    update_section(Path(args.doc), "xai_vs_l1", note + "\n\n" + render(ratios, base_acc, rows))


if __name__ == "__main__":
    sys.exit(main())
