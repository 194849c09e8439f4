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
    precisions: tuple | None = None   # arithmetic the target's runtime has fast kernels for (fp32, fp16, int8)
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

    def check_mcpu(self) -> None:
        """Refuse an mcpu LLVM does not know for the triple: TVM only warns and compiles generic
        code, which would then be timed and reported as this target's latency."""
        from tvm.target import codegen
        for field_name, d in (("tvm", self.tvm), ("host", self.host or {})):
            cpu = d.get("mcpu")
            if d.get("kind") != "llvm" or not cpu or cpu == "native":
                continue
            triple = d.get("mtriple") or codegen.llvm_get_system_triple()
            if not codegen.llvm_is_valid_cpu(cpu, triple):
                raise GraphpruneError(f"{self.source}: target {self.name!r}: {field_name}.mcpu {cpu!r} is not a "
                                      f"CPU LLVM {codegen.llvm_version_major()} knows for {triple}")

    def tvm_target(self, num_cores: int | None = None):
        """Build the tvm.target.Target (imports TVM lazily: `graphprune targets` must stay fast)."""
        import tvm
        self.check_mcpu()
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
        if self.precisions is not None:
            out["precisions"] = list(self.precisions)
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


_KNOWN = ("description", "tvm", "host", "cc", "rpc_key", "channel_step", "power_w", "precisions")
_PRECISIONS = ("fp32", "fp16", "int8")


def _read_json(path: Path):
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise GraphpruneError(f"{path}: cannot read targets file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise GraphpruneError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise GraphpruneError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except ValueError as exc:  # e.g. numbers Python's JSON parser cannot hold
        raise GraphpruneError(f"{path}: not valid JSON ({exc})") from None


def _field_error(spec: dict) -> str | None:
    """The first problem with one target's fields, as 'FIELD: reason', or None."""
    import math
    unknown = sorted(k for k in spec if k not in _KNOWN and not k.startswith("_"))
    if unknown:
        return f"unknown key {unknown[0]!r} (known: {', '.join(_KNOWN)})"
    tvm = spec.get("tvm")
    if not isinstance(tvm, dict):
        return "tvm: needs a 'tvm' object such as {\"kind\": \"llvm\"}"
    if not isinstance(tvm.get("kind"), str):
        return "tvm: its 'tvm' object has no 'kind'"
    for key in ("mcpu", "mtriple"):
        if key in tvm and not isinstance(tvm[key], str):
            return f"tvm.{key}: must be a string"
    if spec.get("host") is not None and not isinstance(spec["host"], dict):
        return "host: must be an object (a TVM target dict) or null"
    for key in ("description", "cc", "rpc_key"):
        if spec.get(key) is not None and not isinstance(spec[key], str):
            return f"{key}: must be a string or null"
    step = spec.get("channel_step", 8)
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        return f"channel_step: must be a positive integer (got {step!r})"
    power = spec.get("power_w")
    if power is not None and (isinstance(power, bool) or not isinstance(power, (int, float))
                              or not math.isfinite(power) or power <= 0):
        return f"power_w: must be a positive number of watts or null (got {power!r})"
    precisions = spec.get("precisions")
    if precisions is not None and (not isinstance(precisions, list) or not precisions
                                   or any(p not in _PRECISIONS for p in precisions)):
        return f"precisions: must be a non-empty list of {', '.join(_PRECISIONS)} or null (got {precisions!r})"
    return None


def _parse_file(path: Path) -> dict[str, Target]:
    """Targets of one file; a one-line error naming the file, target and field for anything
    malformed (a typo must not silently fall back to a default)."""
    data = _read_json(path)
    table = data.get("targets", data) if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise GraphpruneError(f"{path}: expected an object {{\"targets\": {{name: {{...}}}}}}")
    if "targets" in data:
        extra_top = sorted(k for k in data if k != "targets" and not k.startswith("_"))
        if extra_top:
            raise GraphpruneError(f"{path}: unknown top-level key {extra_top[0]!r} (expected 'targets')")
    out = {}
    for name, spec in table.items():
        if name.startswith("_"):
            continue
        if not isinstance(spec, dict):
            raise GraphpruneError(f"{path}: target {name!r} needs a 'tvm' object such as {{\"kind\": \"llvm\"}}")
        problem = _field_error(spec)
        if problem:
            raise GraphpruneError(f"{path}: target {name!r}: {problem}")
        power = spec.get("power_w")
        out[name] = Target(
            name=name, tvm=spec["tvm"], description=spec.get("description") or "", host=spec.get("host"),
            cc=spec.get("cc"), rpc_key=spec.get("rpc_key", name), channel_step=spec.get("channel_step", 8),
            power_w=None if power is None else float(power), source=str(path),
            precisions=None if spec.get("precisions") is None else tuple(spec["precisions"]),
            extra={k: v for k, v in spec.items() if k not in _KNOWN},
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
    from graphprune.targets.hostcpu import cpuinfo_flags, missing_features
    wanted = {f for f in codegen.llvm_get_cpu_features(target.tvm_target()) if _ISA.match(f)}
    flags = cpuinfo_flags()   # the kernel's view (see hostcpu.py); LLVM's CPU-name table elsewhere
    if flags is not None:
        missing = missing_features(wanted, flags)
    else:
        import tvm
        host = codegen.llvm_get_cpu_features(tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()}))
        missing = sorted(wanted - set(host))
    if missing:
        raise GraphpruneError(f"target {target.name!r} uses CPU features this host lacks "
                              f"({', '.join(missing[:4])}){hint}")
