"""The search space: kept units per prunable group, on a grid that suits the target.

Each searchable group gets the list of kept counts it may take: multiples of the
target's channel step (in units of the group: a grouped conv's unit is a group of
channels) between a lower bound and the full width, plus the full width itself.
A configuration is a dict {group id: kept units}; its key is the tuple of kept
counts in group order, which names it in the journal.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from graphprune.errors import GraphpruneError


@dataclass
class Axis:
    gid: int
    units: int            # full width in units
    channels: int
    choices: list[int]    # allowed kept counts, ascending, last == units
    members: list[str] = field(default_factory=list)

    def fraction(self, kept: int) -> float:
        return kept / self.units


@dataclass
class SearchSpace:
    axes: list[Axis]
    step: int
    min_keep: float

    @property
    def dims(self) -> int:
        return len(self.axes)

    def full(self) -> dict[int, int]:
        return {a.gid: a.units for a in self.axes}

    def key(self, config: dict[int, int]) -> str:
        return "-".join(str(int(config[a.gid])) for a in self.axes)

    def from_key(self, key: str) -> dict[int, int]:
        vals = [int(v) for v in key.split("-")]
        return {a.gid: v for a, v in zip(self.axes, vals)}

    def decode(self, x) -> dict[int, int]:
        """[0,1]^d (optimizer coordinates) -> kept counts on the grid."""
        x = np.clip(np.asarray(x, float).reshape(-1), 0.0, 1.0)
        out = {}
        for a, v in zip(self.axes, x):
            i = min(int(v * len(a.choices)), len(a.choices) - 1)
            out[a.gid] = a.choices[i]
        return out

    def encode(self, config: dict[int, int]) -> np.ndarray:
        """Centre of the cell of each kept count (inverse of decode)."""
        out = []
        for a in self.axes:
            i = a.choices.index(config[a.gid]) if config[a.gid] in a.choices else int(
                np.argmin([abs(c - config[a.gid]) for c in a.choices]))
            out.append((i + 0.5) / len(a.choices))
        return np.asarray(out)

    def fractions(self, config: dict[int, int]) -> np.ndarray:
        return np.asarray([config[a.gid] / a.units for a in self.axes], float)

    def snap(self, gid: int, kept: float) -> int:
        a = self.axis(gid)
        return min(a.choices, key=lambda c: (abs(c - kept), -c))

    def axis(self, gid: int) -> Axis:
        for a in self.axes:
            if a.gid == gid:
                return a
        raise KeyError(gid)

    def restrict(self, lower: dict[int, int]) -> "SearchSpace":
        """A copy whose groups keep at least `lower[gid]` units (sensitivity bounds)."""
        axes = []
        for a in self.axes:
            lo = lower.get(a.gid, 0)
            ch = [c for c in a.choices if c >= lo] or [a.units]
            axes.append(Axis(a.gid, a.units, a.channels, ch, a.members))
        return SearchSpace(axes, self.step, self.min_keep)

    def contains(self, config: dict) -> bool:
        """Every group's kept count is one of its axis' choices (within the user's bounds)."""
        return all(int(config.get(a.gid, config.get(str(a.gid), -1))) in a.choices for a in self.axes)

    def size(self) -> int:
        return math.prod(len(a.choices) for a in self.axes)

    def to_json(self) -> dict:
        return {"step": self.step, "min_keep": self.min_keep,
                "groups": [{"id": a.gid, "units": a.units, "channels": a.channels, "choices": a.choices,
                            "members": a.members} for a in self.axes]}


def parse_bounds(text: str | None) -> dict[int, tuple[float, float]]:
    """`--group-bounds "0:0.5:1,3:0.25:0.75"` -> {gid: (min kept fraction, max kept fraction)}."""
    out: dict[int, tuple[float, float]] = {}
    if not text:
        return out
    for part in text.split(","):
        bits = part.strip().split(":")
        try:
            if len(bits) != 3:
                raise ValueError
            gid, lo, hi = int(bits[0]), float(bits[1]), float(bits[2])
        except ValueError:
            raise GraphpruneError(f"--group-bounds: expected GROUP:MIN:MAX (kept fractions), got {part!r}") from None
        if not (0 < lo <= hi <= 1):
            raise GraphpruneError(f"--group-bounds {part!r}: need 0 < MIN <= MAX <= 1")
        out[gid] = (lo, hi)
    return out


def build_space(analysis, step: int, min_keep: float = 0.25,
                bounds: dict[int, tuple[float, float]] | None = None) -> SearchSpace:
    """Axes for every prunable group that has more than one allowed kept count."""
    if not (0 < min_keep <= 1):
        raise GraphpruneError(f"--min-keep must be in (0, 1], got {min_keep}")
    if step < 1:
        raise GraphpruneError(f"channel step must be >= 1, got {step}")
    bounds = dict(bounds or {})
    known = {g.id for g in analysis.groups}
    for gid in bounds:
        if gid not in known:
            raise GraphpruneError(f"--group-bounds: no group {gid} (the model has groups 0..{len(known) - 1})")
    axes = []
    for g in analysis.groups:
        if not g.prunable:
            if g.id in bounds:
                raise GraphpruneError(f"--group-bounds: group {g.id} is frozen ({g.reason})")
            continue
        units = g.units
        width = max(1, g.channels // max(units, 1))            # channels per unit
        ustep = max(1, step // math.gcd(step, width))          # step in units
        lo_f, hi_f = bounds.get(g.id, (min_keep, 1.0))
        lo = max(g.frozen_units, 1, int(math.ceil(lo_f * units - 1e-9)))
        hi = max(lo, int(math.floor(hi_f * units + 1e-9)))
        choices = sorted({c for c in range(ustep, units + 1, ustep) if lo <= c <= hi} | ({units} if hi >= units else set()))
        if not choices:  # the bounds fall between two multiples: take the nearest multiple above lo
            choices = [min(units, int(math.ceil(lo / ustep)) * ustep)]
        if len(choices) > 1 or hi < units:
            axes.append(Axis(g.id, units, g.channels, choices, list(g.members)))
    if not axes:
        raise GraphpruneError(f"nothing to search: no prunable group has more than one kept count on a "
                              f"channel step of {step} (try a smaller --channel-step or --min-keep)")
    return SearchSpace(axes, step, min_keep)
