#!/usr/bin/env python
"""Train the small Fashion-MNIST CNNs of the examples (ResNet or VGG) and export them to ONNX.

Why purpose-built models: the XAI-vs-magnitude comparison (tools/xai_vs_l1.py)
needs a real, trained, BN+residual CNN that is small enough to commit (<5 MB)
and to train on 2 CPU cores in about a quarter of an hour. Fashion-MNIST comes
from the Debian package dataset-fashion-mnist (see graphprune.data).

    .venv/bin/python tools/train_fashion_mnist.py --epochs 6 -o examples/fashion_mnist_resnet.onnx

`--arch vgg` trains the second example, a plain VGG-style network twice as wide
(64/128/256) with the same layout and no residuals, so every conv is its own
prunable channel group (tools/bench_optimize.py runs on both):

    .venv/bin/python tools/train_fashion_mnist.py --arch vgg --time-budget 1800 -o examples/fashion_mnist_vgg.onnx

(The committed VGG: 1975 steps, about 4.2 epochs, in the 30 minutes on a busy 2-core
host, 93.18 % test accuracy; with --time-budget the step count depends on the host.)

Prints per-epoch test accuracy; the exported model's accuracy is re-measured
with onnxruntime at the end, so the number reported is the committed file's.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from graphprune.data import load_fashion_mnist  # noqa: E402


class BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 conv+BN shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.down is None else self.down(x)))


class SmallResNet(nn.Module):
    """stem 3x3 + max-pool -> blocks at 14x14, 7x7, 4x4 -> global average pool -> linear.

    Pooling right after the stem keeps training on 2 CPU cores in budget: a
    block at full 28x28 resolution cost about 4x the FLOPs for little accuracy.
    """

    def __init__(self, widths=(32, 64, 128), num_classes: int = 10):
        super().__init__()
        w0, w1, w2 = widths
        self.stem = nn.Sequential(nn.Conv2d(1, w0, 3, 1, 1, bias=False), nn.BatchNorm2d(w0), nn.ReLU(),
                                  nn.MaxPool2d(2))
        self.layer1 = BasicBlock(w0, w0)
        self.layer2 = BasicBlock(w0, w1, 2)
        self.layer3 = BasicBlock(w1, w2, 2)  # 7x7 -> 4x4
        self.fc = nn.Linear(w2, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class SmallVGG(nn.Module):
    """The SmallResNet layout without shortcuts, at twice the width (64/128/256 by default).

    stem 3x3 + max-pool (28 -> 14) -> two 3x3 convs at 14x14 -> max-pool -> two at 7x7
    -> max-pool (ceil: 7 -> 4) -> two at 4x4 -> global average pool -> linear; every conv
    followed by BN + ReLU. With no residual additions coupling their outputs, each of
    the seven convs is its own prunable channel group.
    """

    def __init__(self, widths=(64, 128, 256), num_classes: int = 10):
        super().__init__()
        w0, w1, w2 = widths

        def cbr(cin, cout):
            return [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *cbr(1, w0), nn.MaxPool2d(2),
            *cbr(w0, w0), *cbr(w0, w0), nn.MaxPool2d(2),
            *cbr(w0, w1), *cbr(w1, w1), nn.MaxPool2d(2, ceil_mode=True),
            *cbr(w1, w2), *cbr(w2, w2))
        self.fc = nn.Linear(w2, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


ARCHS = {"resnet": (SmallResNet, "32,64,128"), "vgg": (SmallVGG, "64,128,256")}


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip (cheap; translations slowed convergence in a short schedule)."""
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, bs: int = 1000) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), bs):
            correct += int((model(torch.from_numpy(x[i:i + bs])).argmax(1).numpy() == y[i:i + bs]).sum())
    return correct / len(x)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=sorted(ARCHS), default="resnet",
                    help="resnet (default; examples/fashion_mnist_resnet.onnx) or vgg (plain, 2x wider)")
    ap.add_argument("-o", "--output", default=None, help="default examples/fashion_mnist_ARCH.onnx")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--widths", default=None, help="stage widths (default resnet 32,64,128; vgg 64,128,256)")
    ap.add_argument("--checkpoint", default=None, help="also save the trained state_dict here")
    ap.add_argument("--time-budget", type=float, default=None,
                    help="train for this many seconds instead of --epochs; the learning rate is "
                         "annealed over the budget (for shared/slow machines)")
    ap.add_argument("--limit", type=int, default=None, help="train on the first N samples only (smoke test)")
    return ap


def _export_and_check(model, args, test, t0: float) -> None:
    """Export with BatchNormalization kept, then the test accuracy onnxruntime gets from the file."""
    model.eval()
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.checkpoint:
        torch.save(model.state_dict(), args.checkpoint)
    # TrainingMode.PRESERVE keeps BatchNormalization nodes (EVAL would fold them into the
    # convs), so the `bn` criterion and the pruning pass see a Conv->BN->Relu graph.
    torch.onnx.export(model, torch.zeros(1, 1, 28, 28), str(out), dynamo=False, opset_version=17,
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    import onnxruntime as ort
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    pred = np.concatenate([sess.run(None, {"input": test.x[i:i + 1000]})[0].argmax(1)
                           for i in range(0, len(test.x), 1000)])
    print(f"exported {out} ({out.stat().st_size / 1e6:.2f} MB); onnxruntime test accuracy "
          f"{(pred == test.y).mean():.4f}; total {time.time() - t0:.0f}s", flush=True)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    cls, default_widths = ARCHS[args.arch]
    args.output = args.output or f"examples/fashion_mnist_{args.arch}.onnx"
    args.widths = args.widths or default_widths

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    xtr, ytr = torch.from_numpy(train.x[:args.limit]), torch.from_numpy(train.y[:args.limit])
    model = cls(tuple(int(w) for w in args.widths.split(",")))
    print(f"params: {sum(p.numel() for p in model.parameters())}", flush=True)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps_per_epoch = math.ceil(len(xtr) / args.batch_size)
    total_steps = args.epochs * steps_per_epoch
    t0 = time.time()

    def progress(step: int) -> float:
        """Fraction of training done: by steps, or by wall-clock with --time-budget."""
        if args.time_budget:
            return (time.time() - t0) / args.time_budget
        return step / total_steps

    def lr_at(frac: float) -> float:  # linear warm-up over 15%, then cosine to zero
        if frac < 0.15:
            return args.lr * (0.1 + 0.9 * frac / 0.15)
        return args.lr * 0.5 * (1 + math.cos(math.pi * min((frac - 0.15) / 0.85, 1.0)))

    step, epoch, done = 0, 0, False
    while not done:
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        total, seen = 0.0, 0
        for i in range(0, len(xtr), args.batch_size):
            frac = progress(step)
            if frac >= 1.0:
                done = True
                break
            for group in opt.param_groups:
                group["lr"] = lr_at(frac)
            idx = perm[i:i + args.batch_size]
            xb = augment(xtr[idx], gen)
            loss = F.cross_entropy(model(xb), ytr[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            total += loss.item() * len(idx)
            seen += len(idx)
        epoch += 1
        if not args.time_budget and epoch >= args.epochs:
            done = True
        acc = evaluate(model, test.x[:2000], test.y[:2000])  # quick check; full test set at the end
        print(f"epoch {epoch} ({seen} samples) loss {total / max(seen, 1):.4f} test[:2000] acc {acc:.4f} "
              f"({time.time() - t0:.0f}s, {step} steps)", flush=True)

    _export_and_check(model, args, test, t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
