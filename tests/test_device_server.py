"""onnxruntime on the device through the tracker: real tracker and `graphprune device-server`
processes on 127.0.0.1.

The two device-servers run as a board would: one is a copy of targets/device_server.py run as
a script with graphprune, onnx and torch unimportable (a board with only Python, onnxruntime
and the TVM runtime), the other is `graphprune device-server` with onnx and torch unimportable.
Whatever they answer was computed by their own onnxruntime.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import psutil
import pytest

import graphprune.cli as cli
from graphprune.errors import GraphpruneError
from graphprune.targets import measure_latency
from graphprune.targets.inputs import random_inputs
from graphprune.targets.localrpc import LocalRPCCluster
from graphprune.targets.measure_rpc_ort import measure_many_ort, measure_ort_rpc, run_ort_remote, time_on_device

from _latency_models import tiny_cnn
from _latency_models import isolated_latency_env  # noqa: F401  (autouse fixture)
from _rpc_cluster import assert_all_gone, process_tree

KEY = "gp-ort"
SCRIPT = Path(__file__).resolve().parents[1] / "targets" / "device_server.py"
BOARD_LACKS = ("torch", "onnx", "onnxscript", "onnx_graphsurgeon", "scipy")


def poisoned_env(tmp: Path, names) -> dict:
    """An environment in which importing any of `names` raises ImportError (packages first on
    PYTHONPATH whose __init__ raises), for this process's children and theirs."""
    for n in names:
        (tmp / n).mkdir(parents=True, exist_ok=True)
        (tmp / n / "__init__.py").write_text(f"raise ImportError('{n} is not installed on this board')\n")
    return {**os.environ, "PYTHONPATH": str(tmp)}


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    """Tracker + the two board-like device-servers under KEY; every process, children included,
    is checked gone afterwards."""
    tmp = tmp_path_factory.mktemp("board")
    script = tmp / "device_server.py"
    shutil.copy(SCRIPT, script)   # what a board without graphprune runs
    no_torch = poisoned_env(tmp / "no-torch", BOARD_LACKS)   # also spares the tracker importing torch
    c = LocalRPCCluster(key=KEY, n_servers=0, tracker_env=no_torch).start()
    try:
        c.add_device_server(script=str(script), env=poisoned_env(tmp / "no-graphprune", (*BOARD_LACKS, "graphprune")))
        c.add_device_server(env=no_torch)
        c.add_server(key="gp-plain", env=no_torch)   # TVM's own server, for the missing-functions error
        c.wait_for(2)
        c.wait_for(1, key="gp-plain")
    except BaseException:
        c.stop()
        raise
    yield c
    tree = process_tree(c)
    c.stop()
    assert_all_gone(tree)


def _server_pids(c) -> dict[int, int]:
    """pid of every process under each device-server -> index of that server (0: script, 1: CLI)."""
    out = {}
    for i, p in enumerate(c.procs[1:]):
        root = psutil.Process(p.pid)
        for q in [root, *root.children(recursive=True)]:
            out[q.pid] = i
    return out


def _wait_free(c, n: int, within: float = 20.0) -> None:
    """Until the tracker lists `n` free devices under KEY (a device re-registers after each session)."""
    from graphprune.targets.measure_rpc import _Tracker
    deadline = time.monotonic() + within
    while True:
        t = _Tracker(c.address, 5)
        try:
            free = t._call([t.base.TrackerCode.SUMMARY])["queue_info"].get(KEY, {}).get("free", 0)
        finally:
            t.close()
        if free >= n or time.monotonic() > deadline:
            assert free >= n, f"{free} free devices under {KEY}"
            return
        time.sleep(0.2)


def test_result_device_info_round_trip():
    """device_info survives the cache; entries cached before the field existed still load."""
    from graphprune.targets.result import LatencyResult, stats
    r = stats([1.0, 2.0, 3.0], backend="ort", target="x86", tuned=False, tuning="t", device="rpc:k@h:1",
              device_info={"onnxruntime": "9.9", "providers": ["CPUExecutionProvider"], "cpu": "Cortex-A72",
                           "machine": "aarch64", "cores": 4})
    assert LatencyResult.from_dict(r.to_dict()) == r
    assert "device runs onnxruntime 9.9 [CPUExecutionProvider] on Cortex-A72 (aarch64, 4 cores)" in r.summary()
    old = {k: v for k, v in r.to_dict().items() if k != "device_info"}
    assert LatencyResult.from_dict(old).device_info is None
    with pytest.raises(ValueError, match="bad device_info"):
        LatencyResult.from_dict({**r.to_dict(), "device_info": "aarch64"})


def test_device_module_needs_only_the_runtime(tmp_path):
    """The board-side functions, called directly in a process where graphprune, onnx and torch
    cannot be imported, time and run a model; none of those modules got loaded."""
    model = tmp_path / "m.onnx"
    onnx.save(tiny_cnn(channels=3), model)
    feeds = random_inputs(tiny_cnn(channels=3), seed=2)
    np.savez(tmp_path / "feeds.npz", *feeds.values())
    code = f"""
import json, sys, importlib.util
spec = importlib.util.spec_from_file_location("device_server", {str(SCRIPT)!r})
ds = importlib.util.module_from_spec(spec); spec.loader.exec_module(ds)
model = open({str(model)!r}, "rb").read(); feeds = open({str(tmp_path / 'feeds.npz')!r}, "rb").read()
t = json.loads(ds.time_model(model, feeds, json.dumps({{"threads": 1, "warmup": 1, "repeats": 3}})))
out = ds.run_model(model, feeds, "{{}}")
open({str(tmp_path / 'out.npz')!r}, "wb").write(out)
bad = json.loads(ds.time_model(b"not onnx", feeds, "{{}}"))
print(json.dumps({{"n": len(t["samples_ms"]), "threads": t["threads"], "ort": t["device"]["onnxruntime"],
                  "bad": bad["error"], "loaded": [m for m in {list(BOARD_LACKS) + ['graphprune']!r}
                                                 if sys.modules.get(m) is not None]}}))
"""
    env = poisoned_env(tmp_path / "poison", (*BOARD_LACKS, "graphprune"))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["n"] == 3 and got["threads"] == 1 and got["ort"] == ort.__version__ and got["loaded"] == []
    assert got["bad"].startswith("onnxruntime on the device cannot load this model")
    ref = ort.InferenceSession(model.read_bytes(), providers=["CPUExecutionProvider"]).run(None, feeds)
    with np.load(tmp_path / "out.npz") as z:
        np.testing.assert_array_equal(z["arr_0"], ref[0])


def test_bench_ort_over_rpc(farm, tmp_path, capsys):
    """bench --backend ort --rpc-tracker: the local ort result's fields, the device's identity,
    and the shape the project's input rule gave (--input-shape pins the dynamic dims)."""
    m = tiny_cnn()
    dims = m.graph.input[0].type.tensor_type.shape.dim
    for i, name in ((0, "N"), (2, "H"), (3, "W")):
        dims[i].dim_param = name   # dynamic: the input rule or --input-shape decides
    model = tmp_path / "dyn.onnx"
    onnx.save(m, model)
    assert cli.main(["bench", str(model), "--backend", "ort", "--rpc-tracker", farm.address, "--rpc-key", KEY,
                     "--repeats", "7", "--input-shape", "x=1,3,20,12", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    local = measure_latency(model, repeats=3, cache=False, input_shapes={"x": [1, 3, 20, 12]}).to_dict()
    assert set(r) == set(local)
    assert r["backend"] == "ort" and r["repeats"] == 7 and r["device"].startswith(f"rpc:{KEY}@127.0.0.1:")
    assert r["input_shapes"] == {"x": [1, 3, 20, 12]} and r["median_ms"] > 0 and r["min_ms"] <= r["median_ms"]
    info = r["device_info"]
    assert info["onnxruntime"] == ort.__version__ and info["providers"] == ["CPUExecutionProvider"]
    assert r["threads"] == info["cores"] == len(os.sched_getaffinity(0))
    assert info["server_pid"] in _server_pids(farm)   # the session's parent: a device-server process
    again = measure_latency(model, backend="ort", rpc_tracker=farm.address, rpc_key=KEY, repeats=7,
                            input_shapes={"x": [1, 3, 20, 12]})
    assert again.cached and again.device_info == info and again.median_ms == r["median_ms"]
    assert cli.main(["bench", str(model), "--backend", "ort", "--rpc-tracker", farm.address, "--rpc-key", KEY,
                     "--repeats", "3", "--no-cache"]) == 0
    text = capsys.readouterr().out
    assert "backend ort" in text and "input x=1x3x64x64" in text and f"onnxruntime {ort.__version__}" in text


def test_outputs_come_from_each_device_onnxruntime(farm):
    """Two runs at once hold the two devices, one each; both outputs are exactly local
    onnxruntime's (same version, one thread), and each was computed by a device-server process."""
    big = tiny_cnn(channels=32, size=64)   # ~1 ms a run: 1000 runs outlast the connection set-up
    big_feeds = random_inputs(big)
    results = [None, None]
    _wait_free(farm, 2)

    def one(i):
        results[i] = time_on_device(big, big_feeds, farm.address, KEY, repeats=1000, warmup=1, threads=1, timeout=60)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    [t.start() for t in threads]
    [t.join(90) for t in threads]
    pids = _server_pids(farm)
    assert sorted(pids[a["device"]["server_pid"]] for a, _ in results) == [0, 1]   # one on each device
    (a0, _), (a1, _) = results
    assert max(a0["started"], a1["started"]) < min(a0["finished"], a1["finished"])   # timed at the same time
    m = tiny_cnn(channels=5)
    feeds = random_inputs(m, seed=1)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    ref = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)
    outs, dev = run_ort_remote(m, feeds, farm.address, KEY, threads=1)
    assert len(outs) == 1 and outs[0].dtype == np.float32
    np.testing.assert_array_equal(outs[0], ref[0])


def test_refusals_are_one_line(farm, tmp_path, capsys):
    """A model the device's onnxruntime cannot load, too many threads for the device, and a
    plain TVM server under the key: one line each, exit 2, no retry loop."""
    bad = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")], "bad",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])]),
        opset_imports=[onnx.helper.make_opsetid("", 17), onnx.helper.make_opsetid("com.example", 1)])
    bad.ir_version = 9
    with pytest.raises(GraphpruneError, match="onnxruntime on the device cannot load this model"):
        measure_ort_rpc(bad, farm.address, KEY, repeats=1, timeout=30)
    with pytest.raises(GraphpruneError, match=r"threads 1000 is more than 4x the \d+ cores of this device"):
        measure_ort_rpc(tiny_cnn(), farm.address, KEY, repeats=1, threads=1000, timeout=30)
    model = tmp_path / "tiny.onnx"
    onnx.save(tiny_cnn(), model)
    assert cli.main(["bench", str(model), "--backend", "ort", "--rpc-tracker", farm.address,
                     "--rpc-key", "gp-plain", "--timeout", "20"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot time onnxruntime" in err
    assert f"graphprune device-server --tracker {farm.address} --key gp-plain" in err


def test_device_server_start_errors(tmp_path):
    """Nonsense options are refused at once, one line, before any server starts."""
    from graphprune.targets.localrpc import free_port
    env = poisoned_env(tmp_path, BOARD_LACKS)
    dead = f"127.0.0.1:{free_port()}"
    for argv, msg in [(["--tracker", "nohost", "--key", "k"], "malformed tracker address"),
                      (["--tracker", dead, "--key", "a b"], "--key must be a non-empty name"),
                      (["--tracker", dead, "--key", "k", "--tracker-wait", "0"], f"cannot reach RPC tracker at {dead}")]:
        res = subprocess.run([sys.executable, "-m", "graphprune", "device-server", *argv], capture_output=True,
                             text=True, timeout=60, env=env)
        assert res.returncode == 2 and res.stderr.count("\n") == 1 and msg in res.stderr, res.stderr


def test_sigterm_stops_the_whole_server_and_a_busy_port_is_one_line(farm, tmp_path):
    """SIGTERM to the device-server's own process (as a service manager sends it) also stops
    TVM's server worker, which would otherwise go on serving, orphaned. A port range with no free
    port is refused with one line."""
    import socket
    from graphprune.targets.localrpc import free_port
    env = poisoned_env(tmp_path, BOARD_LACKS)
    p = subprocess.Popen([sys.executable, "-m", "graphprune", "device-server", "--tracker", farm.address, "--key",
                          "gp-term", "--host", "127.0.0.1", "--port", str(free_port())], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        with socket.socket() as busy:   # while that one starts
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            port = busy.getsockname()[1]
            res = subprocess.run([sys.executable, "-m", "graphprune", "device-server", "--tracker", farm.address,
                                  "--key", "gp-busy", "--host", "127.0.0.1", "--port", str(port), "--port-end",
                                  str(port + 1)], capture_output=True, text=True, timeout=60, env=env)
        assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
        assert f"cannot start the RPC server on 127.0.0.1:{port}-{port}" in res.stderr
        farm.wait_for(1, key="gp-term")
        workers = psutil.Process(p.pid).children(recursive=True)
        assert workers
        os.kill(p.pid, signal.SIGTERM)   # the main process only, not its group
        assert p.wait(timeout=20) == 0
        assert_all_gone(workers)
        assert p.stdout.read().startswith("graphprune device-server: key 'gp-term' at tracker")
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_optimize_times_candidates_on_the_device(farm, tmp_path):
    """optimize --backend ort --rpc-tracker: every candidate and the final comparison are timed
    by the devices' onnxruntime (never this process's: the final comparison is back to back)."""
    from graphprune.search.optimize import OptimizeOptions, run_optimize
    from test_search_common import write_case
    mp, dp = write_case(tmp_path, n=64)
    out = tmp_path / "out"
    run_optimize(OptimizeOptions(model=str(mp), data=str(dp), outdir=str(out), budget=3, repeats=3, channel_step=4,
                                 holdout=2, progress=False, max_error_increase=0.4, backend="ort",
                                 rpc_tracker=farm.address, rpc_key=KEY), log=lambda m: None)
    pj = json.loads((out / "pareto.json").read_text())
    assert "the device's own onnxruntime" in pj["latency_label"] and pj["latency"]["threads"] is None
    assert pj["final"]["method"] == "back-to-back" and "as many as the device has cores" in pj["final"]["threads_text"]
    measured = [json.loads(ln) for ln in (out / "journal.jsonl").read_text().splitlines()[1:]]
    devices = {r["latency_device"] for r in measured if r["type"] == "measured"}
    assert devices and all(d.startswith(f"rpc:{KEY}@127.0.0.1:") for d in devices), devices
    assert onnx.load(out / "best.onnx").graph.node


def _farm_case(tmp_path, hw: int = 32):
    """The search tests' tiny ResNet at 32x32 (about 1 ms a run): a timing lasts long enough next
    to the RPC overheads (tracker, upload, session) for two at once to be seen overlapping."""
    from test_search_common import self_labelled_data, tiny_resnet
    m = tiny_resnet(0, hw=hw)
    onnx.save(m, tmp_path / "m.onnx")
    x, y = self_labelled_data(m, 48, hw=hw)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    return tmp_path / "m.onnx", tmp_path / "d.npz"


def _optimize_on_farm(tmp_path, farm, out, **kw):
    """optimize timed by the farm's two devices; (summary, measured records, wall seconds)."""
    from graphprune.search.optimize import OptimizeOptions, run_optimize
    mp, dp = _farm_case(tmp_path)
    o = OptimizeOptions(model=str(mp), data=str(dp), outdir=str(out), budget=4, repeats=100, channel_step=8,
                        holdout=2, progress=False, max_error_increase=0.4, backend="ort", rpc_tracker=farm.address,
                        rpc_key=KEY, threads=1, **kw)
    t0 = time.monotonic()
    s = run_optimize(o, log=lambda m: None)
    recs = [json.loads(ln) for ln in (out / "journal.jsonl").read_text().splitlines()[1:]]
    return s, [r for r in recs if r["type"] == "measured"], time.monotonic() - t0


def _overlapping_pairs(recs):
    """Pairs of candidates whose timed runs on the devices (each device's own clock, from the end of
    the warm-up to the last run; one host here) overlap."""
    w = lambda r: r["latency_device_window"]  # noqa: E731
    return [(a, b) for i, a in enumerate(recs) for b in recs[i + 1:] if max(w(a)[0], w(b)[0]) < min(w(a)[1], w(b)[1])]


def test_optimize_times_two_candidates_at_once_on_two_devices(farm, tmp_path):
    """With two devices under the key, optimize proposes two candidates at a time and times them
    at the same time (their timed runs overlap) on different devices, never two on one device."""
    _wait_free(farm, 2)
    s, recs, _ = _optimize_on_farm(tmp_path, farm, tmp_path / "out")
    head = json.loads((tmp_path / "out" / "journal.jsonl").read_text().splitlines()[0])
    assert head["batch"] == 2 and head["workers"] == 1
    devices = {r["latency_device"] for r in recs}
    assert len(devices) == 2 and all(d.startswith(f"rpc:{KEY}@127.0.0.1:") for d in devices)
    pairs = _overlapping_pairs(recs)
    assert len(pairs) >= 2, [(r["key"], r["latency_device"], r["latency_device_window"]) for r in recs]
    assert all(a["latency_device"] != b["latency_device"] for a, b in pairs)   # a device is never shared
    assert s["front"]


def test_optimize_with_a_frozen_device_pays_one_timeout(farm, tmp_path):
    """One of the two devices SIGSTOPped (still registered): the candidate handed to it costs one
    --timeout (3 s), then the live device times everything and the search finishes."""
    _wait_free(farm, 2)
    frozen = farm.procs[2]
    os.killpg(frozen.pid, signal.SIGSTOP)
    try:
        s, recs, _ = _optimize_on_farm(tmp_path, farm, tmp_path / "out", timeout=3.0)
    finally:
        os.killpg(frozen.pid, signal.SIGCONT)
    assert len({r["latency_device"] for r in recs}) == 1 and s["front"]
    slow = [r for r in recs if r["latency_finished"] - r["latency_started"] >= 3.0]
    assert len(slow) == 1, [(r["key"], r["latency_finished"] - r["latency_started"]) for r in recs]
    _wait_free(farm, 2, within=30)   # back after SIGCONT: the next tests find two devices


def test_hung_device_costs_a_timeout_not_a_hang(farm):
    """One device frozen with SIGSTOP stays registered: the work still finishes on the other.
    The tracker hands out free devices in turn, so the frozen one is handed out once: exactly one
    timeout is paid, then it is never handed out again. Three candidates at once (two workers,
    one per registered device) all end up timed by the live device."""
    models = [tiny_cnn(channels=c) for c in (3, 4, 5)]
    frozen = farm.procs[1]
    _wait_free(farm, 2)   # both registered and free: the frozen one is then in the tracker's queue
    os.killpg(frozen.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        results = measure_many_ort(models, farm.address, KEY, repeats=3, timeout=5, retries=2)
        elapsed = time.monotonic() - t0
        assert all(not isinstance(r, Exception) for r in results), results
        assert {_server_pids(farm).get(r.device_info["server_pid"]) for r in results} == {1}
        assert 5 <= elapsed < 5 + 20, elapsed
        r = measure_ort_rpc(models[0], farm.address, KEY, repeats=3, timeout=5, retries=0)   # not handed out again
        assert _server_pids(farm).get(r.device_info["server_pid"]) == 1
    finally:
        os.killpg(frozen.pid, signal.SIGCONT)
