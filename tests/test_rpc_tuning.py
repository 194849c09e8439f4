"""Tuning and `optimize` through a real TVM RPC tracker and servers on 127.0.0.1.

MetaSchedule tunes with its RPCRunner: candidates are built here, uploaded through the tracker
and timed on the servers under the key (two here, used in parallel). The quick tests swap the
evolutionary search + XGBoost model for random sampling (`tune.SEARCH`): with a handful of trials
each search round would otherwise cost tens of seconds on a small machine, and nothing about
the RPC path depends on how candidates are chosen. The slow qemu test (test_latency_qemu.py)
tunes with the defaults.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphprune.cli as cli
from graphprune.errors import GraphpruneError
from graphprune.targets import compile_model, get_target, tune
from graphprune.targets.inputs import random_inputs
from graphprune.targets.localrpc import LocalRPCCluster
from graphprune.targets.measure_rpc import run_remote

from _latency_models import tiny_cnn
from _latency_models import isolated_latency_env  # noqa: F401  (autouse fixture)
from _rpc_cluster import KEY, assert_all_gone, cluster, process_tree  # noqa: F401


@pytest.fixture
def quick_search(monkeypatch):
    monkeypatch.setattr(tune, "SEARCH", ("replay-trace", "random"))


def _records(target):
    from tvm.s_tir import meta_schedule as ms
    base = tune.database_dir(target) / "base"
    db = ms.database.JSONDatabase(work_dir=str(base), module_equality="structural")
    return tune._valid_records(db), base   # failed candidates are stored too, with a 1e10 s placeholder


def test_bench_and_compile_tune_over_rpc(cluster, quick_search, tmp_path, capsys):
    m = tiny_cnn()
    path = tmp_path / "tiny.onnx"
    onnx.save(m, path)
    rpc = ["--rpc-tracker", cluster.address, "--rpc-key", KEY]
    # bench tunes the base on the devices (no base yet), then times the tuned build there
    assert cli.main(["bench", str(path), "--tune-trials", "4", "--repeats", "5", "--json"] + rpc) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["tuned"] and r["backend"] == "tvm" and r["device"].startswith(f"rpc:{KEY}@127.0.0.1:")
    assert r["tuning"].startswith("tuned 4 trials over 3 conv/matmul tasks"), r["tuning"]
    assert f"over RPC on key '{KEY}', 2 device(s)" in r["tuning"], r["tuning"]
    # the records landed in the target's base database, with run times the devices measured
    recs, base = _records(get_target("x86"))
    assert recs and all(0 < float(s) < 1.0 for rec in recs for s in rec.run_secs)
    run = json.loads((base / "tuning_runs.jsonl").read_text().splitlines()[-1])
    assert run["runner"] == f"rpc:{KEY}@{cluster.address}" and run["devices"] == 2 and run["trials"] == 4
    # compile applies them and says where the base was tuned
    so = tmp_path / "tiny.so"
    assert cli.main(["compile", str(path), "-o", str(so), "--tune-trials", "4"] + rpc) == 0
    line = capsys.readouterr().out
    assert so.stat().st_size > 0 and f"base tuned over RPC on key '{KEY}'" in line, line
    # the remote-tuned build computes, on the device, what onnxruntime computes
    compiled = compile_model(m, "x86", tune_trials=4, rpc_tracker=cluster.address, rpc_key=KEY)
    assert compiled.tuned and "left untuned" not in compiled.tuning
    feeds = random_inputs(m, seed=3)
    out = run_remote(compiled, feeds, cluster.address, KEY, timeout=60)[0]
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_compile_over_rpc_errors_are_one_line(cluster, tmp_path, capsys):
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_cnn(), path)
    base = ["compile", str(path), "-o", str(tmp_path / "x.so"), "--target", "arm-a72"]
    for extra, msg in [(["--tune-trials", "2", "--rpc-tracker", cluster.address, "--rpc-key", "no-such-board"],
                        "no device is registered under key 'no-such-board'"),
                       (["--rpc-tracker", cluster.address], "give --tune-trials N"),
                       (["--tune-trials", "2", "--rpc-tracker", "nowhere"], "malformed tracker address")]:
        assert cli.main(base + extra) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, (extra, err)


def test_optimize_measures_with_tvm_over_rpc(cluster, tmp_path, monkeypatch):
    """`graphprune optimize --backend tvm --rpc-tracker --rpc-key`: every latency is TVM's on the
    devices under the key, and pareto.json and the report say so."""
    from test_search_common import write_case
    monkeypatch.setattr(cli, "COMMANDS", ["graphprune.cli.optimize_commands"])
    mp, dp = write_case(tmp_path)
    out = tmp_path / "out"
    assert cli.main(["optimize", str(mp), "--data", str(dp), "-o", str(out), "--backend", "tvm",
                     "--rpc-tracker", cluster.address, "--rpc-key", KEY, "--tune-trials", "0",
                     "--budget", "2", "--repeats", "3", "--holdout", "1", "--sensitivity-ratios", "0.5",
                     "--channel-step", "8", "--no-progress", "--json"]) == 0
    pj = json.loads((out / "pareto.json").read_text())
    label = pj["latency_label"]
    assert f"TVM over RPC on key {KEY!r}" in label, label
    assert pj["latency"]["backend"] == "tvm" and pj["latency"]["rpc_key"] == KEY
    assert pj["latency"]["rpc_tracker"] == cluster.address
    assert f"latency: {label}" in (out / "report.md").read_text()
    recs = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()[1:]]
    timed = [r for r in recs if r.get("latency_ms") is not None]
    assert timed and all(r["latency_backend"] == "tvm" and r["latency_device"].startswith(f"rpc:{KEY}@")
                         and r["latency_tuning"] == "untuned" for r in timed)
    # two servers under the key: two candidates proposed at a time, compiled here one at a time
    # (TVM's importer is not thread-safe) and timed on the two devices
    assert json.loads((out / "journal.jsonl").read_text().splitlines()[0])["batch"] == 2


@pytest.mark.slow
def test_hung_device_costs_timeouts_not_a_hung_tuning(quick_search):
    """The only server frozen with SIGSTOP (it stays registered at the tracker): every candidate
    costs one runner timeout, and tuning ends with a clean error instead of hanging."""
    x86 = get_target("x86")
    target = dataclasses.replace(x86, name="x86-frozen", tvm={**x86.tvm, "num-cores": 2})  # no device query
    from graphprune.targets.compile import import_onnx
    mod = import_onnx(tiny_cnn())
    with LocalRPCCluster(key="gp-frozen", n_servers=1) as c:
        tree = process_tree(c)
        server = c.procs[1]
        os.killpg(server.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(GraphpruneError, match="timed no candidate successfully"):
                tune.tune_module(mod, target, 2, rpc=tune.RPCTuning(c.address, "gp-frozen", timeout=5))
            assert time.monotonic() - t0 < 150
            logs = "".join(p.read_text() for p in (tune.database_dir(target) / "base" / "logs").rglob("*.log"))
            assert "RPCRunner: Timeout, killed after 5" in logs
        finally:
            os.killpg(server.pid, signal.SIGCONT)
    assert_all_gone(tree)
