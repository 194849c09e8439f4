"""graphprune.search.warmstart: the near-original start of the search (--search-start), on a hand-made
space and sensitivity sweep, through nevergrad's suggest, and the auto rule."""
from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from graphprune.errors import GraphpruneError  # noqa: E402
from graphprune.search.optimizer import make_optimizer  # noqa: E402
from graphprune.search.options import OptimizeOptions, validate  # noqa: E402
from graphprune.search.space import Axis, SearchSpace  # noqa: E402
from graphprune.search.warmstart import (near_original_configs, random_start_hopeless,  # noqa: E402
                                         suggest_near_original)

BASE = {"error": 0.10, "latency_ms": 10.0, "macs": 1000}


def _space():
    return SearchSpace([Axis(0, 16, 16, [4, 8, 12, 16]), Axis(1, 32, 32, [8, 16, 24, 32]),
                        Axis(2, 16, 16, [4, 8, 12, 16]), Axis(3, 8, 8, [8])], step=4, min_keep=0.25)


def _sweep():
    """Group 0 costs 0.2 at 25 % removed, group 1 almost nothing (and saves the most), group 2 0.5."""
    def rec(g, kept, err, lat, macs):
        cfg = {"0": 16, "1": 32, "2": 16, "3": 8}
        cfg[str(g)] = kept
        return {"group": g, "config": cfg, "error": err, "latency_ms": lat, "macs": macs, "phase": "sensitivity"}
    return [rec(0, 12, 0.30, 9.5, 950), rec(0, 8, 0.60, 9.0, 900),
            rec(1, 24, 0.101, 9.0, 800), rec(1, 16, 0.15, 8.0, 600),
            rec(2, 12, 0.60, 9.8, 980)]


def test_light_perturbations_follow_the_sensitivity_and_stay_on_the_grid():
    space = _space()
    cfgs = near_original_configs(space, _sweep(), BASE, allowed=0.02, n=8, seed=0)
    assert len(cfgs) == len({space.key(c) for c in cfgs}) == 3
    assert all(space.contains(c) and c != space.full() for c in cfgs)
    assert all(c[3] == 8 for c in cfgs)                         # a group with one choice is never touched
    assert sum(c[g] < space.full()[g] for g in c) == 1 if (c := cfgs[0]) else False   # the first: one group
    # group 1 (cheap, the largest saving) is pruned in all, never past 24: alone at 16 it lost 0.05 > 0.02;
    # the costly groups 0 and 2 by one grid step at most
    assert [c[1] for c in cfgs] == [24, 24, 24]
    assert all(c[2] in (12, 16) and c[0] in (12, 16) for c in cfgs)
    assert cfgs == near_original_configs(space, _sweep(), BASE, allowed=0.02, n=8, seed=0)   # --resume replays it


def test_suggested_configurations_are_the_optimizers_first_asks_and_join_des_population():
    space = _space()
    cfgs = near_original_configs(space, _sweep(), BASE, allowed=0.02, n=6, seed=0)
    opt = make_optimizer("DE", space.dims, budget=40, workers=1, seed=0)
    for c in reversed(cfgs):
        opt.suggest(space.encode(c))
    asked = [opt.ask() for _ in range(len(cfgs) + 1)]
    assert [space.decode(a.value) for a in asked[:-1]] == cfgs
    for a in asked:
        opt.tell(a, [1.0, 0.0])
    assert len(opt.population) == len(cfgs) + 1


def _state(mode, holdout_errors, max_error=0.13):
    space = _space()
    measured = [dict(BASE, phase="baseline")] + [{"phase": "holdout", "error": e} for e in holdout_errors]
    logs = []
    st = SimpleNamespace(o=SimpleNamespace(search_start=mode, budget=40, seed=0, optimizer="DE"), space=space,
                         s_recs=_sweep(), base=BASE, measured=measured, cons=SimpleNamespace(max_error=max_error),
                         search=SimpleNamespace(opt=make_optimizer("DE", space.dims, 40, 1, 0), population=30),
                         joint=None, log=logs.append)
    return st, logs


@pytest.mark.parametrize("mode,holdout,suggested", [
    ("auto", [0.5, 0.4, 0.9], True),       # no random configuration met the bound (0.13): start near
    ("auto", [0.5, 0.12, 0.9], False),     # one did: DE's random start works, unchanged
    ("auto", [], False),                   # no hold-out measured: no evidence, unchanged
    ("near", [0.12], True),
    ("random", [0.5], False),
])
def test_the_auto_rule_and_the_modes(mode, holdout, suggested):
    st, logs = _state(mode, holdout)
    cfgs = suggest_near_original(st)
    assert bool(cfgs) is suggested and len(st.search.opt._suggestions) == len(cfgs)
    if suggested:
        assert 4 <= len(cfgs) <= 15 and "light perturbations of the original" in logs[0]
        assert st.space.decode(st.search.opt.ask().value) == cfgs[0]
    else:
        assert not logs


def test_random_start_hopeless_needs_an_error_bound_and_hold_outs():
    assert random_start_hopeless([{"phase": "holdout", "error": 0.5}], 0.2)
    assert not random_start_hopeless([{"phase": "holdout", "error": 0.5}], None)
    assert not random_start_hopeless([{"phase": "search", "error": 0.5}], 0.2)


def test_an_unknown_search_start_is_refused_in_one_line():
    with pytest.raises(GraphpruneError, match="--search-start must be one of auto, near, random"):
        validate(OptimizeOptions(model="m.onnx", data="d.npz", outdir=None, search_start="close"))


def test_optimize_with_search_start_near_measures_the_suggestions_first(tmp_path, monkeypatch):
    """End to end on the tiny model: the first search candidates are the suggested perturbations, in order
    (those the sensitivity sweep already measured are answered from it), each differing from the original in
    a few groups; the log says why."""
    from graphprune.search import stages, warmstart
    from graphprune.search.optimize import run_optimize
    from test_search_common import write_case
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path / "cache"))
    mp, dp = write_case(tmp_path, n=64)
    given, real = [], warmstart.suggest_near_original
    monkeypatch.setattr(stages.warmstart, "suggest_near_original", lambda st: given.extend(real(st)) or given)
    lines: list[str] = []
    o = OptimizeOptions(model=str(mp), data=str(dp), outdir=str(tmp_path / "out"), budget=8, repeats=3,
                        channel_step=4, holdout=2, progress=False, max_error_increase=0.5, threads=1, seed=3,
                        search_start="near")
    s = run_optimize(o, log=lines.append)
    search = [r for r in s["_measured"] if r.get("phase") == "search"]
    n = len(given)   # at most budget // 2; fewer when the sensitivity-bounded space has fewer light ones
    assert 2 <= n <= 4 and any(f"search start: {n} light perturbations" in ln for ln in lines)
    full = {int(k): v for k, v in next(r for r in s["_measured"] if r.get("phase") == "baseline")["config"].items()}
    cfg = lambda r: {int(k): v for k, v in r["config"].items()}   # noqa: E731
    before = [cfg(r) for r in s["_measured"] if r.get("phase") != "search"]
    new = [c for c in given if c not in before]   # one already swept is answered from the journal
    assert new and [cfg(r) for r in search[:len(new)]] == new
    assert all(0 < sum(c[g] != full[g] for g in full) <= 2 for c in given)
