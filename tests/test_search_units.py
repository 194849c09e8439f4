"""Unit tests of the search's pieces: space, Pareto front and choice, journal, executor, surrogate."""
from __future__ import annotations

import json
import os
import sys
from concurrent.futures import Future

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import graphprune as gp  # noqa: E402
from graphprune.errors import GraphpruneError  # noqa: E402
from graphprune.search.executor import SerialExecutor, make_executor  # noqa: E402
from graphprune.search.journal import Journal  # noqa: E402
from graphprune.search.pareto import Constraints, choose_best, dominates, front, front_indices, hypervolume_2d  # noqa: E402
from graphprune.search.space import build_space, parse_bounds  # noqa: E402
from graphprune.search.surrogate import Surrogate, prediction_error  # noqa: E402
from test_search_common import tiny_resnet  # noqa: E402


@pytest.fixture(scope="module")
def analysis():
    return gp.analyse(gp.load(tiny_resnet()))


def test_space_grid_follows_channel_step_and_bounds(analysis):
    sp = build_space(analysis, step=8, min_keep=0.25)
    assert [a.gid for a in sp.axes] == [0, 1, 2]            # the classifier's output group is frozen
    assert sp.axis(1).choices == [8, 16, 24, 32]
    assert sp.axis(0).choices == [8, 16]                    # 16 units: 4 would be below one step
    for a in sp.axes:
        assert all(c % 8 == 0 for c in a.choices) and a.choices[-1] == a.units
    sp2 = build_space(analysis, step=4, min_keep=0.5, bounds=parse_bounds("1:0.75:1"))
    assert sp2.axis(1).choices == [24, 28, 32] and sp2.axis(0).choices == [8, 12, 16]
    with pytest.raises(GraphpruneError):
        build_space(analysis, step=8, bounds=parse_bounds("3:0.5:1"))       # frozen group
    with pytest.raises(GraphpruneError):
        parse_bounds("1:0.9:0.2")
    with pytest.raises(GraphpruneError):
        build_space(analysis, step=64)                                      # nothing left to search


def test_space_decode_encode_roundtrip_and_restrict(analysis):
    sp = build_space(analysis, step=2, min_keep=0.25)
    rng = np.random.default_rng(0)
    for _ in range(50):
        cfg = sp.decode(rng.random(sp.dims))
        assert all(cfg[a.gid] in a.choices for a in sp.axes)
        assert sp.decode(sp.encode(cfg)) == cfg
        assert sp.from_key(sp.key(cfg)) == cfg
    r = sp.restrict({1: 20})
    assert min(r.axis(1).choices) == 20 and r.key(sp.full()) == sp.key(sp.full())
    cfg = sp.decode(np.zeros(sp.dims))
    plan = gp.choose(analysis, keep=cfg)
    assert plan.config() == {**cfg, **{g.id: g.units for g in analysis.groups if g.prunable and g.id not in cfg}}


def test_front_is_exactly_the_non_dominated_set():
    rng = np.random.default_rng(3)
    pts = rng.random((200, 2))
    idx = front_indices(pts)
    for i in idx:
        assert not any(dominates(pts[j], pts[i]) for j in range(len(pts)))
    for j in set(range(len(pts))) - set(idx):
        assert any(dominates(pts[i], pts[j]) for i in idx)
    recs = [{"latency_ms": float(a), "error": float(b), "key": str(k)} for k, (a, b) in enumerate(pts)]
    fr = front(recs, ["latency_ms", "error"])
    assert [r["latency_ms"] for r in fr] == sorted(r["latency_ms"] for r in fr)
    errs = [r["error"] for r in fr]
    assert errs == sorted(errs, reverse=True)               # 2-D front: error falls as latency rises
    assert hypervolume_2d(pts[idx], (1, 1)) == pytest.approx(hypervolume_2d(pts, (1, 1)))


def test_choice_meets_constraints_and_follows_preferences():
    base = {"latency_ms": 10.0, "error": 0.10}
    fr = [{"key": "a", "latency_ms": 4.0, "error": 0.16}, {"key": "b", "latency_ms": 6.0, "error": 0.105},
          {"key": "c", "latency_ms": 8.0, "error": 0.10}]
    obj = ["latency_ms", "error"]
    c = choose_best(fr, base, obj, Constraints(max_error=0.11), {"latency_ms": 1, "error": 1})
    assert c.record["key"] == "b" and "error <= 0.1100" in c.reason
    c = choose_best(fr, base, obj, Constraints(), {"latency_ms": 1, "error": 1})
    assert c.record["key"] == "b"
    c = choose_best(fr, base, obj, Constraints(), {"latency_ms": 10, "error": 1})
    assert c.record["key"] == "a"                            # latency weighted up: the fastest
    c = choose_best(fr, base, obj, Constraints(max_error=0.11, max_latency_ms=5.0), {})
    assert c.record is None and "no candidate meets" in c.reason
    # nothing within the error bound: the closest is the smallest error, not the fastest member
    c = choose_best(fr, base, obj, Constraints(max_error=0.09), {})
    assert c.record is None and c.reason == "no candidate meets the constraints (closest: error 0.1000 > 0.0900)"


def _fake_recovery(monkeypatch, after, loss=0.5):
    """recovery.recover replaced by a table: key -> accuracy after recovery; records the order
    tried. obj.build returns a marker, so a delivered pruned (not recovered) model is visible."""
    import graphprune.search.recovery as rcv_mod
    tried = []

    def fake(st, record):
        tried.append(record["key"])
        return f"model-{record['key']}", {"accuracy_before": 1 - record["error"], "accuracy_after": after[record["key"]],
                                          "training": [{"loss_first": 1.0, "loss_last": loss}]}
    monkeypatch.setattr(rcv_mod, "recover", fake)
    monkeypatch.setattr(rcv_mod, "weights_finite", lambda m: True)
    monkeypatch.setattr(rcv_mod.obj, "build", lambda cfg: f"built-{cfg[0]}")
    return rcv_mod, tried


def _state(o, choice, fr, base, obj_, cons, w):
    from types import SimpleNamespace
    return SimpleNamespace(o=o, choice=choice, fr=fr, base=base, objectives=obj_, cons=cons, weights=w,
                           log=lambda m: None)


def test_recovery_aware_choice_delivers_the_best_member_meeting_the_bound_after_recovery(monkeypatch):
    """--recovery-slack: members within the loose search bound are recovered best score first; the
    first whose delivered model meets the user's bound is delivered, at most K are tried, and
    without any such member the strict (pre-recovery) choice is. A recovery that lands below its
    own starting accuracy or outside the bound is never delivered: the pruned model is, when it
    meets the bound itself."""
    base = {"latency_ms": 10.0, "error": 0.10}
    fr = [{"key": k, "latency_ms": lat, "error": e, "config": {"0": i}}
          for i, (k, lat, e) in enumerate([("a", 4.0, 0.16), ("b", 6.0, 0.13), ("c", 8.0, 0.105), ("d", 9.0, 0.10)])]
    obj_ = ["latency_ms", "error"]
    w = {"latency_ms": 1.0, "error": 0.1}
    loose = Constraints(max_error=0.10 + 0.01 + 0.05)        # user 1 pp + 5 pp slack
    choice = choose_best(fr, base, obj_, loose, w)
    assert [r["key"] for r in choice.feasible] == ["a", "b", "c", "d"]   # best score first
    from graphprune.search.optimize import OptimizeOptions
    o = OptimizeOptions(model="m", data="d", outdir="o", max_error_increase=0.01, epochs=1.0,
                        recovery_slack=0.05, recovery_tries=3)
    run = lambda: rcv_mod.choose_delivery(_state(o, choice, fr, base, obj_, loose, w))  # noqa: E731
    rcv_mod, tried = _fake_recovery(monkeypatch, {"a": 0.85, "b": 0.895, "c": 0.90, "d": 0.90})
    d, why = run()
    assert d.record["key"] == "b" and d.model == "model-b" and tried == ["a", "b"]   # a misses 0.11, b meets it
    assert d.recovery is not None and d.rejected is None and d.error == pytest.approx(0.105)
    assert "a 84.00 % -> 85.00 % (rejected: error after recovery 0.1500 exceeds the bound 0.1100); " \
           "b 87.00 % -> 89.50 %" in why and "delivered the first" in why
    # c's recovery ends below where it started (89.5 % -> 88 %, outside the bound): never delivered;
    # c as pruned (error 0.105) meets the bound, so that is what is delivered, and said so
    rcv_mod, tried = _fake_recovery(monkeypatch, {"a": 0.80, "b": 0.80, "c": 0.88, "d": 0.90})
    d, why = run()
    assert tried == ["a", "b", "c"] and d.record["key"] == "c" and d.model == "built-2" and d.recovery is None
    assert "below" in d.rejected["reason"] and "REJECTED" in why and d.error == pytest.approx(0.105)
    o.recovery_tries = 1
    rcv_mod, tried = _fake_recovery(monkeypatch, {"a": 0.80, "b": 0.80, "c": 0.88, "d": 0.90})
    d, why = run()
    assert tried == ["a", "c"] and d.record["key"] == "c" and d.model == "built-2" and "fell back" in why


def test_a_ruined_recovery_is_never_delivered(monkeypatch):
    """Without --recovery-slack: a recovery that diverged (NaN loss), or that ends below the
    pruned model's accuracy or outside the bound, is replaced by the pruned model, which met it."""
    base = {"latency_ms": 10.0, "error": 0.07}
    fr = [{"key": "a", "latency_ms": 5.0, "error": 0.10, "config": {"0": 0}}]
    obj_ = ["latency_ms", "error"]
    cons = Constraints(max_error=0.07 + 0.05)
    choice = choose_best(fr, base, obj_, cons, {})
    from graphprune.search.optimize import OptimizeOptions
    o = OptimizeOptions(model="m", data="d", outdir="o", max_error_increase=0.05, epochs=0.5, lr=10.0)
    for after, loss, why in [(0.10, 0.5, "below"), (0.92, float("nan"), "diverged")]:
        rcv_mod, tried = _fake_recovery(monkeypatch, {"a": after}, loss=loss)
        d, reason = rcv_mod.choose_delivery(_state(o, choice, fr, base, obj_, cons, {}))
        assert d.model == "built-0" and d.recovery is None and why in d.rejected["reason"], (after, loss)
        assert d.error == pytest.approx(0.10) and "REJECTED" in reason
    assert rcv_mod.judge(None, {"accuracy_before": 0.85, "accuracy_after": 0.86, "training": []},
                         0.12).startswith("error after recovery 0.1400 exceeds")
    rcv_mod, tried = _fake_recovery(monkeypatch, {"a": 0.93})
    d, reason = rcv_mod.choose_delivery(_state(o, choice, fr, base, obj_, cons, {}))
    assert d.model == "model-a" and d.recovery["accuracy_after"] == 0.93 and d.rejected is None


def test_journal_fsyncs_survives_a_cut_line_and_refuses_other_settings(tmp_path):
    p = tmp_path / "j.jsonl"
    j = Journal(p, {"a": 1}, resume=False)
    j.append({"type": "measured", "key": "8-8", "error": 0.1})
    j.append({"type": "measured", "key": "16-8", "error": 0.05})
    j.close()
    with open(p, "a") as f:                                   # a kill in the middle of a write
        f.write('{"type":"measured","key":"8-1')
    with pytest.raises(GraphpruneError, match="--resume"):
        Journal(p, {"a": 1}, resume=False)
    with pytest.raises(GraphpruneError, match="other settings"):
        Journal(p, {"a": 2}, resume=True)
    j = Journal(p, {"a": 1}, resume=True)
    assert j.dropped_partial and j.get("measured", "8-8")["error"] == 0.1 and len(j.of_type("measured")) == 2
    j.append({"type": "measured", "key": "24-8", "error": 0.0})
    j.close()
    j = Journal(p, {"a": 1}, resume=True)
    assert [r["key"] for r in j.of_type("measured")] == ["8-8", "16-8", "24-8"]
    j.close()
    lines = p.read_text().splitlines()
    assert json.loads(lines[0])["type"] == "header"


def _square(v):
    return v * v


def test_executors_are_futures_like():
    ex = SerialExecutor()
    f = ex.submit(_square, 7)
    assert isinstance(f, Future) and f.result() == 49
    bad = ex.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        bad.result()
    with make_executor(2) as pool:
        assert [f.result() for f in [pool.submit(_square, i) for i in range(5)]] == [0, 1, 4, 9, 16]
    with pytest.raises(GraphpruneError):
        make_executor(0)


def test_surrogate_learns_a_cost_model_and_reports_its_error():
    rng = np.random.default_rng(0)
    F = rng.uniform(0.25, 1, (60, 3))
    lat = 1.0 + 2.0 * F[:, 0] * F[:, 1] + 0.5 * F[:, 2]       # conv cost ~ product of widths
    err = 0.1 + 0.3 * (1 - F[:, 0]) ** 2 + 0.05 * (1 - F[:, 2])
    s = Surrogate().fit(F[:40], lat[:40], err[:40])
    pe = prediction_error(s, F[40:], lat[40:], err[40:])
    assert pe["n"] == 20 and pe["latency_mape_pct"] < 3.0 and pe["error_mae"] < 0.02
    s2 = Surrogate().fit(F[:40], None, err[:40])               # MACs-driven search: no latency model
    lat_p, err_p = s2.predict(F[40:])
    assert lat_p is None and err_p.shape == (20,)


def test_sensitivity_sweep_and_bounds(analysis):
    from graphprune.search.sensitivity import lower_bounds, sweep_configs
    sp = build_space(analysis, step=4, min_keep=0.25)
    sweep = sweep_configs(sp, [0.25, 0.5, 0.75])
    for gid, ratio, cfg in sweep:                           # one group changed at a time, on the grid
        changed = [g for g in cfg if cfg[g] != sp.axis(g).units]
        assert changed == [gid] and cfg[gid] in sp.axis(gid).choices
    # group 1 costs 5 pp alone at 16 kept, 0.2 pp at 24: with a 1 pp budget it keeps >= 20
    pts = [{"group": 1, "config": {"1": 24}, "error": 0.102}, {"group": 1, "config": {"1": 16}, "error": 0.15},
           {"group": 0, "config": {"0": 8}, "error": 0.105}]
    assert lower_bounds(sp, pts, 0.10, 0.01) == {1: 20}
    assert lower_bounds(sp, pts, 0.10, None) == {}


def test_journal_repairs_its_tail_before_appending_and_refuses_non_records(tmp_path):
    p = tmp_path / "j.jsonl"
    j = Journal(p, {"a": 1}, resume=False)
    j.append({"type": "measured", "key": "8-8", "error": 0.1})
    j.close()
    p.write_bytes(p.read_bytes().rstrip(b"\n"))                 # complete record, newline lost
    j = Journal(p, {"a": 1}, resume=True)
    assert any("newline" in n for n in j.notes) and j.get("measured", "8-8")
    j.append({"type": "measured", "key": "16-8", "error": 0.05})
    j.close()
    j = Journal(p, {"a": 1}, resume=True)                       # used to be refused: the two records glued
    assert [r["key"] for r in j.of_type("measured")] == ["8-8", "16-8"] and not j.notes
    j.close()
    with open(p, "a") as f:
        f.write('{"type":"measured","key":"24')               # torn: dropped, with a note
    j = Journal(p, {"a": 1}, resume=True)
    assert j.dropped_partial and any("incomplete last line" in n for n in j.notes)
    j.close()
    assert p.read_text().endswith('"error":0.05}\n')
    with open(p, "a") as f:
        f.write('"a string"\n')
    with pytest.raises(GraphpruneError, match="line 4 is JSON but not a record"):
        Journal(p, {"a": 1}, resume=True)


def test_journal_and_reports_write_valid_json_with_non_finite_numbers_as_null(tmp_path):
    from graphprune.search.report import write_json
    j = Journal(tmp_path / "j.jsonl", {"a": 1}, resume=False)
    j.append({"type": "latency", "key": "8", "latency_ms": float("inf"), "x": np.float32("nan")})
    j.close()
    strict = lambda t: json.loads(t, parse_constant=lambda n: pytest.fail(f"bare {n}"))  # noqa: E731
    assert strict((tmp_path / "j.jsonl").read_text().splitlines()[1])["latency_ms"] is None
    where = write_json(tmp_path / "p.json", {"recovery": {"training": [{"loss_last": float("nan")}]}, "ok": 1.5})
    d = strict((tmp_path / "p.json").read_text())
    assert d["recovery"]["training"][0]["loss_last"] is None and d["ok"] == 1.5
    assert where == ["$.recovery.training[0].loss_last (nan)"] and "loss_last" in d["json_notes"][0]
    assert oct((tmp_path / "p.json").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_paired_statistics_state_the_spread_and_only_claim_what_the_interval_shows():
    from graphprune.targets.paired import paired_stats
    rng = np.random.default_rng(0)
    a = 2.0 + rng.normal(0, 0.01, 40)
    f = paired_stats(a, a / 1.5)                                  # every pair: exactly 1.5x
    assert f["speedup"] == pytest.approx(1.5) and f["verdict"] == "faster" and f["pairs"] == 40
    assert f["speedup_ci95"][0] == pytest.approx(1.5) and f["speedup_iqr"] == pytest.approx([1.5, 1.5])
    b = a * np.where(np.arange(40) % 2 == 0, 0.9, 1.1)            # half faster, half slower
    f = paired_stats(a, b)
    assert f["verdict"] == "no clear difference" and f["speedup_ci95"][0] < 1 < f["speedup_ci95"][1]
    f = paired_stats(a, a * 1.25)
    assert f["verdict"] == "slower" and f["speedup"] == pytest.approx(0.8)


def test_tvm_final_comparison_measures_both_fresh_and_says_so(monkeypatch):
    """Without an alternating runner (TVM or onnxruntime over RPC) both models are measured now,
    bypassing the cache."""
    import graphprune.targets as targets
    from graphprune.search.latency import compare_final, final_text
    from graphprune.search.objectives import LatencySpec
    from graphprune.targets.result import LatencyResult
    calls = []

    def fake(model, **kw):
        calls.append((model, kw["cache"]))
        return LatencyResult(median_ms=2.0 if model == "orig" else 2.2, spread_ms=0.1, repeats=5, backend="tvm",
                             target="x86", tuned=False, tuning="untuned", device="host")
    monkeypatch.setattr(targets, "measure_latency", fake)
    f = compare_final("orig", "pruned", LatencySpec(backend="tvm", repeats=5, threads=2, rpc_tracker="127.0.0.1:9190"))
    assert calls == [("orig", False), ("pruned", False)] and f["method"] == "back-to-back"
    assert f["verdict"] == "slower" and "NOT faster" in final_text(f) and "back to back" in final_text(f)


def test_surrogate_latency_never_extrapolates_beyond_4x_of_what_it_was_fitted_on():
    # the first fit of a search: the original (timed quietly, cached) and one-group sweeps timed under
    # load, all near the original's MACs; a configuration with 40 % of the MACs used to be predicted
    # at exp(30) ms, which made the search screen every candidate
    rng = np.random.default_rng(0)
    g = 12
    F = np.array([np.ones(g)] + [np.where(np.arange(g) == i, 0.5, 1.0) for i in range(g)])
    lat = np.array([10.0] + list(rng.uniform(24, 40, g)))
    macs = np.array([1.0] + list(rng.uniform(0.975, 0.98, g)))
    s = Surrogate().fit(F, lat, np.zeros(len(F)), macs_rel=macs)
    pred, _ = s.predict(np.full((3, g), 0.4), macs_rel=np.array([0.3, 0.4, 0.5]))
    assert np.all(np.isfinite(pred))
    assert np.all(pred <= 40.0 * 4 * (1 + 1e-9)) and np.all(pred >= 10.0 / 4 * (1 - 1e-9))
    # within the fitted range predictions are the Ridge model's, untouched
    inside, _ = s.predict(F[:1], macs_rel=macs[:1])
    from graphprune.search.surrogate import features
    raw = s.lat_model.predict(s._lat_features(features(F[:1]), macs[:1]))[0]
    assert inside[0] == pytest.approx(float(np.exp(raw)), rel=1e-12)


def test_final_measurement_of_the_original_itself_is_no_verdict(monkeypatch):
    """When no configuration within the bounds prunes anything, the delivered model is the
    original's computation: a timing of 0.99x or 1.01x is noise, not 'slower' or 'faster'."""
    from types import SimpleNamespace
    from graphprune.search import pipeline
    from graphprune.search.recovery import Delivery

    timed = {"verdict": "slower", "speedup": 0.98, "speedup_iqr": (0.97, 0.99), "speedup_ci95": (0.975, 0.985),
             "original_ms": 1.0, "delivered_ms": 1.02, "method": "paired", "pairs": 30, "threads_text": "1 thread"}
    monkeypatch.setattr(pipeline, "compare_final", lambda *a, **k: dict(timed))
    space = SimpleNamespace(full=lambda: {0: 8, 1: 16})
    lines = []
    for config, recovery, want in (({"0": 8, "1": 16}, None, "same model"), ({"0": 8, "1": 8}, None, "slower"),
                                   ({"0": 8, "1": 16}, {"accuracy_after": 0.9}, "slower")):
        st = SimpleNamespace(delivery=Delivery(record={"config": config}, model=None, error=0.1, recovery=recovery),
                             model=None, spec=None, o=SimpleNamespace(seed=0), space=space, joint=None,
                             log=lines.append)
        pipeline.final_measurement(st)
        assert st.final["verdict"] == want
    assert "is the original" in lines[0] and "slower" not in lines[0] and "NOT faster" in lines[1]
