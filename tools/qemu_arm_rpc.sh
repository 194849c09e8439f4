#!/usr/bin/env bash
# An emulated aarch64 TVM RPC server under qemu-user, registered at a tracker, so arm-a72/arm-a53
# libraries can be run (correctness; latency numbers are emulated, not a board's).
#
#   tools/qemu_arm_rpc.sh setup                 # once: private aarch64 root + TVM runtime (~200 MB)
#   tools/qemu_arm_rpc.sh serve HOST:PORT [KEY] # run an RPC server under KEY (default rasp4)
#   tools/qemu_arm_rpc.sh serve-ort HOST:PORT [KEY] # the same as a graphprune device-server: also
#                                               # times ONNX models with the root's onnxruntime
#   tools/qemu_arm_rpc.sh python -c '...'       # run the emulated python
#
# The root holds Debian bookworm arm64 python3.11 packages unpacked with dpkg -x (nothing is
# installed into the system) and the manylinux aarch64 apache-tvm wheel. TVM_USE_RUNTIME_LIB=1
# loads only the runtime library (no compiler needed on the "board"). The RPC server starts
# helper processes with sys.executable, which must be the qemu wrapper because this container
# has no binfmt_misc registration: a sitecustomize.py in the root sets it.
# Needs (host): qemu-user, gcc-aarch64-linux-gnu (for its aarch64 libc), apt with arm64 enabled
# (`dpkg --add-architecture arm64 && apt-get update`, done by setup when run as root).
set -euo pipefail
ROOT="${GRAPHPRUNE_QEMU_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/graphprune/qemu-aarch64}"
HERE="$(cd "$(dirname "$0")/.." && pwd)"
PIP="${PIP:-$HERE/.venv/bin/pip}"
TVM_VERSION="${TVM_VERSION:-0.27.0.post1}"
FFI_VERSION="${FFI_VERSION:-0.1.14.post1}"
# onnxruntime for the device-server: 1.32's aarch64 wheel segfaults at import under qemu-user
# (the host's 1.32 is unaffected); 1.19.2 runs
ORT_VERSION="${ORT_VERSION:-1.19.2}"
PKGS="python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libgcc-s1 libstdc++6 zlib1g
libexpat1 libffi8 libssl3 libbz2-1.0 liblzma5 libsqlite3-0 libuuid1 libncursesw6 libtinfo6
libreadline8 libcrypt1 libnsl2 libtirpc3 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libcom-err2
libkrb5support0 libkeyutils1 libdb5.3"

setup() {
  command -v qemu-aarch64 >/dev/null || { echo "qemu-aarch64 missing: apt-get install qemu-user" >&2; exit 2; }
  mkdir -p "$ROOT/debs" "$ROOT/site" "$ROOT/bin"
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64 && apt-get update -q
  fi
  (cd "$ROOT/debs" && apt-get download -q $(for p in $PKGS; do echo "$p:arm64"; done))
  for d in "$ROOT"/debs/*.deb; do dpkg -x "$d" "$ROOT"; done
  "$PIP" install -q --target "$ROOT/site" --only-binary=:all: --platform manylinux_2_28_aarch64 \
    --python-version 3.11 --implementation cp "apache-tvm==$TVM_VERSION" "apache-tvm-ffi==$FFI_VERSION" \
    numpy psutil cloudpickle tornado
  "$PIP" install -q --target "$ROOT/site" --only-binary=:all: --platform manylinux_2_27_aarch64 \
    --python-version 3.11 --implementation cp --no-deps --upgrade "onnxruntime==$ORT_VERSION"
  cat > "$ROOT/bin/python" <<WRAP
#!/bin/sh
export PYTHONPATH="$ROOT/site" TVM_USE_RUNTIME_LIB=1 GRAPHPRUNE_QEMU_PYTHON="$ROOT/bin/python"
exec qemu-aarch64 -L "$ROOT" "$ROOT/usr/bin/python3.11" "\$@"
WRAP
  chmod +x "$ROOT/bin/python"
  cat > "$ROOT/site/sitecustomize.py" <<'PY'
import os, sys
if os.environ.get("GRAPHPRUNE_QEMU_PYTHON"):  # children (popen workers) must start through qemu too
    sys.executable = os.environ["GRAPHPRUNE_QEMU_PYTHON"]
PY
  "$ROOT/bin/python" -c 'import platform, tvm; print("emulated", platform.machine(), "tvm", tvm.__version__)'
}

case "${1:-}" in
  setup) setup ;;
  serve)
    [ -n "${2:-}" ] || { echo "usage: $0 serve HOST:PORT [KEY]" >&2; exit 2; }
    exec "$ROOT/bin/python" -m tvm.exec.rpc_server --host 127.0.0.1 --port "${PORT:-9090}" \
      --port-end "${PORT_END:-9199}" --tracker "$2" --key "${3:-rasp4}" ;;
  serve-ort)
    [ -n "${2:-}" ] || { echo "usage: $0 serve-ort HOST:PORT [KEY]" >&2; exit 2; }
    exec "$ROOT/bin/python" "$HERE/targets/device_server.py" --host 127.0.0.1 --port "${PORT:-9090}" \
      --tracker "$2" --key "${3:-rasp4}" ;;
  python) shift; exec "$ROOT/bin/python" "$@" ;;
  *) echo "usage: $0 setup | serve HOST:PORT [KEY] | serve-ort HOST:PORT [KEY] | python ARGS" >&2; exit 2 ;;
esac
