"""The pure parts of tools/bench_dynamic.py (the benchmark itself takes minutes and runs by hand):
the headline choice and the tables it writes, with (b) from optimize and the branch search."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import bench_dynamic as bd  # noqa: E402


def _row(name, acc, avg, longest=None, **kw):
    return {"name": name, "accuracy": acc, "avg_ms": avg, "longest_ms": longest or avg, "bench_ms": longest or avg,
            "exit": 0.0, "per_class": [acc] * 10, **kw}


def _dyn(budget, thr, acc, avg, exit_=0.4):
    return _row(f"dynamic {budget} {thr}", acc, avg, 0.5, budget=budget, threshold=thr, exit=exit_,
                exit_correct=0.99, exit_ms=0.2, bench_exit_ms=0.21, gather_longest_ms=0.9,
                dispatch={"form": "subsets"}, model_mib=12.5)


def test_headline_is_the_fastest_within_the_drop_else_the_most_accurate():
    orig = _row("original", 0.93, 0.7)
    rows = [_dyn(0.5, 0.8, 0.925, 0.40), _dyn(0.5, 0.95, 0.93, 0.45), _dyn(0.25, 0.8, 0.90, 0.30)]
    assert bd.pick_dynamic(orig, rows, 0.01) == (rows[0], True)
    assert bd.pick_dynamic(orig, rows, 0.0) == (rows[1], True)
    assert bd.pick_dynamic(_row("o", 0.99, 0.7), rows, 0.01) == (rows[1], False)


def test_markdown_has_the_three_models_the_search_the_front_and_the_latency_verdict():
    args = bd._parser().parse_args(["--static-budget", "60"])
    d = _dyn(0.5, 0.8, 0.925, 0.40)
    res = {"original": _row("original", 0.93, 0.7), "load": (5.0, 6.0), "seconds": 600, "command": "cmd",
           "model": "m.onnx",
           "dynamic": {"rows": [d], "row": d, "within": True, "branch": "t2",
                       "branch_search": {"branch": "t2", "reason": "lowest", "budget": 0.5, "threshold": 0.9,
                                         "samples": {"fit": 30, "judged": 10}, "original_accuracy": 0.9,
                                         "original_ms": 0.7,
                                         "rows": [{"tensor": "t2", "exit": 0.5, "exit_correct": None,
                                                   "topk_recall": 0.9, "proxy_accuracy": 0.88, "exit_ms": 0.1,
                                                   "gated_ms": 0.5, "avg_ms": 0.3},
                                                  {"tensor": "p1", "skipped": "no grid"}]}},
           "static": {"rows": [], "row": _row("optimize 8-8", 0.926, 0.35, key="8-8"),
                      "optimize": {"bound": 0.005, "seconds": 90, "key": "8-8", "choice_reason": "fastest",
                                   "baseline_ms": 0.7, "recovery": {"accuracy_before": 0.8, "accuracy_after": 0.926},
                                   "front": [{"key": "16-16", "accuracy": 0.93, "latency_ms": 0.6},
                                             {"key": "8-8", "accuracy": 0.8, "latency_ms": 0.3},
                                             {"key": "x", "accuracy": 0.5, "latency_ms": None}]}},
           "latency_target": {**d, "latency": {"fraction": 0.8, "original_ms": 0.7, "target_ms": 0.56,
                                               "budget": 0.31, "steps": [1, 2, 3], "measured_ms": 0.6,
                                               "met": False}}}
    md = bd.markdown(res, args)
    assert "| (b) static, optimize 8-8 | 92.60 | 0.00 | 0.350 | 0.350 | 0.350 |" in md
    assert "| (c) dynamic, budget 0.5, threshold 0.8 | 92.50 | 40.00 | 0.400 | 0.500 | 0.500 |" in md
    assert "| 0.5 | 0.8 | 92.50 | 40.00 | 99.00 | 0.400 | 0.500 | subsets | 12.5 | 0.900 |" in md
    assert "| `t2` | 50.00 | - | 90.00 | 88.00 | 0.100 | 0.500 | 0.300 |" in md
    assert "| `p1` | skipped: no grid |" in md
    assert md.index("| 8-8 | 80.00 | 0.300 |") < md.index("| 16-16 | 93.00 | 0.600 |") and "| x |" not in md
    assert "measured 0.600 ms (NOT met;" in md and "accuracy bound 0.50 pp below the original" in md
