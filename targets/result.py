"""The one result format every backend and device returns."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields


@dataclass
class LatencyResult:
    """A latency measurement: median and spread of `repeats` timed runs, in milliseconds.

    spread_ms is the interquartile range (p75 - p25) of the repeat timings: robust
    to the occasional scheduler hiccup that a std would amplify.
    """

    median_ms: float
    spread_ms: float
    repeats: int
    backend: str          # "ort" or "tvm"
    target: str           # target name from the registry
    tuned: bool           # True when MetaSchedule schedules were applied
    tuning: str           # how: "untuned", "tuned N trials", "replayed from base ..."
    device: str           # "host" or "rpc:KEY@host:port"
    emulated: bool = False  # True when the device is an emulator (qemu): numbers are not the board's
    cached: bool = False    # True when read back from the on-disk cache
    min_ms: float | None = None
    max_ms: float | None = None
    input_shapes: dict | None = None  # the shapes timed: {input: [dims]} (dynamic dims pinned)
    threads: int | None = None        # threads the runtime ran with (ort: intra-op; tvm: its pool)
    note: str = ""                    # what the label does not say (e.g. a target name only requested)
    device_info: dict | None = None   # ort over RPC: the device's onnxruntime version, providers, CPU, cores

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LatencyResult":
        """A result read back (cache); ValueError unless `d` has every field with its type, so a
        corrupt or foreign entry is a miss, not a crash later when it is printed."""
        if not isinstance(d, dict):
            raise ValueError("not an object")
        kinds = {"median_ms": _num, "spread_ms": _num, "repeats": int, "backend": str, "target": str,
                 "tuned": bool, "tuning": str, "device": str, "emulated": bool, "cached": bool,
                 "min_ms": _num, "max_ms": _num, "input_shapes": dict, "threads": int, "note": str,
                 "device_info": dict}
        out = {}
        for f in fields(cls):
            if f.name == "device_info" and f.name not in d:  # entries cached before the field existed
                continue
            if f.name not in d:
                raise ValueError(f"missing {f.name}")
            v = d[f.name]
            if v is not None or f.name in ("median_ms", "spread_ms", "repeats", "tuned"):
                want = kinds[f.name]
                ok = want(v) if want is _num else isinstance(v, want) and (want is bool or not isinstance(v, bool))
                if not ok:
                    raise ValueError(f"bad {f.name}")
            out[f.name] = v
        shapes = out["input_shapes"]
        if shapes is not None and not all(isinstance(s, list) and all(type(x) is int for x in s)
                                          for s in shapes.values()):
            raise ValueError("bad input_shapes")
        return cls(**out)

    def summary(self) -> str:
        how = "tuned" if self.tuned else "untuned"
        extra = ", emulated" if self.emulated else ""
        cached = " (cached)" if self.cached else ""
        shapes = shape_text(self.input_shapes or {})
        note = f"; {self.note}" if self.note else ""
        if self.device_info:
            d = self.device_info
            note += (f"; device runs onnxruntime {d.get('onnxruntime', '?')} [{', '.join(d.get('providers', []))}] "
                     f"on {d.get('cpu', '?')} ({d.get('machine', '?')}, {d.get('cores', '?')} cores)")
        return (f"{self.median_ms:.3f} ms median, spread (IQR) {self.spread_ms:.3f} ms, {self.repeats} repeats; "
                f"backend {self.backend}, target {self.target}, {how} [{self.tuning}], device {self.device}{extra}; "
                f"input {shapes or '?'}, threads {self.threads if self.threads is not None else '?'}{note}{cached}")


def shape_text(shapes: dict) -> str:
    """{"x": [1, 3, 64, 64]} -> 'x=1x3x64x64' (result lines, compile messages)."""
    return ", ".join(f"{k}={'x'.join(map(str, v)) or 'scalar'}" for k, v in shapes.items())


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def stats(samples_ms: list[float], **fields) -> LatencyResult:
    """Median / IQR / min / max of timings in ms."""
    import numpy as np
    a = np.asarray(samples_ms, dtype=float)
    q25, q50, q75 = np.percentile(a, [25, 50, 75])
    return LatencyResult(median_ms=float(q50), spread_ms=float(q75 - q25), repeats=int(a.size),
                         min_ms=float(a.min()), max_ms=float(a.max()), **fields)
