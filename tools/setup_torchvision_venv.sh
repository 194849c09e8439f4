#!/usr/bin/env bash
# Create .venv-torchvision: a separate venv holding torch 2.14.1 + torchvision 0.29.1.
#
# Why a separate venv: the main .venv pins CPU torch 2.13, and the torchvision
# wheel the registry offers is built against torch 2.14.1, so it cannot import
# beside the main venv's torch. Exporting the torchvision model zoo (and running
# torch-pruning, the baseline of tools/bench_prune_speed.py) therefore happens here; graphprune itself
# only ever sees the exported .onnx files.
#
# Idempotent: if the venv already imports the pinned versions, nothing is done.
# Usage: bash tools/setup_torchvision_venv.sh   (from anywhere)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="$ROOT/.venv-torchvision"
PY="${PYTHON:-python3}"

check() {
  "$VENV/bin/python" - <<'PY' 2>/dev/null
import torch, torchvision, onnx, onnxscript, onnxruntime, torch_pruning
assert torch.__version__.split("+")[0] == "2.14.1", torch.__version__
assert torchvision.__version__.split("+")[0] == "0.29.1", torchvision.__version__
PY
}

if [ -x "$VENV/bin/python" ] && check; then
  echo "setup_torchvision_venv: $VENV already complete"
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet \
  torch==2.14.1 torchvision==0.29.1 onnx onnxscript onnxruntime torch-pruning==1.6.0
check
echo "setup_torchvision_venv: $VENV ready"
