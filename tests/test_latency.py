"""Local latency: onnxruntime and TVM backends, the result format, the cache, the CLI and its errors."""
from __future__ import annotations

import json
import socket

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphprune.cli as cli
from graphprune.errors import GraphpruneError
from graphprune.targets import compile_model, measure_latency
from graphprune.targets.inputs import random_inputs
from graphprune.targets.measure_local import run_tvm_local

from _latency_models import tiny_cnn, unsupported_model
from _latency_models import isolated_latency_env  # noqa: F401  (autouse fixture)



@pytest.fixture
def model_path(tmp_path):
    p = tmp_path / "tiny.onnx"
    onnx.save(tiny_cnn(), p)
    return p


def test_tvm_outputs_match_onnxruntime():
    m = tiny_cnn(channels=12)
    feeds = random_inputs(m, seed=3)
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    out = run_tvm_local(compile_model(m, "x86"), feeds)[0]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["ort", "tvm"])
def test_result_format_and_cache(backend, model_path):
    r = measure_latency(model_path, target="x86", backend=backend, repeats=7)
    assert r.backend == backend and r.target == "x86" and r.device == "host"
    assert r.repeats == 7 and not r.tuned and not r.cached and not r.emulated
    assert r.min_ms <= r.median_ms <= r.max_ms and r.spread_ms >= 0
    again = measure_latency(model_path, target="x86", backend=backend, repeats=7)
    assert again.cached and again.median_ms == r.median_ms
    other = measure_latency(tiny_cnn(channels=6), target="x86", backend=backend, repeats=7)
    assert not other.cached  # another graph is another cache entry


def test_cache_key_ignores_producer_metadata():
    m = tiny_cnn()
    measure_latency(m, repeats=3)
    m2 = onnx.ModelProto()
    m2.CopyFrom(m)
    m2.producer_name, m2.doc_string = "someone-else", "re-exported"
    assert measure_latency(m2, repeats=3).cached


def test_bench_cli_json(model_path, capsys):
    assert cli.main(["bench", str(model_path), "--target", "x86", "--backend", "tvm", "--repeats", "5", "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["backend"] == "tvm" and obj["target"] == "x86" and obj["tuned"] is False
    assert obj["median_ms"] > 0 and obj["repeats"] == 5


def test_bench_cli_text(model_path, capsys):
    assert cli.main(["bench", str(model_path), "--repeats", "5"]) == 0
    out = capsys.readouterr().out
    assert "median" in out and "backend ort" in out and "untuned" in out


def test_compiled_library_reloads_and_matches(model_path, tmp_path):
    import tvm
    from tvm import relax
    lib = tmp_path / "tiny.so"
    assert cli.main(["compile", str(model_path), "--target", "x86", "-o", str(lib)]) == 0
    m = onnx.load(model_path)
    feeds = random_inputs(m)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(feeds["x"])).numpy()
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # released on close: nothing listens there


@pytest.mark.parametrize("argv, message", [
    (["bench", "{m}", "--target", "nope"], "unknown target 'nope'"),
    (["compile", "{m}", "--target", "nope", "-o", "{t}/x.so"], "unknown target 'nope'"),
    (["bench", "{m}", "--backend", "tvm", "--rpc-tracker", "localhost"], "malformed tracker address"),
    (["bench", "{m}", "--backend", "tvm", "--rpc-tracker", "127.0.0.1:notaport"], "malformed tracker address"),
    (["bench", "{m}", "--backend", "tvm", "--rpc-tracker", "127.0.0.1:{closed}", "--rpc-key", "k"],
     "cannot reach RPC tracker"),
    (["bench", "{bad}", "--backend", "tvm"], "TVM cannot import this model"),
    (["compile", "{bad}", "-o", "{t}/x.so"], "TVM cannot import this model"),
    (["bench", "{t}/missing.onnx"], "no such file"),
    (["bench", "{m}", "--target", "arm-a72", "--backend", "ort"], "ort backend measures this host"),
    (["bench", "{m}", "--target", "arm-a72", "--backend", "tvm"], "cannot run on this host"),
    (["bench", "{m}", "--tune-trials", "-1"], "--tune-trials must be >= 0"),
    (["bench", "{m}", "--target", "arm-a72", "--backend", "tvm", "--tune-trials", "4"], "cannot tune here"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, model_path, tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    onnx.save(unsupported_model(), bad)
    fill = {"m": str(model_path), "t": str(tmp_path), "bad": str(bad), "closed": str(_closed_port())}
    assert cli.main([a.format(**fill) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.startswith("graphprune: error: ") and err.count("\n") == 1


def test_api_rejects_unknown_backend():
    with pytest.raises(GraphpruneError, match="unknown backend"):
        measure_latency(tiny_cnn(), backend="tensorrt")


def test_isa_the_host_lacks_is_refused_not_crashed(model_path, capsys):
    """AVX-512 code on a CPU without it would die with SIGILL; the check must refuse it first."""
    import tvm
    from tvm.target import codegen
    host = codegen.llvm_get_cpu_features(tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()}))
    if "avx512f" in host:
        pytest.skip("this host has AVX-512")
    assert cli.main(["bench", str(model_path), "--target", "x86-avx512", "--backend", "tvm"]) == 2
    assert "uses CPU features this host lacks (avx512" in capsys.readouterr().err
