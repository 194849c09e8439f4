"""`graphprune optimize --tune-time`: parsed and checked before anything exists, carried by the
latency spec into TVM's tuner (the original is tuned once within the budget, candidates replay it).

The fast tests stop the run where the tuner would start (a spy on tune_module) or call the pieces
directly; the slow one tunes a tiny net for real and checks that it was tuned once.
"""
from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import graphprune.cli as cli  # noqa: E402
from graphprune.errors import GraphpruneError  # noqa: E402
from graphprune.search.options import OptimizeOptions  # noqa: E402
from test_search_common import write_case  # noqa: E402

QUICK = ["--repeats", "3", "--channel-step", "8", "--holdout", "0", "--sensitivity-ratios", "0.5"]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cli, "COMMANDS", ["graphprune.cli.optimize_commands"])


def _optimize(tmp_path, extra, capsys):
    mp, dp = write_case(tmp_path)
    out = tmp_path / "out"
    rc = cli.main(["optimize", str(mp), "--data", str(dp), "-o", str(out), "--budget", "2"] + QUICK + extra)
    return rc, capsys.readouterr().err, out


@pytest.mark.parametrize("extra,msg", [
    (["--backend", "tvm", "--tune-time", "abc"], "--tune-time must be a positive duration such as 90s, 20m or 1h "
                                                 "(got 'abc')"),
    (["--backend", "tvm", "--tune-time", "0"], "--tune-time must be a positive duration"),
    (["--backend", "tvm", "--tune-time=-5m"], "--tune-time must be a positive duration"),
    (["--tune-time", "5m"], "--tune-time budgets the tuning of TVM schedules: it needs --backend tvm"),
])
def test_bad_tune_time_is_one_line_before_anything_exists(tmp_path, capsys, extra, msg):
    rc, err, out = _optimize(tmp_path, extra + ["--no-progress"], capsys)
    assert rc == 2 and err.startswith(f"graphprune: error: {msg}") and err.count("\n") == 1, err
    assert not out.exists()


@pytest.mark.parametrize("progress", [True, False])
def test_the_budget_and_the_bar_reach_the_tuner(tmp_path, capsys, monkeypatch, progress):
    """--tune-time 5m --tune-trials 64 arrive at tune_module as 64 trials, 300 s and the progress
    flag, for the first model measured: the original (the base every candidate then replays)."""
    import onnx
    from graphprune.targets import tune
    seen = []

    def spy(mod, target, trials, **kw):
        seen.append({"target": target.name, "trials": trials, "tune_time": kw.get("tune_time"),
                     "progress": kw.get("progress")})
        raise GraphpruneError("stopped by the test where tuning would start")
    monkeypatch.setattr(tune, "tune_module", spy)
    extra = ["--backend", "tvm", "--tune-trials", "64", "--tune-time", "5m"] + ([] if progress else ["--no-progress"])
    rc, err, out = _optimize(tmp_path, extra, capsys)
    assert rc == 2 and err.endswith("graphprune: error: stopped by the test where tuning would start\n"), err
    assert len(seen) == 1, seen
    assert {k: seen[0][k] for k in ("target", "trials", "tune_time", "progress")} == {
        "target": "x86", "trials": 64, "tune_time": 300.0, "progress": progress}
    assert onnx.load(tmp_path / "tiny.onnx").graph.node   # the input is untouched
    assert not (out / "journal.jsonl").exists()            # nothing was measured: no journal left behind


def test_spec_label_and_journal_header_state_the_budget():
    from graphprune.search.latency import resolve_latency
    o = OptimizeOptions(model="m.onnx", data="d.npz", outdir="o", backend="tvm", tune_trials=64, tune_time="5m",
                        progress=False)
    spec, step, label = resolve_latency(o)
    assert (spec.tune_time, spec.tune_trials, spec.progress) == (300.0, 64, False)
    assert ("(this host, tvm; schedules tuned for the base within 64 trials or 300 s, whichever ends first, "
            "replayed onto candidates)") in label
    assert spec.to_json()["tune_time_s"] == 300.0 and "progress" not in spec.to_json()
    o = OptimizeOptions(model="m.onnx", data="d.npz", outdir="o", backend="tvm", tune_time=90)
    assert "schedules tuned for the base within 90 s, replayed" in resolve_latency(o)[2]
    o = OptimizeOptions(model="m.onnx", data="d.npz", outdir="o", backend="tvm")
    spec, _, label = resolve_latency(o)
    assert "untuned schedules" in label and "tune_time_s" not in spec.to_json()   # older journals stay resumable
    o = OptimizeOptions(model="m.onnx", data="d.npz", outdir="o")
    assert resolve_latency(o)[2].startswith("measured on x86 (this host, ort); ")


def test_final_comparison_and_every_measurement_carry_the_budget(monkeypatch):
    """compare_final (both TVM builds, timed alternately) and obj.measure (the search) pass the same
    budget, so the final builds replay the same base instead of compiling untuned code or tuning again."""
    import graphprune.targets as targets
    import graphprune.targets.paired as paired
    from graphprune.search import objectives as obj
    from graphprune.search.latency import compare_final, final_text
    from graphprune.targets.result import LatencyResult
    calls = []

    def fake(model, **kw):
        calls.append({k: kw[k] for k in ("tune_trials", "tune_time")} | {"progress": kw.get("progress", False)})
        return LatencyResult(median_ms=2.0, spread_ms=0.1, repeats=5, backend="tvm", target="x86", tuned=True,
                             tuning="replayed", device="host")

    def fake_paired(original, delivered, **kw):
        calls.append({k: kw[k] for k in ("tune_trials", "tune_time")} | {"paired": (original, delivered)})
        return {**paired.paired_stats([2.0, 2.1, 2.0], [1.0, 1.1, 1.0]), "method": "paired", "threads": 1,
                "method_text": "alternating timed runs of both TVM builds in one process"}
    monkeypatch.setattr(targets, "measure_latency", fake)
    monkeypatch.setattr(paired, "paired_tvm", fake_paired)
    spec = obj.LatencySpec(backend="tvm", repeats=5, tune_trials=0, tune_time=120.0, progress=True)
    f = compare_final("orig", "pruned", spec)
    obj.measure("cand", spec)
    assert calls == [{"tune_trials": 0, "tune_time": 120.0, "paired": ("orig", "pruned")},
                     {"tune_trials": 0, "tune_time": 120.0, "progress": True}]
    assert f["verdict"] == "faster" and "3 alternating pairs in this process" in final_text(f)


def test_paired_tvm_times_two_builds_alternately():
    """The real thing on a tiny net (untuned builds): as many pairs as asked, medians and ratio
    consistent with each other."""
    from _latency_models import tiny_cnn
    from graphprune.targets.paired import paired_tvm
    f = paired_tvm(tiny_cnn(channels=16), tiny_cnn(channels=8), "x86", repeats=6)
    assert f["pairs"] == 6 and f["method"] == "paired" and f["threads"] >= 1
    assert f["original_ms"] > 0 and f["delivered_ms"] > 0
    assert 0 < f["speedup_iqr"][0] <= f["speedup"] <= f["speedup_iqr"][1]
    assert f["speedup_ci95"][0] <= f["speedup"] <= f["speedup_ci95"][1]


@pytest.mark.slow
def test_optimize_tunes_the_original_once_and_replays_every_candidate(tmp_path, capsys, monkeypatch):
    """A real run with a 1 s budget (random search): one tuning run, by the first measurement (the
    original); every other candidate's latency comes from replayed schedules."""
    from graphprune.targets import get_target, tune
    from graphprune.targets.tuning import records
    monkeypatch.setattr(tune, "SEARCH", ("replay-trace", "random"))
    rc, err, out = _optimize(tmp_path, ["--backend", "tvm", "--tune-time", "1s", "--tune-trials", "32"], capsys)
    assert rc == 0, err
    assert "tuning: " in err   # the progress bar of the base's tuning (plain lines off a terminal)
    runs = (records.database_dir(get_target("x86")) / "base" / "tuning_runs.jsonl").read_text().splitlines()
    assert len(runs) == 1 and json.loads(runs[0])["time_limit_s"] == 1.0
    recs = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()[1:]]
    timed = [r for r in recs if r.get("latency_ms") is not None]
    assert timed[0]["phase"] == "baseline" and timed[0]["latency_tuning"].startswith("tuned "), timed[0]
    later = [r["latency_tuning"] for r in timed[1:]]
    assert len(later) > 2 and all("replayed from base traces" in t and not t.startswith("tuned ") for t in later), later
    pj = json.loads((out / "pareto.json").read_text())
    assert pj["latency"]["tune_time_s"] == 1.0
    assert "schedules tuned for the base within 32 trials or 1 s, whichever ends first" in pj["latency_label"]
