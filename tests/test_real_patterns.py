"""Patterns of real exports that hand-built graphs reproduce (issue 11): a CRNN's Reshape
into an unrolled RNN, tf2onnx's Squeeze-as-Reshape, RNN nodes after a CNN, reductions,
and QDQ-quantized models. Each: prune, verify exact, run in onnxruntime, shapes unchanged."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import graphprune as gp
import onnx_builders as ob
from graphprune.runtime import run


def _prune_exact(m, ratio=0.5, shapes=None, **kw):
    model = gp.load(m)
    an = gp.analyse(model, **{k: v for k, v in kw.items() if k == "allow_inexact"})
    plan = gp.choose(an, ratio=ratio)
    pruned = gp.prune(model, plan)
    report = gp.verify(model, plan, pruned, input_shapes=shapes)
    assert report.passed and report.shapes_equal, report.summary()
    return model, an, plan, pruned, report


def _group(an, producer):
    return next(g for g in an.groups if producer in g.producers)


def _inits(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


# ------------------------------------------------------------------ CRNN neck (item 1)
def test_crnn_reshape_count_rewritten_and_shared_weight_stays_one():
    model, an, plan, pruned, report = _prune_exact(ob.crnn_unrolled(steps=4))
    assert report.exact
    conv2 = next(n.name for n in model.graph.node if n.op_type == "Conv" and n.input[1] == "w2")
    assert plan.kept(_group(an, conv2).id) == 3   # 6 -> 3 channels, 12 -> 6 features
    rng = np.random.default_rng(1)
    for batch in (1, 3):  # the dynamic batch piece of the target keeps working
        x = rng.standard_normal((batch, 3, 4, 16)).astype(np.float32)
        assert run(pruned, {"x": x})[0].shape == (4, batch, 10)
    inits = _inits(pruned)
    from_w_ih = [k for k in inits if k.startswith("w_ih")]
    assert len(from_w_ih) == 1 and inits[from_w_ih[0]].shape == (10, 6)  # one weight, not one per step
    assert len([k for k in inits if k.startswith("b_ih")]) == 1
    assert gp.count(pruned).params < gp.count(model).params


def test_crnn_reshape_count_that_cannot_be_rewritten_is_frozen():
    model = gp.load(ob.crnn_unrolled(steps=2, feature_piece="input"))
    an = gp.analyse(model)
    conv2 = next(n.name for n in model.graph.node if n.op_type == "Conv" and n.input[1] == "w2")
    g = _group(an, conv2)
    assert not g.prunable and "cannot be rewritten" in g.reason


# ------------------------------------------------------------------ tf2onnx reshapes (item 2)
def test_tf2onnx_squeeze_and_expand_as_reshape_keep_the_channels():
    model, an, plan, pruned, report = _prune_exact(ob.tf_squeeze_reshapes())
    assert report.exact
    g = _group(an, next(n.name for n in model.graph.node if n.op_type == "Conv"))
    assert g.prunable and plan.kept(g.id) == 4
    targets = {n.input[1] for n in pruned.graph.node if n.op_type == "Reshape"}
    literals = sorted(tuple(v.tolist()) for k, v in _inits(pruned).items() if k in targets)
    assert literals == [(-1, 1, 15, 4), (-1, 4, 1, 15), (-1, 15, 4)]
    x = np.random.default_rng(0).standard_normal((2, 1, 1, 64)).astype(np.float32)
    assert run(pruned, {"x": x})[0].shape == run(model, {"x": x})[0].shape


# ------------------------------------------------------------------ RNN nodes (item 3)
@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_rnn_input_features_sliced(op, direction):
    model, an, plan, pruned, report = _prune_exact(ob.cnn_rnn(op, direction))
    assert report.exact and report.max_abs_diff < 1e-5
    g = _group(an, next(n.name for n in model.graph.node if n.op_type == "Conv"))
    assert g.prunable and plan.kept(g.id) == 4
    rnn = next(n for n in pruned.graph.node if n.op_type == op)
    assert _inits(pruned)[rnn.input[1]].shape[-1] == 4


# ------------------------------------------------------------------ reductions (item 4)
@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin", "ReduceL2", "ReduceSum", "ReduceMean", "ReduceL1"])
@pytest.mark.parametrize("keepdims", [1, 0])
def test_spatial_reductions_keep_the_channels(op, keepdims):
    model, an, plan, pruned, report = _prune_exact(ob.reduce_head(op, keepdims=keepdims))
    assert report.exact
    g = _group(an, next(n.name for n in model.graph.node if n.op_type == "Conv"))
    assert plan.kept(g.id) == 4


def test_spatial_reduction_with_opset18_axes_input():
    _, _, _, _, report = _prune_exact(ob.reduce_head("ReduceMax", opset=18))
    assert report.exact


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMean"])
def test_reduction_over_channels_is_frozen_or_inexact(op):
    m = ob.reduce_head(op, axes=(1,))
    model = gp.load(m)
    conv1 = next(n.name for n in model.graph.node if n.op_type == "Conv")
    g = _group(gp.analyse(model), conv1)
    assert not g.prunable and "--allow-inexact" in g.reason
    _, an, plan, _, report = _prune_exact(m, allow_inexact=True)
    assert _group(an, conv1).prunable and not report.exact and plan.inexact()


# ------------------------------------------------------------------ QDQ models (item 5)
def _quantize(tmp_path, fmt):
    ort_q = pytest.importorskip("onnxruntime.quantization")
    src, dst = tmp_path / "float.onnx", tmp_path / "q.onnx"
    onnx.save(ob.qdq_source(), str(src))

    class Reader(ort_q.CalibrationDataReader):
        def __init__(self):
            self.data = iter([{"x": np.random.default_rng(i).standard_normal((1, 3, 8, 8)).astype(np.float32)}
                              for i in range(4)])

        def get_next(self):
            return next(self.data, None)

    ort_q.quantize_static(str(src), str(dst), Reader(), quant_format=fmt, per_channel=True,
                          weight_type=ort_q.QuantType.QInt8, activation_type=ort_q.QuantType.QUInt8)
    return onnx.load(str(dst))


def test_qdq_model_prunes_into_a_qdq_model(tmp_path):
    from onnxruntime.quantization import QuantFormat

    q = _quantize(tmp_path, QuantFormat.QDQ)
    model, an, plan, pruned, report = _prune_exact(q)
    # integer weights; float activations differ only by summation order (fewer channels)
    assert report.exact and report.max_rel_diff < 1e-6
    prunable = [g for g in an.groups if g.prunable]
    assert len(prunable) == 2
    ops = [n.op_type for n in pruned.graph.node]
    assert ops.count("QuantizeLinear") == ops.count("QuantizeLinear") and "DequantizeLinear" in ops
    inits = _inits(pruned)
    dq = {n.output[0]: n for n in pruned.graph.node if n.op_type == "DequantizeLinear"}
    for conv in (n for n in pruned.graph.node if n.op_type == "Conv"):
        wdq = dq[conv.input[1]]   # weights still come out of a DequantizeLinear
        wq, scale, zp = (inits[i] for i in wdq.input)
        assert wq.dtype == np.int8 and scale.shape == zp.shape == (wq.shape[0],)
        assert wq.shape[0] in (4, 8)
        bq = inits[dq[conv.input[2]].input[0]]
        assert bq.dtype == np.int32 and bq.shape == (wq.shape[0],)
    x = np.random.default_rng(5).standard_normal((1, 3, 8, 8)).astype(np.float32)
    assert run(pruned, {"x": x})[0].shape == (1, 5)


def test_operator_oriented_quantization_is_refused(tmp_path):
    from onnxruntime.quantization import QuantFormat

    q = _quantize(tmp_path, QuantFormat.QOperator)
    assert any(n.op_type == "QLinearConv" for n in q.graph.node)
    with pytest.raises(gp.GraphpruneError, match="prune the float model first"):
        gp.analyse(gp.load(q))


def test_operator_oriented_quantization_cli_exit_2(tmp_path):
    import subprocess
    import sys

    from onnxruntime.quantization import QuantFormat

    onnx.save(_quantize(tmp_path, QuantFormat.QOperator), str(tmp_path / "qop.onnx"))
    p = subprocess.run([sys.executable, "-m", "graphprune", "prune", str(tmp_path / "qop.onnx"), "-o",
                        str(tmp_path / "out.onnx"), "--ratio", "0.3"], capture_output=True, text=True)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "QLinearConv" in lines[0] and "float model" in lines[0]
    assert not (tmp_path / "out.onnx").exists()


# ------------------------------------------------------------------ tied weights (item 1)
def test_shared_weight_is_sliced_once():
    m = ob.tied_branches()
    model, an, plan, pruned, report = _prune_exact(m)
    assert report.exact
    ga, gb = (_group(an, n.name) for n in model.graph.node if n.op_type == "Conv" and n.input[1] in ("wa", "wb"))
    assert ga.id == gb.id and ga.prunable  # coupled through the weight they feed
    inits = _inits(pruned)
    tied = [k for k in inits if k.startswith("tied") and not k.startswith("tied_b")]
    assert len(tied) == 1 and inits[tied[0]].shape[1] == plan.kept(ga.id)
    assert gp.count(pruned).params < gp.count(model).params


def test_paddle_flatten_with_runtime_target():
    model, an, plan, pruned, report = _prune_exact(ob.paddle_flatten())
    assert report.exact
    g = _group(an, next(n.name for n in model.graph.node if n.op_type == "Conv"))
    assert g.prunable and plan.kept(g.id) == 4
    x = np.random.default_rng(2).standard_normal((3, 3, 8, 8)).astype(np.float32)
    assert run(pruned, {"x": x})[0].shape == (3, 3)
    fc = next(n for n in pruned.graph.node if n.op_type == "MatMul").input[1]
    assert _inits(pruned)[fc].shape == (4, 3)


def test_expand_literal_channel_count_rewritten_and_tile_passes():
    model, an, plan, pruned, report = _prune_exact(ob.expand_tile())
    assert report.exact
    g = _group(an, next(n.name for n in model.graph.node if n.op_type == "Conv"))
    assert g.prunable and plan.kept(g.id) == 4
    shape = next(n for n in pruned.graph.node if n.op_type == "Expand").input[1]
    assert _inits(pruned)[shape].tolist() == [1, 4, 1, 1]
    x = np.random.default_rng(3).standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert run(pruned, {"x": x})[0].shape == (2, 4, 16, 8)
