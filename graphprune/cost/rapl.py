"""Measured energy from Intel/AMD RAPL counters (Linux powercap sysfs), where readable.

Each top-level zone /sys/class/powercap/intel-rapl:N (one per CPU package) has
`energy_uj`, a cumulative microjoule counter that wraps at `max_energy_range_uj`.
Energy of a piece of work = counter after - counter before (plus the range if it
wrapped), summed over packages. It is the whole package's energy: other processes on
a shared machine are included, so measure many repetitions on a quiet machine and
read it as an upper bound for the model. Since Linux 5.10 (CVE-2020-8694) `energy_uj`
is readable by root only; containers often have no powercap tree at all. Then
`rapl_zones` returns [] and `rapl_unavailable` says why, and callers fall back to the
estimate (graphprune.cost.energy), labelled as such.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

POWERCAP = Path("/sys/class/powercap")


@dataclass(frozen=True)
class Zone:
    path: Path
    name: str
    max_range_uj: int

    def read_uj(self) -> int:
        return int((self.path / "energy_uj").read_text().strip())


@dataclass
class MeasuredEnergy:
    joules: float           # over all repetitions
    repeats: int
    seconds: float
    zones: list

    @property
    def per_call_uj(self) -> float:
        return self.joules / self.repeats * 1e6

    def summary(self) -> str:
        return (f"{self.per_call_uj:.1f} uJ/inference measured (RAPL {', '.join(self.zones)}, whole package, "
                f"{self.repeats} runs in {self.seconds:.2f} s)")


def rapl_zones(root: str | os.PathLike = POWERCAP) -> list[Zone]:
    """The readable top-level RAPL package zones under `root` (subzones like core/uncore are
    inside their package's count and would be counted twice)."""
    root = Path(root)
    zones = []
    try:
        entries = sorted(root.glob("intel-rapl:*")) + sorted(root.glob("amd-rapl:*"))
    except OSError:
        return []
    for d in entries:
        if d.name.count(":") != 1:
            continue
        try:
            name = (d / "name").read_text().strip() if (d / "name").exists() else d.name
            max_range = int((d / "max_energy_range_uj").read_text().strip())
            zone = Zone(d, name, max_range)
            zone.read_uj()
        except (OSError, ValueError):
            continue
        zones.append(zone)
    return zones


def rapl_unavailable(root: str | os.PathLike = POWERCAP) -> str | None:
    """None when RAPL can be read, else the reason in a few words."""
    root = Path(root)
    if not root.exists():
        return f"no {root} (no powercap driver, or a container without it)"
    if not any(root.glob("intel-rapl:*")) and not any(root.glob("amd-rapl:*")):
        return f"no RAPL zone under {root}"
    if not rapl_zones(root):
        return f"RAPL energy_uj under {root} is not readable (root only since Linux 5.10)"
    return None


def measure_energy(fn, repeats: int = 100, root: str | os.PathLike = POWERCAP) -> MeasuredEnergy | None:
    """Call `fn` `repeats` times and return the package energy it took, or None without RAPL."""
    zones = rapl_zones(root)
    if not zones:
        return None
    before = [z.read_uj() for z in zones]
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    seconds = time.perf_counter() - t0
    after = [z.read_uj() for z in zones]
    total = sum(a - b if a >= b else a + z.max_range_uj - b for z, a, b in zip(zones, after, before))
    return MeasuredEnergy(total * 1e-6, repeats, seconds, [z.name for z in zones])
