"""The pure parts of tools/bench_optimize_tvm.py and tools/bench_channel_step.py (the measurements
themselves take minutes and run by hand): rank agreement, front rows, the tables they write."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import bench_optimize_tvm as bot  # noqa: E402


def test_spearman_is_the_rank_correlation():
    assert bot._spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert bot._spearman([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(0.8)


def test_front_rows_are_fastest_first_and_say_which_meet_the_bound():
    s = {"baseline": {"error": 0.10},
         "front": [{"key": "a", "error": 0.10, "latency_ms": 2.0, "macs": 10},
                   {"key": "b", "error": 0.105, "latency_ms": 1.5, "macs": 8},
                   {"key": "c", "error": 0.30, "latency_ms": 0.5, "macs": 2}]}
    rows = bot._front_rows(s, max_drop=0.01)
    assert [r["key"] for r in rows] == ["c", "b", "a"]
    assert [r["within"] for r in rows] == [False, True, True]
    assert rows[1]["accuracy"] == pytest.approx(0.895)


def test_replay_stats_count_the_tuning_and_the_replays(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path))
    recs = [{"latency_tuning": "tuned 48 trials over 10 conv/matmul tasks in 827 s; 3 tasks with exact", "t": 0.0},
            {"latency_tuning": "0 tasks with exact tuned records, 7 replayed from base traces, 3 left untuned",
             "t": 20.0},
            {"latency_tuning": "2 tasks with exact tuned records, 5 replayed from base traces", "t": 50.0}]
    st = bot._replay_stats(recs)
    assert (st["tuned_runs"], st["replayed_candidates"], st["candidates_with_untuned_tasks"], st["measured"]) == (
        1, 2, 1, 3)
    assert st["seconds_per_candidate_median"] == pytest.approx(25.0) and st["base_runs"] == []


def test_channel_step_table_rows():
    bcs = pytest.importorskip("bench_channel_step")   # imports torch
    rep = {"variants": {"full": {"macs": 2e9, "ort_ms": 40.0, "tvm_ms": 80.0, "maxdiff": 1e-7},
                        "m16": {"macs": 1e9, "ort_ms": 20.0, "tvm_ms": 50.0, "maxdiff": 2e-7},
                        "m8-": {"macs": 0.9e9, "ort_ms": 18.0, "tvm_ms": 90.0, "maxdiff": 2e-7}}}
    lines = bcs.markdown(rep).splitlines()
    assert lines[0].startswith("| variant | inner widths | multiple of |") and lines[1].count("|") == 13
    assert lines[3] == ("| m16 | 32-64-128-256 | 16 | 1000 | 20.00 | 20.00 | 50.00 | 50.00 | 1.000 | 1.000 | 2.50 "
                        "| 2.0e-07 |")
    assert lines[4] == ("| m8- | 24-56-120-248 | 8 | 900 | 18.00 | 20.00 | 90.00 | 100.00 | 1.800 | 0.900 | 5.00 "
                        "| 2.0e-07 |")
