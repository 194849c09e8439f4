"""Targets as data: built-in JSON plus user JSON files, never code.

A target names everything the latency tools need to build and run for one kind
of device: the TVM target dict, the compiler that links the exported library
(a cross compiler for ARM), the RPC key its boards register under, and two
numbers the search uses (channel_step: the channel multiple the hardware
vectorises well; power_w: stated power for energy estimates).

Users add targets without editing code, in files of the same shape as
builtin.json, found (later files override earlier names):
  1. targets/builtin.json (shipped)
  2. ~/.config/graphprune/targets/*.json
  3. every path in $GRAPHPRUNE_TARGETS (os.pathsep separated; files or folders)
  4. explicit files passed to load_targets(extra_files=...) (CLI --targets-file)
"""
from __future__ import annotations

import copy
import re
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graphprune.errors import GraphpruneError

BUILTIN_FILE = Path(__file__).with_name("builtin.json")
_REQUIRED = ("tvm",)


@dataclass(frozen=True)
class Target:
    """One named target, as declared in a JSON file."""

    name: str
    tvm: dict[str, Any]
    description: str = ""
    host: dict[str, Any] | None = None
    cc: str | None = None
    rpc_key: str | None = None
    channel_step: int = 8
    power_w: float | None = None
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return str(self.tvm.get("kind", ""))

    @property
    def runs_on_host(self) -> bool:
        """True when a library for this target can run on this machine's CPU (same ISA)."""
        import platform
        if self.kind != "llvm":
            return False
        triple = self.tvm.get("mtriple")
        return not triple or triple.split("-")[0] == platform.machine()

    def tvm_dict(self, num_cores: int | None = None) -> dict[str, Any]:
        """The TVM target dict with 'native' mcpu resolved to this host's CPU (num_cores: a device's
        core count for MetaSchedule, unless the JSON states one)."""
        d = copy.deepcopy(self.tvm)
        if d.get("mcpu") == "native":
            from tvm.target import codegen
            d["mcpu"] = codegen.llvm_get_system_cpu()
        if self.kind == "llvm" and num_cores and "num-cores" not in d:
            d["num-cores"] = int(num_cores)
        if self.kind == "llvm" and self.runs_on_host and "num-cores" not in d:
            # MetaSchedule refuses CPU targets without it; it does not change code generation
            import psutil
            d["num-cores"] = psutil.cpu_count(logical=False) or os.cpu_count() or 1
        return d

    def tvm_target(self, num_cores: int | None = None):
        """Build the tvm.target.Target (imports TVM lazily: `graphprune targets` must stay fast)."""
        import tvm
        try:
            if self.host is not None:
                host = copy.deepcopy(self.host)
                if host.get("mcpu") == "native":
                    from tvm.target import codegen
                    host["mcpu"] = codegen.llvm_get_system_cpu()
                return tvm.target.Target(self.tvm_dict(num_cores), host=host)
            return tvm.target.Target(self.tvm_dict(num_cores))
        except Exception as exc:  # TVM raises ValueError/TVMError with multi-line text
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GraphpruneError(f"target {self.name!r} ({self.source}): TVM rejects its target dict: {first}") from None

    def to_json(self) -> dict[str, Any]:
        out = {"description": self.description, "tvm": self.tvm, "cc": self.cc, "rpc_key": self.rpc_key,
               "channel_step": self.channel_step, "power_w": self.power_w}
        if self.host is not None:
            out["host"] = self.host
        out.update(self.extra)
        return out


def _user_files() -> list[Path]:
    files: list[Path] = []
    cfg = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "graphprune" / "targets"
    if cfg.is_dir():
        files += sorted(cfg.glob("*.json"))
    for entry in filter(None, os.environ.get("GRAPHPRUNE_TARGETS", "").split(os.pathsep)):
        p = Path(entry).expanduser()
        if p.is_dir():
            files += sorted(p.glob("*.json"))
        elif p.is_file():
            files.append(p)
        else:
            raise GraphpruneError(f"GRAPHPRUNE_TARGETS entry {p}: no such file or folder")
    return files


def _parse_file(path: Path) -> dict[str, Target]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise GraphpruneError(f"{path}: cannot read targets file ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise GraphpruneError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    table = data.get("targets", data) if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise GraphpruneError(f"{path}: expected an object {{\"targets\": {{name: {{...}}}}}}")
    out = {}
    for name, spec in table.items():
        if name.startswith("_"):
            continue
        if not isinstance(spec, dict) or any(k not in spec for k in _REQUIRED) or not isinstance(spec["tvm"], dict):
            raise GraphpruneError(f"{path}: target {name!r} needs a 'tvm' object such as {{\"kind\": \"llvm\"}}")
        if "kind" not in spec["tvm"]:
            raise GraphpruneError(f"{path}: target {name!r}: its 'tvm' object has no 'kind'")
        known = {"description", "tvm", "host", "cc", "rpc_key", "channel_step", "power_w"}
        try:
            step = int(spec.get("channel_step", 8))
            power = None if spec.get("power_w") is None else float(spec["power_w"])
        except (TypeError, ValueError):
            raise GraphpruneError(f"{path}: target {name!r}: channel_step must be an integer and power_w a number") from None
        if step < 1:
            raise GraphpruneError(f"{path}: target {name!r}: channel_step must be >= 1")
        out[name] = Target(
            name=name, tvm=spec["tvm"], description=str(spec.get("description", "")), host=spec.get("host"),
            cc=spec.get("cc"), rpc_key=spec.get("rpc_key", name), channel_step=step, power_w=power,
            source=str(path), extra={k: v for k, v in spec.items() if k not in known},
        )
    return out


def load_targets(extra_files: list[str | os.PathLike] | None = None) -> dict[str, Target]:
    """All targets, by name; later sources override earlier ones (see module docstring)."""
    table = _parse_file(BUILTIN_FILE)
    for f in _user_files():
        table.update(_parse_file(f))
    for f in extra_files or []:
        p = Path(f)
        if not p.is_file():
            raise GraphpruneError(f"{p}: no such targets file")
        table.update(_parse_file(p))
    return table


def list_targets(extra_files=None) -> list[Target]:
    return list(load_targets(extra_files).values())


def get_target(name: "str | Target", extra_files=None) -> Target:
    """The target called `name`, or a GraphpruneError listing the known names."""
    if isinstance(name, Target):
        return name
    table = load_targets(extra_files)
    if name not in table:
        raise GraphpruneError(f"unknown target {name!r} (known: {', '.join(sorted(table))})")
    return table[name]


_ISA = re.compile(r"^(avx|sse|ssse|fma|f16c|amx|bmi|vnni|aes|sha|neon|sve|dotprod|i8mm)")


def check_runs_here(target: Target) -> None:
    """Raise a GraphpruneError unless code for `target` can execute on this CPU: same architecture
    and no instruction-set extension the host lacks (running AVX-512 code here would SIGILL)."""
    hint = f"; measure it on a device with --rpc-tracker HOST:PORT --rpc-key {target.rpc_key}"
    if not target.runs_on_host:
        raise GraphpruneError(f"target {target.name!r} cannot run on this host{hint}")
    from tvm.target import codegen
    import tvm
    host = codegen.llvm_get_cpu_features(tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()}))
    missing = sorted(f for f in codegen.llvm_get_cpu_features(target.tvm_target()) - host if _ISA.match(f))
    if missing:
        raise GraphpruneError(f"target {target.name!r} uses CPU features this host lacks "
                              f"({', '.join(missing[:4])}){hint}")
