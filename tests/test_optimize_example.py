"""The `make demo` run on the bundled Fashion-MNIST ResNet (slow: minutes on 2 cores)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "fashion_mnist_resnet.onnx"
FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


@pytest.mark.slow
@pytest.mark.skipif(not EXAMPLE.exists() or not FMNIST.exists(), reason="needs the example model and Fashion-MNIST")
def test_demo_optimize_on_the_example(tmp_path):
    data = tmp_path / "data"
    subprocess.run([sys.executable, "tools/make_demo_data.py", "-o", str(data), "--val", "1000", "--train", "1000"],
                   cwd=ROOT, check=True)
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "graphprune", "optimize", str(EXAMPLE), "--target", "x86",
                        "--data", str(data / "val.npz"), "--train-data", str(data / "train.npz"), "--epochs", "0.5",
                        "--max-error-increase", "0.01", "--budget", "20", "--threads", "1", "--no-progress",
                        "-o", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((out / "pareto.json").read_text())
    assert len(s["front"]) >= 2 and s["chosen"]["error"] <= s["baseline"]["error"] + 0.01 + 1e-9
    assert s["chosen"]["latency_ms"] < s["baseline"]["latency_ms"]
    # the speed-up stated is a side-by-side measurement made at the end, on the thread asked for
    assert s["final"]["method"] == "paired" and s["final"]["threads"] == s["threads"] == 1
    assert "speed-up: the delivered model is" in r.stdout and "1 onnxruntime intra-op thread(s)" in r.stdout
    onnx.checker.check_model(onnx.load(out / "best.onnx"))
