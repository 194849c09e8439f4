"""arm-a72 libraries measured, and tuned, on an emulated aarch64 RPC server (qemu-user). Slow, and
needs the private root made by `tools/qemu_arm_rpc.sh setup` (GRAPHPRUNE_QEMU_ROOT or the default place)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from graphprune.targets import compile_model, get_target, measure_latency, tune
from graphprune.targets.inputs import random_inputs
from graphprune.targets.localrpc import LocalRPCCluster
from graphprune.targets.measure_rpc import measure_rpc, run_remote

from _latency_models import tiny_cnn
from _latency_models import isolated_latency_env  # noqa: F401  (autouse fixture)

ROOT = Path(os.environ.get("GRAPHPRUNE_QEMU_ROOT",
                           Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "graphprune/qemu-aarch64"))
KEY = "rasp4-qemu"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (ROOT / "bin/python").exists(), reason="run tools/qemu_arm_rpc.sh setup first")]


@pytest.fixture(scope="module")
def qemu_cluster():
    cluster = LocalRPCCluster(key=KEY, n_servers=0, start_timeout=300).start()
    try:
        cluster.add_server(python=str(ROOT / "bin/python"))
        cluster.wait_for(1)
        yield cluster
    finally:
        cluster.stop()


def _check_on_device(compiled, m, cluster, seed):
    feeds = random_inputs(m, seed=seed)
    out = run_remote(compiled, feeds, cluster.address, KEY, timeout=300)[0]
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("relu6", [False, True])
def test_arm_a72_runs_on_emulated_aarch64_server(qemu_cluster, relu6):
    m = tiny_cnn(relu6=relu6)
    compiled = compile_model(m, "arm-a72")
    r = measure_rpc(compiled, m, qemu_cluster.address, KEY, repeats=3, timeout=300, emulated=True)
    assert r.emulated and r.target == "arm-a72" and r.device.startswith(f"rpc:{KEY}@")
    _check_on_device(compiled, m, qemu_cluster, seed=4)


@pytest.mark.parametrize("relu6", [False, True])
def test_arm_a72_tuned_over_rpc_on_emulated_server(qemu_cluster, relu6):
    """MetaSchedule (default evolutionary search + XGBoost) tunes arm-a72 with candidates
    cross-linked here and timed on the emulated board; the tuned build computes what ORT does.
    relu6: ReLU6 as Clip(0, 6), imported as maximum/minimum fused into the tuned convolutions."""
    m = tiny_cnn(relu6=relu6)
    r = measure_latency(m, target="arm-a72", backend="tvm", rpc_tracker=qemu_cluster.address, rpc_key=KEY,
                        tune_trials=4, repeats=3, timeout=300, emulated=True)
    assert r.tuned and r.emulated and r.target == "arm-a72" and r.device.startswith(f"rpc:{KEY}@")
    assert r.tuning.startswith("tuned 4 trials") and f"over RPC on key '{KEY}' (emulated device)" in r.tuning, r.tuning
    from tvm.s_tir import meta_schedule as ms
    base = tune.database_dir(get_target("arm-a72")) / "base"
    assert tune._valid_records(ms.database.JSONDatabase(work_dir=str(base), module_equality="structural"))
    run = json.loads((base / "tuning_runs.jsonl").read_text().splitlines()[-1])
    assert run["runner"].startswith(f"rpc:{KEY}@") and run["emulated"] is True
    from graphprune.targets.tuning import pipeline   # tuned through the NHWC + weight-prepack pipeline
    assert run["pipeline"] == pipeline.PIPELINE == "nhwc-ohwi-prepack-1"
    compiled = compile_model(m, "arm-a72", tune_trials=4, rpc_tracker=qemu_cluster.address, rpc_key=KEY)
    assert compiled.tuned and "base tuned over RPC" in compiled.tuning and "left untuned" not in compiled.tuning
    _check_on_device(compiled, m, qemu_cluster, seed=5)
