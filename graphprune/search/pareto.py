"""Pareto dominance, the front, and the criteria-optimal choice from it.

All objectives are minimised (error, not accuracy; latency; MACs; bytes; energy).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def dominates(a, b) -> bool:
    """a is no worse than b in every objective and better in one."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return bool(np.all(a <= b) and np.any(a < b))


def front_indices(points) -> list[int]:
    """Indices of the non-dominated points (duplicates: the first one kept)."""
    pts = np.asarray(points, float)
    keep = []
    for i, p in enumerate(pts):
        dominated = any(dominates(q, p) for j, q in enumerate(pts) if j != i)
        duplicate = any(np.array_equal(pts[j], p) for j in keep)
        if not dominated and not duplicate:
            keep.append(i)
    return keep


def front(records: list[dict], objectives: list[str]) -> list[dict]:
    """The non-dominated records, sorted by the first objective."""
    if not records:
        return []
    pts = [[r[o] for o in objectives] for r in records]
    out = [records[i] for i in front_indices(pts)]
    return sorted(out, key=lambda r: tuple(r[o] for o in objectives))


@dataclass
class Constraints:
    max_error: float | None = None        # absolute error ceiling (original error + allowed increase)
    max_latency_ms: float | None = None

    def violations(self, r: dict) -> list[str]:
        out = []
        if self.max_error is not None and r["error"] > self.max_error + 1e-12:
            out.append(f"error {r['error']:.4f} > {self.max_error:.4f}")
        if self.max_latency_ms is not None and r["latency_ms"] > self.max_latency_ms:
            out.append(f"latency {r['latency_ms']:.3f} ms > {self.max_latency_ms:.3f} ms")
        return out


@dataclass
class Choice:
    record: dict | None
    reason: str
    score: float | None
    feasible: list[dict]   # the front members meeting the constraints, best score first


def choose_best(front_records: list[dict], baseline: dict, objectives: list[str],
                constraints: Constraints, weights: dict[str, float]) -> Choice:
    """The front's configuration that meets the constraints with the lowest weighted sum of
    objectives relative to the original model (latency 0.5 = twice as fast); error is
    compared as an absolute increase in percentage points / 100 scaled by 1/(original error + 1 pp),
    so a 1 pp accuracy loss weighs like the relative change a small error would see."""
    feasible = [r for r in front_records if not constraints.violations(r)]
    if not feasible:
        # fewest violated constraints, then the smallest error (not the front's first, fastest member)
        closest = min(front_records, key=lambda r: (len(constraints.violations(r)), r["error"])) \
            if front_records else None
        why = "; ".join(constraints.violations(closest)) if closest else "no candidate was measured"
        return Choice(None, f"no candidate meets the constraints (closest: {why})", None, [])

    def term(r, o):
        if o == "error":
            return (r["error"] - baseline["error"]) / (baseline["error"] + 0.01)
        base = baseline[o] if baseline[o] else 1.0
        return r[o] / base

    def score(r):
        return float(sum(weights.get(o, 1.0) * term(r, o) for o in objectives))

    feasible = sorted(feasible, key=score)
    best = feasible[0]
    parts = [f"{o} {_fmt(o, best[o])} (original {_fmt(o, baseline[o])})" for o in objectives]
    cons = []
    if constraints.max_error is not None:
        cons.append(f"error <= {constraints.max_error:.4f}")
    if constraints.max_latency_ms is not None:
        cons.append(f"latency <= {constraints.max_latency_ms:.3f} ms")
    wtxt = ", ".join(f"{o}={weights.get(o, 1.0):g}" for o in objectives)
    reason = (f"lowest weighted score {score(best):.4f} (weights {wtxt}; each objective relative to the original) "
              f"among {len(feasible)} front member(s) meeting {' and '.join(cons) if cons else 'no constraints'}: "
              + ", ".join(parts))
    return Choice(best, reason, score(best), feasible)


def _fmt(o: str, v: float) -> str:
    if o == "error":
        return f"{v:.4f}"
    if o == "latency_ms":
        return f"{v:.3f} ms"
    if o == "energy_mj":
        return f"{v:.3f} mJ"
    return f"{v:.4g}"


def hypervolume_2d(points, ref) -> float:
    """Area dominated by 2-D points (minimisation) up to `ref`."""
    pts = sorted((float(p[0]), float(p[1])) for p in points if p[0] < ref[0] and p[1] < ref[1])
    area, best_y = 0.0, ref[1]
    for x, y in pts:
        if y < best_y:
            area += (ref[0] - x) * (best_y - y)
            best_y = y
    return area
