"""arm-a72 library measured on an emulated aarch64 RPC server (qemu-user). Slow, and needs the
private root made by `tools/qemu_arm_rpc.sh setup` (GRAPHPRUNE_QEMU_ROOT or the default place)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from graphprune.targets import compile_model
from graphprune.targets.localrpc import LocalRPCCluster
import numpy as np
import onnxruntime as ort

from graphprune.targets.inputs import random_inputs
from graphprune.targets.measure_rpc import measure_rpc, run_remote

from _latency_models import tiny_cnn

pytestmark = pytest.mark.slow
ROOT = Path(os.environ.get("GRAPHPRUNE_QEMU_ROOT",
                           Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "graphprune/qemu-aarch64"))


@pytest.mark.skipif(not (ROOT / "bin/python").exists(), reason="run tools/qemu_arm_rpc.sh setup first")
def test_arm_a72_runs_on_emulated_aarch64_server():
    m = tiny_cnn()
    compiled = compile_model(m, "arm-a72")
    cluster = LocalRPCCluster(key="rasp4-qemu", n_servers=0, start_timeout=300).start()
    try:
        cluster.add_server(python=str(ROOT / "bin/python"))
        cluster.wait_for(1)
        r = measure_rpc(compiled, m, cluster.address, "rasp4-qemu", repeats=3, timeout=300, emulated=True)
        assert r.emulated and r.target == "arm-a72" and r.device.startswith("rpc:rasp4-qemu@")
        feeds = random_inputs(m, seed=4)
        out = run_remote(compiled, feeds, cluster.address, "rasp4-qemu", timeout=300)[0]
        ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    finally:
        cluster.stop()
