"""Where the search starts: near the original model when a random start cannot succeed.

nevergrad's DE draws its first population uniformly over the space: each group keeps a
random 25-100 % (with --min-keep 0.25). On a robust model (the Fashion-MNIST example)
some of those meet the error bound and DE evolves from them. On a sensitive model (a
text detector whose every group costs > 0.09 of its metric at half width, a BN-free
segmenter) none does: every configuration DE measured on PP-OCRv4 det and u2netp lost more
than 0.3 before recovery, so the front held nothing between the original and a wreck,
and nothing could be delivered. Started near the original, the search on PP-OCRv4 det
measured 20-29 configurations within 0.01 of its text-box F1 at down to 0.83 of the MACs
(docs/bench_unlabelled.md).

The hold-out configurations (stages.holdout_and_surrogate) are drawn exactly as DE's
first population is, and measured before the search. So `--search-start auto` starts
near the original when none of them met the search's error bound; `near` always does,
`random` never (the behaviour before). Starting near the original means: before DE's own
random draws, the optimizer is given (nevergrad's `optimizer.suggest`, which DE adds to
its population like any candidate) half a population of light perturbations of the
original, built from the per-group sensitivity sweep that is measured anyway:
  * each group's cost is its error increase per removed fraction at its lightest swept
    ratio, its gain the mean of its relative latency and MAC savings there; groups are
    picked with probability proportional to the square root of gain / cost (cheap, useful
    groups first, without the cheapest taking every pick);
  * the i-th suggestion prunes k_i groups, k growing from 1 to about a third of the groups
    (at least 2) over the suggestions, each by a random 25-100 % of its share of the allowed
    error increase (E / k_i / cost), never beyond the heaviest swept ratio that stayed within
    E alone (no extrapolation past what was measured), snapped to the channel grid and at
    least one grid step.
DE's mutations of such parents stay near the original, where the feasible configurations
of a sensitive model are; the random half keeps the broad exploration. Deterministic for a
seed, so --resume replays the same start.
"""
from __future__ import annotations

import math

import numpy as np

from graphprune.errors import GraphpruneError

MODES = ("auto", "near", "random")
MIN_COST = 1e-4   # error increase per removed fraction below which a group counts as free


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise GraphpruneError(f"--search-start must be one of {', '.join(MODES)}, got {mode!r}")


def random_start_hopeless(measured: list[dict], max_error: float | None) -> bool:
    """True when hold-out (random) configurations were measured and none met the error bound."""
    hold = [r for r in measured if r.get("phase") == "holdout" and r.get("error") is not None]
    return max_error is not None and bool(hold) and all(r["error"] > max_error for r in hold)


def _group_scores(space, s_recs: list[dict], base: dict, allowed: float) -> dict[int, tuple[float, float, float]]:
    """gid -> (cost: error increase per removed fraction, gain: relative latency/MAC saving per
    removed fraction, both at the group's lightest swept ratio; safe: the largest swept removed
    fraction whose error increase stayed within `allowed`, 0 when none did)."""
    out = {}
    for a in space.axes:
        pts = [r for r in s_recs if r.get("group") == a.gid and r.get("error") is not None]
        if not pts:
            continue
        p = max(pts, key=lambda r: r["config"][str(a.gid)])          # lightest prune swept
        removed = 1.0 - p["config"][str(a.gid)] / a.units
        if removed <= 0:
            continue
        cost = max(p["error"] - base["error"], 0.0) / removed
        gains = [1.0 - p[k] / base[k] for k in ("latency_ms", "macs") if p.get(k) is not None and base.get(k)]
        gain = max(float(np.mean(gains)) if gains else 0.0, 0.0) / removed
        safe = max([1.0 - r["config"][str(a.gid)] / a.units for r in pts if r["error"] - base["error"] <= allowed],
                   default=0.0)
        out[a.gid] = (cost, gain, safe)
    return out


def near_original_configs(space, s_recs: list[dict], base: dict, allowed: float, n: int,
                          seed: int) -> list[dict[int, int]]:
    """Up to `n` distinct light perturbations of the original (see the module docstring)."""
    axes = [a for a in space.axes if len(a.choices) > 1 and a.choices[-1] == a.units]
    if not axes or n < 1:
        return []
    scores = _group_scores(space, s_recs, base, allowed)
    known = [v[0] for v in scores.values()]
    default = (float(np.median(known)) if known else allowed, 0.0, 0.0)
    cost = np.asarray([max(scores.get(a.gid, default)[0], MIN_COST) for a in axes])
    gain = np.asarray([scores.get(a.gid, default)[1] for a in axes])
    safe = np.asarray([scores.get(a.gid, default)[2] for a in axes])
    weight = np.sqrt((gain + 1e-3) / cost)   # the square root: the cheapest group must not take every pick
    weight = weight / weight.sum()
    rng = np.random.default_rng(seed + 11)
    k_max = min(len(axes), max(2, math.ceil(len(axes) / 3)))
    full = space.full()
    out, seen = [], set()
    for i in range(4 * n):
        if len(out) >= n:
            break
        k = min(len(axes), 1 + round((k_max - 1) * (i % n) / max(1, n - 1)))
        picks = rng.choice(len(axes), size=min(k, int((weight > 0).sum())), replace=False, p=weight)
        cfg = dict(full)
        for j in picks:
            a = axes[j]
            removed = min(safe[j], allowed / k / cost[j]) * rng.uniform(0.25, 1.0)
            kept = space.snap(a.gid, a.units * (1.0 - removed))
            if kept >= a.units:   # at least one grid step
                kept = a.choices[-2]
            cfg[a.gid] = kept
        key = space.key(cfg)
        if key not in seen:
            seen.add(key)
            out.append(cfg)
    return out


def suggest_near_original(st) -> list[dict[int, int]]:
    """Give the optimizer the near-original start when --search-start asks for it (auto: when no
    hold-out configuration met the error bound). Returns the suggested configurations."""
    o, search = st.o, st.search
    mode = getattr(o, "search_start", "auto")
    if mode == "random" or getattr(st, "joint", None) is not None:
        return []
    max_error = st.cons.max_error
    if mode == "auto" and not random_start_hopeless(st.measured, max_error):
        return []
    allowed = (max_error - st.base["error"]) if max_error is not None else 0.01
    n = max(1, min((search.population or 30) // 2, o.budget // 2))
    cfgs = near_original_configs(st.space, st.s_recs, st.base, max(allowed, 1e-6), n, o.seed)
    for cfg in reversed(cfgs):   # nevergrad asks suggestions last in, first out: the lightest first
        search.opt.suggest(st.space.encode(cfg))
    why = "--search-start near" if mode == "near" else "no random hold-out configuration met the error bound"
    st.log(f"search start: {len(cfgs)} light perturbations of the original before {o.optimizer}'s random draws "
           f"({why})")
    return cfgs
