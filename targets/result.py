"""The one result format every backend and device returns."""
from __future__ import annotations

from dataclasses import asdict, dataclass


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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LatencyResult":
        names = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in d.items() if k in names})

    def summary(self) -> str:
        how = "tuned" if self.tuned else "untuned"
        extra = ", emulated" if self.emulated else ""
        cached = " (cached)" if self.cached else ""
        return (f"{self.median_ms:.3f} ms median, spread (IQR) {self.spread_ms:.3f} ms, {self.repeats} repeats; "
                f"backend {self.backend}, target {self.target}, {how} [{self.tuning}], device {self.device}{extra}{cached}")


def stats(samples_ms: list[float], **fields) -> LatencyResult:
    """Median / IQR / min / max of timings in ms."""
    import numpy as np
    a = np.asarray(samples_ms, dtype=float)
    q25, q50, q75 = np.percentile(a, [25, 50, 75])
    return LatencyResult(median_ms=float(q50), spread_ms=float(q75 - q25), repeats=int(a.size),
                         min_ms=float(a.min()), max_ms=float(a.max()), **fields)
