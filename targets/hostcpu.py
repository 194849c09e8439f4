"""What this host's CPU can execute, read from the kernel (/proc/cpuinfo) on Linux.

Why not LLVM: llvm_get_system_cpu() names a CPU model and llvm_get_cpu_features() lists
that model's features, which is wrong whenever LLVM's table is older or coarser than the
chip (a Sapphire Rapids-class VM that lists amx_tile, amx_int8 and avx512_bf16 was judged
to lack AMX). The kernel's flags are what the CPU reported by CPUID, masked by what the
hypervisor passes through: exactly what will not SIGILL.
"""
from __future__ import annotations

import platform
import re
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")

# LLVM feature name -> /proc/cpuinfo flag, where they differ beyond '_', '-', '.'
_ALIASES = {"sse3": "pni", "bmi": "bmi1", "sha": "shani", "neon": "asimd", "dotprod": "asimddp", "fullfp16": "fphp",
            "fp-armv8": "fp", "crypto": "aes", "rdrnd": "rdrand", "rdseed": "rdseed"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]", "", name.lower())


def cpuinfo_flags(text: str | None = None) -> set[str] | None:
    """Normalised flags of the first CPU in /proc/cpuinfo (x86 'flags', aarch64 'Features'),
    or None when there is no such file (not Linux)."""
    if text is None:
        try:
            text = CPUINFO.read_text(errors="replace")
        except OSError:
            return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return {_norm(f) for f in value.split()}
    return None


def cpu_model_name(text: str | None = None) -> str:
    """'model name' from /proc/cpuinfo (this host's CPU, for result labels), else the machine."""
    if text is None:
        try:
            text = CPUINFO.read_text(errors="replace")
        except OSError:
            text = ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("model name", "Model name", "Hardware") and value.strip():
            return value.strip()
    return platform.machine() or "unknown CPU"


def missing_features(wanted: set[str], flags: set[str]) -> list[str]:
    """The LLVM feature names in `wanted` that the host flags do not list."""
    return sorted(f for f in wanted if _norm(_ALIASES.get(f, f)) not in flags and _norm(f) not in flags)
