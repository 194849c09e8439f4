"""Measured path latencies of a dynamic model before it is trained, and the filter budget a latency target allows.

A dynamic model's cost on each path depends only on its shapes: where the branch attaches
(the trunk and the head), and how many filters each gated conv keeps. The weights, the
head's values and the importance tables change no shape, so a *probe* (the dynamic ONNX
model assembled with the original weights, a zero head and index-order tables) runs each
path exactly as long as the trained model will. The branch search and the latency budget
time probes with `graphprune.targets.measure_latency` (bench's session and median), so
neither needs importance scores or training to know what a choice costs.

Budget from a latency target: the gated (longest) path's latency grows with the kept
fraction; bisection over the fraction, each step a measured probe, finds the largest
fraction whose longest path meets the target. Refused when even one filter per gated conv
misses it. The measurements are medians on a possibly shared host: the delivered model's
longest path is measured again and reported against the target, met or not.
"""
from __future__ import annotations

import numpy as np
import onnx

from graphprune.errors import GraphpruneError

BISECTION_STEPS = 7


def probe_model(m: onnx.ModelProto, split, k: int, pool: tuple | None = None, o=None) -> onnx.ModelProto:
    """The dynamic model of `split` with the original weights, a zero head and index-order tables, in
    the dispatch form o (a DynamicOptions) asks for (default: the gather form)."""
    from graphprune.dynamic.export import assemble
    from graphprune.dynamic.graph import _shapes
    from graphprune.dynamic.selection import integer_table
    c = int(_shapes(m)[split.branch][1])
    feats = c if pool is None else c * _pool_cells(m, split.branch, pool)
    tables = [integer_table(np.zeros((split.classes, g.channels)), k) for g in split.gates]
    rest = _rest(m, split)
    out = assemble(m, split, rest, np.zeros((split.classes, feats), np.float32),
                   np.zeros(split.classes, np.float32), tables, k, 0.5, None, pool=pool)
    if o is None:
        return out
    from graphprune.dynamic.build import dispatch_form
    return dispatch_form(out, o)


def _pool_cells(m, branch, pool) -> int:
    from graphprune.dynamic.graph import _shapes
    h, w = _shapes(m)[branch][2:4]
    (kh, kw), (sh, sw) = pool
    return ((h - kh) // sh + 1) * ((w - kw) // sw + 1)


def _rest(m, split):
    from graphprune.dynamic.build import extract
    return extract(m, split.rest_inputs, [split.output])


def path_ms(model: onnx.ModelProto, threshold: float, repeats: int, threads: int | None) -> float:
    """bench's median latency (onnxruntime, batch 1, no cache) with the exit threshold set."""
    from graphprune.dynamic.export import with_threshold
    from graphprune.targets import measure_latency
    return float(measure_latency(with_threshold(model, threshold), repeats=repeats, threads=threads,
                                 cache=False).median_ms)


def probe_paths(m, split, k: int, pool, repeats: int, threads: int | None, o=None) -> dict:
    """{'exit_ms', 'gated_ms'}: the early-exit path and the gated (longest) path of `split`, measured.
    The exit path on the gather form: it never enters the gated branch, and a session of the
    subset-dispatch form takes seconds to create."""
    pm = probe_model(m, split, k, pool)
    return {"exit_ms": path_ms(pm, 0.0, repeats, threads),
            "gated_ms": path_ms(pm if o is None else probe_model(m, split, k, pool, o), 2.0, repeats, threads)}


def original_ms(m: onnx.ModelProto, repeats: int, threads: int | None) -> float:
    from graphprune.targets import measure_latency
    return float(measure_latency(m, repeats=repeats, threads=threads, cache=False).median_ms)


def budget_for_latency(m, branch: str, k: int, pool, target_ms: float, repeats: int = 30,
                       threads: int | None = None, log=None, o=None) -> dict:
    """The largest kept fraction whose measured longest path is <= target_ms (bisection).

    Returns {'budget', 'target_ms', 'probe_ms' (the chosen fraction's probe), 'steps': [(fraction,
    kept per gate, ms)]}. Raises GraphpruneError when one filter per gated conv is already too slow."""
    from graphprune.dynamic.graph import split_model
    cache: dict[tuple, float] = {}
    steps = []

    def measure(f: float) -> float:
        s = split_model(m, branch, f)
        keeps = tuple(g.keep for g in s.gates)
        if keeps not in cache:
            cache[keeps] = probe_paths_gated(m, s, k, pool, repeats, threads, o)
            steps.append((f, list(keeps), cache[keeps]))
            if log:
                log(f"latency budget: fraction {f:.4f} (filters kept per gated conv: {', '.join(map(str, keeps))}) -> "
                    f"{cache[keeps]:.3f} ms (target {_ms(target_ms)})")
        return cache[keeps]

    widest = max(g.channels for g in split_model(m, branch, 1.0).gates)
    lo = 0.5 / widest            # every gate keeps 1 filter (keep = max(1, round(f * C)))
    if measure(lo) > target_ms:
        raise GraphpruneError(f"latency target {_ms(target_ms)} ms is out of reach: the longest path takes "
                              f"{measure(lo):.3f} ms (measured) with 1 filter per gated conv after "
                              f"{branch!r} (the gated path's TopK/Gather overhead included); raise the target "
                              "or choose another --branch-at")
    if measure(1.0) <= target_ms:
        return {"budget": 1.0, "target_ms": target_ms, "probe_ms": measure(1.0), "steps": steps}
    hi = 1.0
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        if measure(mid) <= target_ms:
            lo = mid
        else:
            hi = mid
    return {"budget": lo, "target_ms": target_ms, "probe_ms": measure(lo), "steps": steps}


def _ms(v: float) -> str:
    return f"{v:.3f}" if v >= 0.001 else f"{v:.3g}"


def probe_paths_gated(m, split, k, pool, repeats, threads, o=None) -> float:
    return path_ms(probe_model(m, split, k, pool, o), 2.0, repeats, threads)
