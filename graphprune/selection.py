"""Choosing the channels to keep: a `PruningPlan` says, per unit, keep or remove."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from graphprune.analysis import Analysis
from graphprune.criteria import unit_scores
from graphprune.errors import GraphpruneError


@dataclass
class PruningPlan:
    analysis: Analysis
    keep_units: np.ndarray           # bool per unit
    criterion: str
    notes: list[str] = field(default_factory=list)

    @property
    def keep_elems(self) -> np.ndarray:
        return self.keep_units[self.analysis.unit_of]

    def kept(self, gid: int) -> int:
        return int(self.keep_units[self.analysis.units_of_group(gid)].sum())

    def removed_units(self) -> int:
        return int((~self.keep_units).sum())

    def inexact(self) -> list[str]:
        """Reasons the pruned model cannot match the original exactly (empty when it can)."""
        removed_groups = {int(g) for g in np.unique(self.analysis.group_of_unit[~self.keep_units]) if g >= 0}
        return sorted({r for g in removed_groups for r in self.analysis.inexact_reasons.get(g, [])})

    def config(self) -> dict[int, int]:
        """Kept units per prunable group: the search space's coordinates."""
        return {g.id: self.kept(g.id) for g in self.analysis.groups if g.prunable}


def choose(an: Analysis, ratio: float | None = None, *, keep: dict[int, int] | None = None,
           criterion: str = "l1", round_to: int = 1, seed: int = 0) -> PruningPlan:
    """Remove the lowest-ranked `ratio` of every prunable group, or keep `keep[gid]` units.

    `round_to` rounds each group's kept channel count to a multiple (hardware runs
    multiples of 8/16 faster). Frozen units are always kept; no group loses all units and
    no tensor loses all its channels.
    """
    if (ratio is None) == (keep is None):
        raise GraphpruneError("give either a ratio or kept counts per group")
    if ratio is not None and (isinstance(ratio, (bool, np.bool_)) or not isinstance(ratio, (int, float, np.number))
                              or not (0.0 <= ratio < 1.0)):
        raise GraphpruneError(f"ratio must be a number in [0, 1), got {ratio!r}")
    # numpy integers are integers (round_to=np.int64(8) from a config array); bools and
    # floats are not: round_to=True or 8.0 is a caller's mistake, not a multiple
    if isinstance(round_to, (bool, np.bool_)) or not isinstance(round_to, (int, np.integer)) or round_to < 1:
        raise GraphpruneError(f"round-to must be a positive integer, got {round_to!r} ({type(round_to).__name__})")
    round_to = int(round_to)
    scores, notes = unit_scores(an, criterion, seed)
    keep_units = np.ones(len(an.unit_frozen), bool)
    for g in an.groups:
        if not g.prunable:
            if keep is not None and g.id in keep and keep[g.id] != g.units:
                raise GraphpruneError(f"group {g.id} is frozen ({g.reason}); it cannot be pruned")
            continue
        units = an.units_of_group(g.id)
        free = units[~an.unit_frozen[units]]
        n_frozen = len(units) - len(free)
        if ratio is not None:
            n_keep = len(units) - int(math.floor(ratio * len(free) + 1e-9))
        else:
            if g.id not in keep:
                continue
            n_keep = int(keep[g.id])
            if not (1 <= n_keep <= len(units)):
                raise GraphpruneError(f"group {g.id}: kept count {n_keep} outside [1, {len(units)}]")
        n_keep = _round(n_keep, len(units), max(n_frozen, 1), round_to, max(1, g.channels // max(g.units, 1)))
        n_remove = len(units) - n_keep
        if n_remove > 0:
            order = free[np.argsort(scores[free], kind="stable")]
            keep_units[order[:n_remove]] = False
    if keep is not None:
        unknown = set(keep) - {g.id for g in an.groups}
        if unknown:
            raise GraphpruneError(f"no group with id {sorted(unknown)[0]}")
    _never_empty(an, keep_units, scores)
    return PruningPlan(an, keep_units, criterion, notes)


def _round(n_keep: int, total: int, minimum: int, round_to: int, width: int) -> int:
    step = round_to // math.gcd(round_to, width)
    if step > 1:
        n_keep = max(step, int(round(n_keep / step)) * step)
        if n_keep < minimum:
            n_keep = int(math.ceil(minimum / step)) * step
    return int(min(max(n_keep, minimum), total))


def _never_empty(an: Analysis, keep_units: np.ndarray, scores: np.ndarray) -> None:
    """Split/Slice outputs can hold only removed units: keep their best one."""
    for m in an.maps.values():
        units = an.unit_of[m.elems]
        if not keep_units[units].any():
            keep_units[units[np.argmax(scores[units])]] = True
