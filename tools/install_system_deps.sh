#!/usr/bin/env bash
# Installs the Debian packages graphprune uses, when missing (needs root or sudo):
#   dataset-fashion-mnist  real data for the example, the importance study and the demo
#   gcc-aarch64-linux-gnu  cross-linker for the arm-a72 / arm-a53 targets
#   qemu-user              runs an emulated aarch64 RPC server (tools/qemu_arm_rpc.sh)
set -euo pipefail
pkgs=(dataset-fashion-mnist gcc-aarch64-linux-gnu qemu-user)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "install_system_deps: no apt-get; install ${missing[*]} by hand" >&2; exit 0
fi
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
