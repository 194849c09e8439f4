"""Remote measurement through a real TVM RPC tracker and servers on 127.0.0.1.

The cluster's processes run in their own sessions; the tests check that every
one of them, children included, is gone afterwards.
"""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import onnx
import pytest

import graphprune.cli as cli
from graphprune.errors import GraphpruneError
from graphprune.targets import compile_model, measure_latency
from graphprune.targets.localrpc import LocalRPCCluster
from graphprune.targets.measure_rpc import measure_many, measure_rpc

from _latency_models import tiny_cnn
from _latency_models import isolated_latency_env  # noqa: F401  (autouse fixture)
from _rpc_cluster import assert_all_gone as _assert_all_gone, cluster, process_tree as _process_tree  # noqa: F401


def test_remote_matches_local(cluster, tmp_path, capsys):
    model = tmp_path / "tiny.onnx"
    onnx.save(tiny_cnn(), model)
    local = measure_latency(model, backend="tvm", repeats=20, cache=False)
    assert cli.main(["bench", str(model), "--backend", "tvm", "--rpc-tracker", cluster.address,
                     "--rpc-key", "gp-test", "--repeats", "20", "--json"]) == 0
    import json
    remote = json.loads(capsys.readouterr().out)
    assert remote["device"].startswith("rpc:gp-test@127.0.0.1:")
    assert remote["backend"] == "tvm" and remote["tuned"] is False and remote["repeats"] == 20
    # same machine, same library: agreement within noise. The bound is loose on purpose
    # (2 cores shared with the tracker and servers); an upload or timing bug is off by far more.
    ratio = remote["median_ms"] / local.median_ms
    assert 0.2 < ratio < 5, (remote["median_ms"], local.median_ms)


def test_parallel_candidates_on_two_devices(cluster):
    items = [(compile_model(m, "x86"), m) for m in (tiny_cnn(4), tiny_cnn(6), tiny_cnn(10))]
    results = measure_many(items, cluster.address, "gp-test", repeats=5, timeout=60)
    assert all(not isinstance(r, Exception) for r in results), results
    assert {r.device.split("@")[1] for r in results} <= set(_server_addresses(cluster))


def _server_addresses(cluster):
    from graphprune.targets.measure_rpc import _Tracker
    t = _Tracker(cluster.address, 5)
    try:
        info = t._call([t.base.TrackerCode.SUMMARY])
    finally:
        t.close()
    return [f"{s['addr'][0]}:{s['addr'][1]}" for s in info["server_info"]]


def test_key_without_device_is_a_clean_error(cluster, tmp_path, capsys):
    model = tmp_path / "tiny.onnx"
    onnx.save(tiny_cnn(), model)
    t0 = time.monotonic()
    assert cli.main(["bench", str(model), "--backend", "tvm", "--rpc-tracker", cluster.address,
                     "--rpc-key", "no-such-board"]) == 2
    assert time.monotonic() - t0 < 60
    err = capsys.readouterr().err
    assert "no device is registered under key 'no-such-board'" in err and err.count("\n") == 1


def test_hung_devices_cost_a_timeout_never_a_hang():
    """Servers frozen with SIGSTOP stay registered at the tracker. With one of two frozen, every
    measurement finishes, one at a time or several at once (a timeout on the frozen one if the
    tracker hands it out, then a retry);
    with both frozen, it fails with a clean error in bounded time."""
    m = tiny_cnn()
    compiled = compile_model(m, "x86")
    with LocalRPCCluster(key="gp-hang", n_servers=2) as c:
        tree = _process_tree(c)
        servers = c.procs[1:]
        try:
            os.killpg(servers[0].pid, signal.SIGSTOP)
            for _ in range(2):  # whichever server the tracker picks first, both runs finish
                r = measure_rpc(compiled, m, c.address, "gp-hang", repeats=3, timeout=10, retries=2)
                assert r.device.startswith("rpc:gp-hang@")
            # three candidates at once, one worker per registered device: the frozen one costs a
            # timeout if handed out, then the live device times all three
            t0 = time.monotonic()
            many = measure_many([(compiled, m)] * 3, c.address, "gp-hang", parallel=2, repeats=3, timeout=5, retries=2)
            assert all(not isinstance(r, Exception) for r in many), many
            assert len({r.device for r in many}) == 1 and time.monotonic() - t0 < 5 + 25
            os.killpg(servers[1].pid, signal.SIGSTOP)
            t0 = time.monotonic()
            with pytest.raises(GraphpruneError, match="failed 2 times"):
                measure_rpc(compiled, m, c.address, "gp-hang", repeats=3, timeout=4, retries=1)
            assert time.monotonic() - t0 < 30
        finally:
            for s in servers:
                os.killpg(s.pid, signal.SIGCONT)
    _assert_all_gone(tree)


def test_remote_outputs_are_exact(cluster):
    """The uploaded library computes the same numbers as onnxruntime."""
    import onnxruntime as ort
    from graphprune.targets.inputs import random_inputs
    from graphprune.targets.measure_rpc import run_remote
    m = tiny_cnn(channels=5)
    feeds = random_inputs(m, seed=1)
    out = run_remote(compile_model(m, "x86"), feeds, cluster.address, "gp-test", timeout=60)[0]
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
