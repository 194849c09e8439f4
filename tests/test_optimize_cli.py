"""End-to-end `graphprune optimize` on a tiny model built here: outputs, front, resume, errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from graphprune.cli import main  # noqa: E402
from graphprune.metadata import get_json  # noqa: E402
from graphprune.search.optimize import OptimizeOptions, run_optimize  # noqa: E402
from graphprune.search.pareto import dominates  # noqa: E402
from test_search_common import write_case  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--repeats", "10", "--channel-step", "2", "--no-progress", "--holdout", "4"]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """A fresh latency cache per test: nothing measured elsewhere can hide a re-measurement."""
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def case(tmp_path):
    return write_case(tmp_path)


def _opts(case, out, **kw):
    mp, dp = case
    base = dict(model=str(mp), data=str(dp), outdir=str(out), budget=24, repeats=10, channel_step=2,
                holdout=4, progress=False, max_error_increase=0.4)
    base.update(kw)
    return OptimizeOptions(**base)


def test_optimize_writes_a_valid_front_and_a_runnable_chosen_model(case, tmp_path):
    out = tmp_path / "out"
    s = run_optimize(_opts(case, out), log=lambda m: None)
    for f in ("best.onnx", "pareto.json", "pareto.png", "report.md", "journal.jsonl"):
        assert (out / f).stat().st_size > 0, f
    pj = json.loads((out / "pareto.json").read_text())
    fr = pj["front"]
    pts = [(r["latency_ms"], r["error"]) for r in fr]
    assert fr and all(not dominates(q, p) for p in pts for q in pts)
    # the front is the non-dominated subset of everything measured
    measured = [json.loads(l) for l in (out / "journal.jsonl").read_text().splitlines()[1:]]
    measured = [r for r in measured if r["type"] == "measured"]
    for r in measured:
        if r["key"] not in {f["key"] for f in fr}:
            assert any(dominates(p, (r["latency_ms"], r["error"])) or p == (r["latency_ms"], r["error"]) for p in pts)
    assert len({r["key"] for r in measured}) == len(measured)
    ch = pj["chosen"]
    assert ch["error"] <= pj["baseline"]["error"] + 0.4 + 1e-9 and "lowest weighted score" in pj["choice_reason"]
    assert pj["surrogate"]["holdout"]["n"] >= 1 and pj["surrogate"]["holdout"]["latency_mape_pct"] >= 0
    assert pj["sensitivity"]["curves"] and pj["energy_note"].startswith("estimate")
    # best.onnx: valid, runs, is the chosen configuration, carries its measured figures
    m = onnx.load(out / "best.onnx")
    onnx.checker.check_model(m)
    meta = get_json(m, "graphprune.optimize")
    assert meta["key"] == ch["key"] and meta["chosen_measured"]["latency_ms"] == ch["latency_ms"]
    d = np.load(case[1])
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    err = float((sess.run(None, {"x": d["x"]})[0].argmax(1) != d["y"]).mean())
    assert err == pytest.approx(ch["error"])
    rep = (out / "report.md").read_text()
    assert "Pareto front" in rep and ch["key"] in rep and "ESTIMATE" in rep


def test_resume_in_process_measures_nothing_again(case, tmp_path):
    out = tmp_path / "out"
    s1 = run_optimize(_opts(case, out), log=lambda m: None)
    n1 = len((out / "journal.jsonl").read_text().splitlines())
    s2 = run_optimize(_opts(case, out, resume=True), log=lambda m: None)
    assert s2["counts"]["measured_this_run"] == 0
    assert len((out / "journal.jsonl").read_text().splitlines()) == n1
    assert [r["key"] for r in s2["front"]] == [r["key"] for r in s1["front"]]
    assert s2["chosen"]["key"] == s1["chosen"]["key"]
    # a larger budget continues the same search: only new configurations are measured
    s3 = run_optimize(_opts(case, out, resume=True, budget=40), log=lambda m: None)
    keys = [json.loads(l)["key"] for l in (out / "journal.jsonl").read_text().splitlines()[1:]]
    assert len(keys) == len(set(keys)) == n1 - 1 + s3["counts"]["measured_this_run"]


def _journal_keys(path: Path) -> list[str]:
    keys = []
    for line in path.read_text().splitlines()[1:]:
        try:
            keys.append(json.loads(line)["key"])
        except json.JSONDecodeError:
            pass   # the line being written when the process was killed
    return keys


def test_sigkill_mid_search_then_resume_loses_and_remeasures_nothing(case, tmp_path):
    mp, dp = case
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "graphprune", "optimize", str(mp), "--data", str(dp), "-o", str(out),
           "--budget", "60", "--max-error-increase", "0.4", "--repeats", "300", "--channel-step", "2",
           "--holdout", "4", "--no-progress"]
    env = {**os.environ, "GRAPHPRUNE_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    journal = out / "journal.jsonl"
    deadline = time.time() + 120
    try:   # kill once the search phase has measured something (after baseline, sensitivity, hold-out)
        while time.time() < deadline and proc.poll() is None:
            if journal.exists() and '"phase":"search"' in journal.read_text():
                break
            time.sleep(0.05)
        assert proc.poll() is None, "optimize finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    before = _journal_keys(journal)
    assert len(before) >= 10 and not (out / "pareto.json").exists()
    r = subprocess.run(cmd + ["--resume", "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    after = _journal_keys(journal)
    assert after[:len(before)] == before                      # nothing measured before the kill was lost
    assert len(after) == len(set(after))                      # nothing measured twice
    assert s["counts"]["measured_this_run"] == len(after) - len(before)
    assert s["counts"]["from_journal"] >= len(before)
    assert "resuming" in r.stderr


def test_macs_driven_search_times_only_the_front(case, tmp_path):
    out = tmp_path / "out"
    s = run_optimize(_opts(case, out, objectives="macs,error"), log=lambda m: None)
    assert s["objectives"] == ["macs", "error"]
    assert all(r["latency_ms"] > 0 for r in s["front"])
    recs = [json.loads(l) for l in (out / "journal.jsonl").read_text().splitlines()[1:]]
    timed = {r["key"] for r in recs if r["type"] == "latency"}
    assert {r["key"] for r in s["front"]} <= timed | {s["baseline"]["key"]}
    assert all("latency_ms" not in r for r in recs if r["type"] == "measured")


def _cli(args, capsys):
    rc = main(args)
    cap = capsys.readouterr()
    return rc, cap.err.strip().splitlines()


def test_bad_input_fails_on_one_line(case, tmp_path, capsys):
    mp, dp = case
    o = ["optimize", str(mp), "--data", str(dp), "-o", str(tmp_path / "o")] + FAST
    for extra, msg in [(["--objectives", "latency,speed"], "unknown objective"),
                       (["--objectives", "latency"], "at least two"),
                       (["--target", "arm-a72"], "no reachable device"),
                       (["--optimizer", "NoSuchOpt"], "unknown nevergrad optimizer"),
                       (["--latency-budget", "fast"], "latency-budget"),
                       (["--prefer", "macs=2"], "not one of the objectives"),
                       (["--rpc-tracker", "127.0.0.1:1", "--backend", "tvm"], "cannot reach RPC tracker"),
                       (["--recovery-slack", "0.03", "--max-error-increase", "0.01"], "needs --max-error-increase and --epochs"),
                       (["--recovery-slack", "2", "--max-error-increase", "0.01", "--epochs", "1"], "--recovery-slack must be in")]:
        rc, err = _cli(o + extra, capsys)
        assert rc == 2 and len(err) == 1 and msg in err[0], (extra, err)
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((8, 3, 12, 12), np.float32), y=np.zeros(8, np.int64))
    rc, err = _cli(["optimize", str(mp), "--data", str(bad), "-o", str(tmp_path / "o2")] + FAST, capsys)
    assert rc == 2 and len(err) == 1 and "does not fit" in err[0] or "expects" in err[0]
    np.savez(bad, x=np.zeros((8, 1, 12, 12), np.float32), y=np.full(8, 7, np.int64))
    rc, err = _cli(["optimize", str(mp), "--data", str(bad), "-o", str(tmp_path / "o3")] + FAST, capsys)
    assert rc == 2 and "4 outputs" in err[0]


def test_unmeetable_constraint_is_reported_not_faked(case, tmp_path, capsys):
    mp, dp = case
    out = tmp_path / "o"
    rc, err = _cli(["optimize", str(mp), "--data", str(dp), "-o", str(out), "--latency-budget", "1us",
                    "--budget", "8"] + FAST, capsys)
    assert rc == 2 and len(err) >= 1 and "no candidate meets the constraints" in err[-1]
    assert "No candidate meets the constraints" in (out / "report.md").read_text()
    assert json.loads((out / "pareto.json").read_text())["chosen"] is None
    assert not (out / "best.onnx").exists()


def test_stand_in_timings_are_labelled_everywhere(case, tmp_path):
    out = tmp_path / "out"
    s = run_optimize(_opts(case, out, target="arm-a72", stand_in="x86", budget=8), log=lambda m: None)
    assert "STAND-IN" in s["latency_label"] and "arm-a72" in s["latency_label"]
    assert "STAND-IN TIMINGS" in (out / "report.md").read_text()
    meta = get_json(onnx.load(out / "best.onnx"), "graphprune.optimize")
    assert "STAND-IN" in meta["latency_label"]
    assert json.loads((out / "pareto.json").read_text())["latency"]["stand_in"] == "x86"


def test_recovery_slack_holds_the_users_bound_on_the_delivered_model(case, tmp_path):
    """The search looks beyond the user's accuracy bound; what is delivered meets it after fine-tuning
    (measured on data the fine-tuning never saw), or, when no tried member does, is the choice
    within the bound before recovery; every output says which bound held where. (The choice
    logic itself, with scripted recovery results, is test_search_units.py's.)"""
    out = tmp_path / "out"
    s = run_optimize(_opts(case, out, budget=10, epochs=1.0, max_error_increase=0.8, recovery_slack=0.15,
                           recovery_tries=2, group_bounds="1:0.5:0.75", prefer={"latency_ms": 10.0}),
                     log=lambda m: None)
    base_err, rec = s["baseline"]["error"], s["recovery"]
    assert "after recovery" in s["constraints_text"] and "the search allows 0.95" in s["constraints_text"]
    assert rec is not None and "recovery-aware" in s["choice_reason"]   # group 1 bounded: always pruned
    if "fell back" in s["choice_reason"]:
        assert s["chosen"]["error"] <= base_err + 0.8 + 1e-12
    else:
        assert "delivered the first within the bound" in s["choice_reason"]
        assert 1 - rec["accuracy_after"] <= base_err + 0.8 + 1e-12
    assert s["choice_reason"].count("->") <= 2                            # at most --recovery-tries recovered
    meta = get_json(onnx.load(out / "best.onnx"), "graphprune.optimize")
    assert meta["choice_reason"] == s["choice_reason"] and meta["configuration"] == s["chosen"]["config"]
    assert meta["recovery"]["accuracy_after"] == pytest.approx(rec["accuracy_after"])


def test_workers_pool_gives_the_same_measured_figures(case, tmp_path):
    s = run_optimize(_opts(case, tmp_path / "w2", workers=2, budget=8), log=lambda m: None)
    recs = [json.loads(l) for l in (tmp_path / "w2" / "journal.jsonl").read_text().splitlines()[1:]]
    assert s["counts"]["measured_this_run"] == len(recs) and s["workers"] == 2


def test_recovery_finetunes_on_data_it_never_evaluates(case, tmp_path):
    out = tmp_path / "out"
    s = run_optimize(_opts(case, out, budget=12, epochs=2.0, max_error_increase=None,
                           group_bounds="1:0.5:0.75"), log=lambda m: None)   # forces a pruned choice
    rec = s["recovery"]
    assert int(s["chosen"]["key"].split("-")[1]) <= 24
    assert rec is not None and rec["train_samples"] + rec["eval_samples"] == 256
    assert "held out" in s["data"]["description"]
    m = onnx.load(out / "best.onnx")
    d = np.load(case[1])
    meta = get_json(m, "graphprune.optimize")
    assert meta["recovery"]["accuracy_after"] == pytest.approx(rec["accuracy_after"])
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x": d["x"][:4]})[0].shape == (4, 4)
