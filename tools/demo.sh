#!/usr/bin/env bash
# The main job on the bundled example (examples/fashion_mnist_resnet.onnx, trained on
# Fashion-MNIST by tools/train_fashion_mnist.py): analyse its channel groups, prune and
# verify one uniform cut, then search the latency/accuracy Pareto front on this host
# with fine-tuning of the chosen model. A few minutes on 2 cores; results in out/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
GP=.venv/bin/graphprune
MODEL=examples/fashion_mnist_resnet.onnx
OUT=out/demo
mkdir -p "$OUT"

echo "== channel groups of $MODEL"
"$GP" analyze "$MODEL"

echo; echo "== uniform 30% L1 pruning, proved exact"
"$GP" prune "$MODEL" -o "$OUT/uniform30.onnx" --ratio 0.3 --round-to 8 --verify

echo; echo "== Fashion-MNIST subsets (validation from the test split, fine-tuning from the train split)"
.venv/bin/python tools/make_demo_data.py -o "$OUT/data" --train 12000

echo; echo "== latency/accuracy front on this host (onnxruntime)"
"$GP" optimize "$MODEL" --target x86 --data "$OUT/data/val.npz" --train-data "$OUT/data/train.npz" \
    --epochs 2 --max-error-increase 0.01 --recovery-slack 0.05 --budget 40 --threads 1 -o "$OUT/optimize"

echo; echo "== report ($OUT/optimize/report.md; plot: $OUT/optimize/pareto.png)"
cat "$OUT/optimize/report.md"
