"""A MobileNetV2-style Fashion-MNIST classifier at a larger input size, trained here and cached.

Why: the measured-latency-vs-MACs benchmark (tools/bench_macs_vs_latency.py) needs a
depthwise/mobile network, where onnxruntime's latency is not proportional to MACs (depthwise
convs are memory-bound: few MACs, much time), that is trained on real data and small enough
to train on 2 shared CPU cores in a few minutes. Fashion-MNIST images are upsampled
(bilinear) from 28x28 to --size (64 by default), so the early inverted-residual blocks run
at 32x32 and 16x16 like a mobile network's first stages on a real image.

The trained model is cached as .cache/bench_macs_vs_latency/mnv2_<key>.onnx, the key being a
hash of every training setting, so a rerun with the same settings reuses it.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench_macs_vs_latency"

# (expansion t, output channels c, stride s) per inverted-residual block, MobileNetV2's layout at width ~0.5
BLOCKS = ((1, 16, 1), (6, 24, 2), (6, 24, 1), (6, 32, 2), (6, 32, 1), (6, 64, 2), (6, 64, 1))


def upsample(x: np.ndarray, size: int) -> np.ndarray:
    """(N,1,28,28) -> (N,1,size,size), bilinear, in chunks (memory)."""
    import torch
    import torch.nn.functional as F
    out = [F.interpolate(torch.from_numpy(x[i:i + 2000]), size=(size, size), mode="bilinear",
                         align_corners=False).numpy() for i in range(0, len(x), 2000)]
    return np.ascontiguousarray(np.concatenate(out), np.float32)


def net(num_classes: int = 10):
    """The untrained torch module (MobileNetV2Small)."""
    import torch.nn as nn

    def cbr(cin, cout, k=1, s=1, groups=1, act=True):
        layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return nn.Sequential(*layers, nn.ReLU6()) if act else nn.Sequential(*layers)

    class InvertedResidual(nn.Module):
        """expand 1x1 -> depthwise 3x3 -> project 1x1 (linear), residual when the shape is kept."""

        def __init__(self, cin, cout, t, s):
            super().__init__()
            hid = cin * t
            self.expand = cbr(cin, hid) if t != 1 else None
            self.dw = cbr(hid, hid, 3, s, groups=hid)
            self.project = cbr(hid, cout, act=False)
            self.res = s == 1 and cin == cout

        def forward(self, x):
            y = self.project(self.dw(self.expand(x) if self.expand is not None else x))
            return x + y if self.res else y

    class MobileNetV2Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = cbr(1, 16, 3, 2)
            blocks, cin = [], 16
            for t, c, s in BLOCKS:
                blocks.append(InvertedResidual(cin, c, t, s))
                cin = c
            self.blocks = nn.Sequential(*blocks)
            self.head = cbr(cin, 256)
            self.fc = nn.Linear(256, num_classes)

        def forward(self, x):
            return self.fc(self.head(self.blocks(self.stem(x))).mean((2, 3)))

    return MobileNetV2Small()


def settings_key(s: dict) -> str:
    return hashlib.sha1(json.dumps(s, sort_keys=True).encode()).hexdigest()[:12]


def trained_model(size: int = 64, train_samples: int = 8000, epochs: int = 3, seed: int = 0, threads: int = 1,
                  log=print) -> Path:
    """The cached ONNX file for these settings, training it first when absent (BatchNormalization kept)."""
    s = {"arch": "mnv2small", "blocks": BLOCKS, "size": size, "train_samples": train_samples, "epochs": epochs,
         "seed": seed, "lr": 0.05, "batch": 64, "version": 1}
    path = CACHE / f"mnv2_{settings_key(s)}.onnx"
    if path.exists():
        log(f"trained model cached: {path}")
        return path
    import torch
    import torch.nn.functional as F

    from graphprune.data import load_fashion_mnist
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    tr = load_fashion_mnist("train")
    idx = np.sort(np.random.default_rng(seed).permutation(len(tr.x))[:train_samples])
    x, y = torch.from_numpy(upsample(tr.x[idx], size)), torch.from_numpy(tr.y[idx])
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=s["lr"], momentum=0.9, weight_decay=4e-5, nesterov=True)
    steps = epochs * math.ceil(len(x) / s["batch"])
    t0, step = time.time(), 0
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), s["batch"]):
            for g in opt.param_groups:   # cosine from lr to 0
                g["lr"] = s["lr"] * 0.5 * (1 + math.cos(math.pi * step / steps))
            b = perm[i:i + s["batch"]]
            xb = torch.where((torch.rand(len(b), generator=gen) < 0.5)[:, None, None, None], x[b].flip(3), x[b])
            loss = F.cross_entropy(model(xb), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        log(f"mnv2 training epoch {ep + 1}/{epochs}: last loss {loss.item():.3f} ({time.time() - t0:.0f} s)")
    export(model, path, size)
    log(f"trained and exported {path} in {time.time() - t0:.0f} s")
    return path


def export(model, path: Path, size: int) -> None:
    """ONNX with BatchNormalization kept (as tools/train_fashion_mnist.py), written atomically."""
    import torch

    from graphprune.modelio import atomic_path
    model.eval()
    with atomic_path(path) as tmp:
        torch.onnx.export(model, torch.zeros(1, 1, size, size), str(tmp), dynamo=False, opset_version=17,
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def write_data(out: Path, size: int, val_samples: int, train_samples: int, seed: int = 0) -> tuple[Path, Path]:
    """Validation .npz from the Fashion-MNIST test split, fine-tuning .npz from the training split,
    both upsampled to `size` (the model's training data and the fine-tuning data overlap: both
    come from the training split; the validation data never does)."""
    from graphprune.data import load_fashion_mnist
    out.mkdir(parents=True, exist_ok=True)
    val, tr = out / f"val_{size}_{val_samples}.npz", out / f"train_{size}_{train_samples}.npz"
    if not val.exists():
        te = load_fashion_mnist("test")
        np.savez(val, x=upsample(te.x[:val_samples], size), y=te.y[:val_samples])
    if not tr.exists():
        d = load_fashion_mnist("train")
        idx = np.sort(np.random.default_rng(seed + 1).permutation(len(d.x))[:train_samples])
        np.savez(tr, x=upsample(d.x[idx], size), y=d.y[idx])
    return val, tr
