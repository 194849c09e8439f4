"""The device-server on an emulated aarch64 board (qemu-user): the root made by
`tools/qemu_arm_rpc.sh setup` has only Python, numpy, onnxruntime (aarch64) and the TVM runtime
library (TVM_USE_RUNTIME_LIB=1): no graphprune, no onnx, no torch, no compiler. Slow; skipped
without that root (GRAPHPRUNE_QEMU_ROOT or the default place)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from graphprune.targets import measure_latency
from graphprune.targets.inputs import random_inputs
from graphprune.targets.localrpc import LocalRPCCluster
from graphprune.targets.measure_rpc_ort import run_ort_remote

from _latency_models import tiny_cnn
from _latency_models import isolated_latency_env  # noqa: F401  (autouse fixture)

ROOT = Path(os.environ.get("GRAPHPRUNE_QEMU_ROOT",
                           Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "graphprune/qemu-aarch64"))
SCRIPT = Path(__file__).resolve().parents[1] / "targets" / "device_server.py"
KEY = "rasp4-qemu-ort"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (ROOT / "site/onnxruntime").is_dir(),
                                 reason="run tools/qemu_arm_rpc.sh setup first (with onnxruntime)")]


def test_onnxruntime_timed_and_run_on_emulated_aarch64_board():
    m = tiny_cnn()
    with LocalRPCCluster(key=KEY, n_servers=0, start_timeout=300) as c:
        c.add_device_server(script=str(SCRIPT), python=str(ROOT / "bin/python"))
        c.wait_for(1)
        r = measure_latency(m, target="arm-a72", backend="ort", rpc_tracker=c.address, rpc_key=KEY, repeats=5,
                            cache=False, timeout=300, emulated=True)
        assert r.emulated and r.backend == "ort" and r.target == "arm-a72" and r.device.startswith(f"rpc:{KEY}@")
        assert r.device_info["machine"] == "aarch64" and r.median_ms > 0 and r.input_shapes == {"x": [1, 3, 16, 16]}
        feeds = random_inputs(m, seed=3)
        outs, _ = run_ort_remote(m, feeds, c.address, KEY, timeout=300)
        ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
        np.testing.assert_allclose(outs[0], ref[0], rtol=1e-5, atol=1e-6)
