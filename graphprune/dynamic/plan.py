"""The choices made before training: the branch point (given, middle, or searched) and the filter
budget (given, or from a latency target), each from measurements (graphprune.dynamic.probe).

Kept apart from `build` so that the recipe reads as steps, and so that every refusal here
(an unreachable latency target, no candidate) comes before any importance scoring or training.
"""
from __future__ import annotations

import sys

import onnx


def _log_fn(o, log):
    if log is not None:
        return log
    return (lambda msg: print(msg, file=sys.stderr, flush=True)) if o.progress else None


def choose_branch(m: onnx.ModelProto, ds, o, log=None) -> tuple[str, dict | None]:
    """(branch tensor, the search's table or None): --branch-at NAME, 'middle', or searched ('auto'/None)."""
    from graphprune.dynamic.graph import default_branch, resolve_branch
    if o.branch_at == "middle":
        return default_branch(m), None
    if o.branch_at not in (None, "auto"):
        return resolve_branch(m, o.branch_at), None
    from graphprune.dynamic.branch_search import search_branch
    s = search_branch(m, ds, o, log=_log_fn(o, log))
    return s["branch"], s


def latency_target(m: onnx.ModelProto, o) -> tuple[float, dict]:
    """(target ms, how it was set): --latency-budget-ms, or the fraction x the original's measured latency."""
    from graphprune.dynamic.probe import original_ms
    if o.latency_budget_ms is not None:
        return float(o.latency_budget_ms), {"given_ms": float(o.latency_budget_ms)}
    orig = original_ms(m, o.latency_repeats, o.threads)
    return o.latency_budget_fraction * orig, {"fraction": o.latency_budget_fraction, "original_ms": orig}


def plan(m: onnx.ModelProto, ds, o, budgets, log=None) -> tuple[str, list, dict | None, dict | None]:
    """(branch, budgets, branch search or None, latency-budget record or None)."""
    from graphprune.dynamic.graph import head_pool
    branch, search = choose_branch(m, ds, o, log)
    if o.latency_budget_ms is None and o.latency_budget_fraction is None:
        return branch, list(budgets), search, None
    from graphprune.dynamic.probe import budget_for_latency
    target, how = latency_target(m, o)
    pool = head_pool(m, branch, o.head_grid)
    info = budget_for_latency(m, branch, o.k, pool, target, o.latency_repeats, o.threads, log=_log_fn(o, log), o=o)
    return branch, [info["budget"]], search, {**how, **info}


def check_latency(model: onnx.ModelProto, latency: dict | None, o) -> dict | None:
    """The delivered model's longest path measured against the target (met or not, never assumed),
    recorded in the result and in the model's metadata."""
    if latency is None:
        return None
    from graphprune import metadata as md
    from graphprune.dynamic.export import METADATA_KEY
    from graphprune.dynamic.probe import path_ms
    measured = path_ms(model, 2.0, o.latency_repeats, o.threads)
    out = {**latency, "measured_ms": measured, "met": bool(measured <= latency["target_ms"])}
    meta = md.get_json(model, METADATA_KEY) or {}
    meta["latency"] = out
    md.set_json(model, METADATA_KEY, meta)
    return out


def latency_line(lat: dict) -> str:
    """One line: target, budget, measured longest path, met or NOT met."""
    how = (f"{lat['fraction']:g} x the original's {lat['original_ms']:.3f} ms" if "fraction" in lat
           else "given")
    verdict = "met" if lat["met"] else "NOT met (the host's timing differs from the probes'; lower the target)"
    return (f"latency target {lat['target_ms']:.3f} ms ({how}): budget {lat['budget']:.4f}; longest path measured "
            f"{lat['measured_ms']:.3f} ms -> {verdict}")

