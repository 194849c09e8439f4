#!/usr/bin/env python
"""Wall-clock cost of each importance criterion on a ResNet-50-sized model.

Builds a torchvision-style ResNet-50 in plain torch (random weights; torchvision
itself cannot be installed beside torch 2.13), exports it with
torch.onnx.export(dynamo=False), and times graphprune.importance on random
224x224 data through the ONNX->torch bridge.

Every method except ig scores all 54 layers (53 convs, the fc) from one pass per batch
(deeplift: over inputs and baselines; conductance: one per path point), so
they are measured on all layers and all samples. ig needs one captum call per
layer (LayerIntegratedGradients interpolates at the layer), which on a small
CPU box is hours; so `--ig-layers K` times it on the first K conv layers and
`--ig-samples M` on M of the samples, and the table gives the measured time
and, marked "est.", that time scaled by (54 / K) x (samples / M) (the
per-layer calls have similar cost and the cost is linear in the samples).

    .venv/bin/python tools/time_importance.py --samples 256 --batch-size 16 --ig-layers 1 --ig-samples 32
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from _docs import update_section  # noqa: E402  (tools/ is on sys.path when run as a script)

from graphprune.data import Dataset  # noqa: E402
from graphprune.importance import METHODS, compute_importance  # noqa: E402


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, width, stride=1):
        super().__init__()
        cout = width * 4
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
    """torchvision.models.resnet50 layout: 7x7 stem, [3, 4, 6, 3] bottlenecks, 1000 classes."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))
        layers, cin = [], 64
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for i in range(blocks):
                layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
                cin = width * 4
        self.layers = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.avgpool(self.layers(self.stem(x))), 1))



def export_resnet50(seed: int = 0) -> onnx.ModelProto:
    torch.manual_seed(seed)
    model = ResNet50().eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, 3, 224, 224), buf, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return onnx.load_from_string(buf.getvalue())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16,
                    help="deeplift holds inputs and baselines: about 10 GB peak at 16 on ResNet-50")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--ig-layers", "--captum-layers", type=int, default=None,
                    help="time ig on the first K conv layers only (the other methods always run on all)")
    ap.add_argument("--ig-samples", type=int, default=None, help="time ig on this many of the samples")
    ap.add_argument("--n-steps", type=int, default=16, help="ig/conductance integration steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--doc", default=str(ROOT / "docs/importance.md"))
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    model = export_resnet50()
    from graphprune.bridge import to_torch
    t0 = time.time()
    net = to_torch(model)
    bridge_s = time.time() - t0
    convs = net.producer_nodes()  # every scored layer: the 53 convs and the fc
    rng = np.random.default_rng(0)
    data = Dataset(rng.standard_normal((args.samples, 3, 224, 224)).astype(np.float32),
                   rng.integers(0, 1000, args.samples))
    print(f"ResNet-50: {len(convs)} scored layers, {sum(p.numel() for p in net.parameters()) / 1e6:.1f}M params; "
          f"bridge built in {bridge_s:.1f}s; {args.samples} samples, batch {args.batch_size}, "
          f"{args.threads} threads, load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for method in args.methods.split(","):
        opts = {"n_steps": args.n_steps} if method in ("ig", "conductance") else {}
        layers, samples = convs, args.samples
        if method == "ig":
            layers = convs[:args.ig_layers or len(convs)]
            samples = min(args.ig_samples or samples, samples)
            opts["layers"] = layers
        t0 = time.time()
        compute_importance(net, data, method, samples=samples, batch_size=args.batch_size, progress=False, **opts)
        s = time.time() - t0
        scale = len(convs) / len(layers) * args.samples / samples
        rows.append((method, samples, len(layers), s, s * scale if scale != 1 else None))
        print(f"{method:12s} {s:9.1f}s on {len(layers)} layers, {samples} samples"
              + (f"  (est. {rows[-1][4]:.0f}s for all {len(convs)} layers, {args.samples} samples)"
                 if rows[-1][4] else ""), flush=True)
        if not args.no_doc:  # after every method, so a long run leaves a usable partial table
            write_doc(args, argv, rows, len(args.methods.split(",")), len(convs))
    print("\n" + render(rows, len(convs), args.samples))
    return 0


def render(rows, n_convs, n_samples) -> str:
    lines = [f"| method | samples timed | layers timed | measured time (s) | {n_samples} samples, "
             f"all {n_convs} layers (s) |", "|---|---|---|---|---|"]
    for method, samples, n, s, est in rows:
        lines.append(f"| {method} | {samples} | {n} | {s:.1f} | " + (f"est. {est:.0f}" if est else f"{s:.1f}") + " |")
    return "\n".join(lines)


def write_doc(args, argv, rows, n_methods, n_convs) -> None:
    cmd = " ".join(argv if argv is not None else sys.argv[1:])
    note = (f"ResNet-50 (torchvision layout, random weights, BN folded by the exporter), {args.samples} random "
            f"224x224 samples, batch {args.batch_size}, {args.threads} torch threads on a shared CPU "
            f"(load average {os.getloadavg()[0]:.1f} when written); ig/conductance n_steps={args.n_steps}. "
            f"Produced by `tools/time_importance.py {cmd}`.")
    if len(rows) < n_methods:
        note += f" Partial: {len(rows)} of {n_methods} methods done."
    update_section(Path(args.doc), "time_importance", note + "\n\n" + render(rows, n_convs, args.samples))


if __name__ == "__main__":
    sys.exit(main())
