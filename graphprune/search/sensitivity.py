"""Sensitivity analysis: prune each group alone at a sweep of ratios.

Gives (1) per-group curves of latency and error against kept fraction, reported,
(2) lower bounds for the search: when the user allows an error increase E, a group
whose own pruning to a fraction already costs more than E cannot go that low in any
full configuration either (pruning other groups does not give accuracy back, to a
first approximation), so its axis starts above it, and (3) training data for the
surrogate.
"""
from __future__ import annotations

import numpy as np

from graphprune.search.space import SearchSpace


def sweep_configs(space: SearchSpace, ratios: list[float]) -> list[tuple[int, float, dict[int, int]]]:
    """(group, ratio removed, configuration) for each group and ratio, distinct configurations only."""
    out, seen = [], set()
    full = space.full()
    for a in space.axes:
        for r in ratios:
            kept = space.snap(a.gid, a.units * (1.0 - r))
            cfg = dict(full)
            cfg[a.gid] = kept
            k = space.key(cfg)
            if k not in seen and kept != a.units:
                seen.add(k)
                out.append((a.gid, r, cfg))
    return out


def lower_bounds(space: SearchSpace, points: list[dict], base_error: float,
                 max_increase: float | None, slack: float = 1.5) -> dict[int, int]:
    """Per group, the smallest swept kept count whose own error increase stays within
    `slack` x the allowed increase (slack: interactions can also help a little); the
    search never goes below it. No bound without an error constraint."""
    if max_increase is None:
        return {}
    out = {}
    for a in space.axes:
        pts = sorted((p["config"][str(a.gid)], p["error"]) for p in points if p.get("group") == a.gid)
        bad = [kept for kept, err in pts if err - base_error > slack * max_increase + 1e-12]
        if not bad:
            continue
        # the bound is the largest failing kept count: anything at or below it failed alone
        worst_bad = max(bad)
        candidates = [c for c in a.choices if c > worst_bad]
        out[a.gid] = min(candidates) if candidates else a.units
    return out


def curves(space: SearchSpace, points: list[dict], baseline: dict) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for a in space.axes:
        pts = [p for p in points if p.get("group") == a.gid]
        rows = [{"kept": a.units, "fraction": 1.0, "latency_ms": baseline["latency_ms"], "error": baseline["error"]}]
        for p in sorted(pts, key=lambda p: -p["config"][str(a.gid)]):
            k = p["config"][str(a.gid)]
            rows.append({"kept": k, "fraction": k / a.units, "latency_ms": p.get("latency_ms"), "error": p["error"]})
        out[a.gid] = rows
    return out


def as_fractions(space: SearchSpace, records: list[dict]) -> np.ndarray:
    return np.asarray([space.fractions({int(k): v for k, v in r["config"].items()}) for r in records])
