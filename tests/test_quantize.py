"""Quantization passes (passes/quantize_int8.py, passes/float16.py) on small built models:
standard QDQ output, the quantization arithmetic, mixed precision, inputs untouched, errors."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphprune.errors import GraphpruneError
from graphprune.passes import Float16Pass, Pipeline, QuantizeInt8Pass
from graphprune.quant import graph_precision, group_precision, precision_of, quantizable_nodes
from graphprune.metadata import get_json
from graphprune.quant.calibration import ArrayReader
from graphprune.quant.precision import PRECISION_KEY
from graphprune.quant.check import compare

RNG = np.random.default_rng(0)


def _w(*shape, rng=None):
    return ((rng or RNG).standard_normal(shape) * 0.3).astype(np.float32)


def small_cnn(batch="N", bn=False, rng=None):
    """conv1 -> relu -> conv2 (-> BN) -> relu -> GAP -> flatten -> fc, named nodes. Weights from
    `rng` (default: this module's generator, so they depend on which tests ran before)."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["a"], ["ar"], name="relu1"),
             helper.make_node("Conv", ["ar", "w2", "b2"], ["b"], pads=[1, 1, 1, 1], name="conv2")]
    inits = {"w1": _w(8, 3, 3, 3, rng=rng), "b1": _w(8, rng=rng), "w2": _w(16, 8, 3, 3, rng=rng), "b2": _w(16, rng=rng),
             "fc": _w(5, 16, rng=rng), "fcb": _w(5, rng=rng)}
    last = "b"
    if bn:
        nodes.append(helper.make_node("BatchNormalization", ["b", "g", "beta", "mu", "var"], ["bn"], name="bn2"))
        inits.update(g=np.abs(_w(16)) + 0.5, beta=_w(16), mu=_w(16), var=np.abs(_w(16)) + 0.5)
        last = "bn"
    nodes += [helper.make_node("Relu", [last], ["br"], name="relu2"),
              helper.make_node("GlobalAveragePool", ["br"], ["g2"], name="gap"),
              helper.make_node("Flatten", ["g2"], ["f"], name="flatten"),
              helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], transB=1, name="fc")]
    g = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 5])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def data(n=32, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)


def _inits(m):
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def _weight_dq(m, node_name):
    """(int weights, scale, zero point) of the DequantizeLinear feeding `node_name`'s weight."""
    node = next(n for n in m.graph.node if n.name == node_name)
    dq = next(n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == node.input[1])
    inits = _inits(m)
    return tuple(inits[i] for i in dq.input)


def test_int8_pass_writes_a_standard_qdq_model():
    m = small_cnn()
    before = m.SerializeToString()
    q = QuantizeInt8Pass(data(), per_channel=True).run(m)
    assert m.SerializeToString() == before            # input untouched
    onnx.checker.check_model(q, full_check=True)
    ops = [n.op_type for n in q.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert {n.domain for n in q.graph.node} == {""}   # standard ops only
    assert [o.domain for o in q.opset_import] == [""]  # no leftover onnxruntime domains
    assert graph_precision(q) == {"conv1": "int8", "conv2": "int8", "fc": "int8"}
    assert precision_of(q) == graph_precision(q)
    for name, out_ch in (("conv1", 8), ("conv2", 16)):
        wq, scale, zp = _weight_dq(q, name)
        assert wq.dtype == np.int8 and scale.shape == zp.shape == (out_ch,)   # per output channel
    check = compare(m, q, {"x": data()})
    assert check.passed and check.outputs[0].max_rel < 0.05 and check.outputs[0].top1_agreement >= 0.9


def test_symmetric_per_channel_scales_are_max_abs_over_127():
    m = small_cnn()
    q = QuantizeInt8Pass(data(), per_channel=True, preprocess=False).run(m)
    w1 = _inits(m)["w1"]
    wq, scale, zp = _weight_dq(q, "conv1")
    np.testing.assert_allclose(scale, np.abs(w1).reshape(8, -1).max(1) / 127, rtol=1e-6)
    assert not zp.any()
    np.testing.assert_array_equal(wq, np.clip(np.round(w1 / scale[:, None, None, None]), -127, 127).astype(np.int8))


def test_per_tensor_and_activation_types():
    m = small_cnn()
    asym = QuantizeInt8Pass(data(), per_channel=False).run(m)
    wq, scale, _ = _weight_dq(asym, "conv2")
    assert scale.shape == ()                                         # one scale per tensor
    np.testing.assert_allclose(scale, np.abs(_inits(m)["w2"]).max() / 127, rtol=1e-6)
    act = next(n for n in asym.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    assert _inits(asym)[act.input[2]].dtype == np.uint8               # asymmetric activations: uint8
    sym = QuantizeInt8Pass(data(), symmetric_activations=True).run(m)
    act = next(n for n in sym.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    zp = _inits(sym)[act.input[2]]
    assert zp.dtype == np.int8 and zp == 0                            # symmetric: int8, zero point 0


def test_mixed_precision_keeps_excluded_nodes_float():
    m = small_cnn()
    q = QuantizeInt8Pass(data(), precision={"conv2": "fp32", "fc": "int8"}).run(m)
    assert graph_precision(q) == {"conv1": "int8", "conv2": "fp32", "fc": "int8"}
    conv2 = next(n for n in q.graph.node if n.name == "conv2")
    w2 = _inits(q)[conv2.input[1]]
    assert w2.dtype == np.float32
    np.testing.assert_array_equal(w2, _inits(m)["w2"])                # weights kept bit for bit
    assert compare(m, q, {"x": data()}).passed
    same = QuantizeInt8Pass(data(), exclude=["conv2"]).run(m)
    assert graph_precision(same) == graph_precision(q)


def test_preprocessing_folds_batchnorm_and_keeps_names():
    m = small_cnn(bn=True)
    q = QuantizeInt8Pass(data()).run(m)
    assert "BatchNormalization" not in {n.op_type for n in q.graph.node}
    assert set(quantizable_nodes(q)) == {"conv1", "conv2", "fc"}
    assert compare(m, q, {"x": data()}).passed
    with pytest.raises(GraphpruneError, match="'bn2' is fused"):
        QuantizeInt8Pass(data(), exclude=["bn2"]).run(m)


def test_static_batch_model_is_calibrated_one_sample_at_a_time():
    m = small_cnn(batch=1)
    reader = ArrayReader(m, {"x": data(5)}, batch_size=32)
    assert [b["x"].shape[0] for b in iter(reader.get_next, None)] == [1] * 5
    q = QuantizeInt8Pass(data(8)).run(m)
    assert compare(m, q, {"x": data(8)}).passed


def _input_scale(q):
    act = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    return float(_inits(q)[act.input[1]])


def test_calibration_methods_choose_the_activation_ranges():
    """MinMax takes the full observed range (0 included: uint8 covers [min(x, 0), max(x, 0)]);
    percentile clips a lone outlier, so the common values get finer steps;
    each output is a standard QDQ model that runs and records its method."""
    m = small_cnn()
    x = data(64)
    x[0, 0, 0, 0] = 200.0                                           # one outlier among 12288 values
    minmax = QuantizeInt8Pass(x, per_channel=True).run(m)
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    np.testing.assert_allclose(_input_scale(minmax), (hi - lo) / 255, rtol=1e-6)
    typical = float(np.abs(x).reshape(-1)[1:].max())                 # the largest value but the outlier
    for method in ("percentile=99.9",):
        q = QuantizeInt8Pass(x, per_channel=True, calibration=method).run(m)
        onnx.checker.check_model(q, full_check=True)
        assert _input_scale(q) < 2 * typical / 255 < _input_scale(minmax), method
        assert compare(m, q, {"x": data()}).passed
        assert get_json(q, PRECISION_KEY)["calibration"] == \
            "Percentile 99.9"
    assert get_json(minmax, PRECISION_KEY)["calibration"] == "MinMax"
    assert QuantizeInt8Pass(x, calibration="percentile").percentile == 99.999   # onnxruntime's default


@pytest.mark.parametrize("text, match", [
    ("kl", r"unknown calibration method 'kl'; choose from minmax, percentile \(percentile=P"),
    ("entropy", "unknown calibration method 'entropy'"),
    ("percentile=0", r"must be a number in \(0, 100\], got '0'"),
    ("percentile=nan", "must be a number in"),
    ("minmax=3", "calibration method minmax takes no value"),
])
def test_bad_calibration_methods_are_one_line_errors(text, match):
    with pytest.raises(GraphpruneError, match=match):
        QuantizeInt8Pass(data(), calibration=text)


@pytest.mark.parametrize("kwargs, match", [
    ({"exclude": ["conv3"]}, r"no node named 'conv3'.*did you mean 'conv2', 'conv1'"),
    ({"precision": {"conv1": "int4"}}, r"unknown precision for node 'conv1' 'int4'; choose from fp32, int8"),
    ({"precision": {"conv9": "int8"}}, r"no node named 'conv9'"),
])
def test_bad_precision_maps_are_one_line_errors(kwargs, match):
    with pytest.raises(GraphpruneError, match=match):
        QuantizeInt8Pass(data(), **kwargs).run(small_cnn())


@pytest.mark.parametrize("calib, match", [
    (None, "needs calibration data"),
    (np.zeros((4, 3, 9, 9), np.float32), r"has shape \[4, 3, 9, 9\]; the model expects \['N', 3, 8, 8\]"),
    ({"z": data(4)}, r"calibration data names \['z'\], the model's inputs are \['x'\]"),
    (np.zeros((0, 3, 8, 8), np.float32), "is empty"),
    (np.full((2, 3, 8, 8), np.nan, np.float32), "contains NaN or infinity"),
])
def test_bad_calibration_data_is_refused(calib, match):
    with pytest.raises(GraphpruneError, match=match):
        QuantizeInt8Pass(calib).run(small_cnn())


def test_an_already_quantized_model_is_refused():
    q = QuantizeInt8Pass(data()).run(small_cnn())
    for p in (QuantizeInt8Pass(data()), Float16Pass()):
        with pytest.raises(GraphpruneError, match=r"already quantized \(it has (Dequantize|Quantize)Linear\)"):
            p.run(q)


def test_float16_pass_keeps_float32_io_and_honours_exclusions():
    m = small_cnn()
    before = m.SerializeToString()
    h = Float16Pass(precision={"fc": "fp32"}).run(m)
    assert m.SerializeToString() == before
    onnx.checker.check_model(h)
    assert h.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert h.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert graph_precision(h) == {"conv1": "fp16", "conv2": "fp16", "fc": "fp32"}
    inits = _inits(h)
    np.testing.assert_array_equal(inits["w1"], _inits(m)["w1"].astype(np.float16))
    check = compare(m, h, {"x": data(16)})
    assert check.outputs[0].max_rel < 5e-3
    with pytest.raises(GraphpruneError, match="unknown precision"):
        Float16Pass(precision={"fc": "int8"}).run(m)


def test_passes_compose_in_a_pipeline_and_group_precision_maps_producers():
    import graphprune as gp

    m = small_cnn()
    an = gp.analyse(gp.load(m))
    g2 = next(g for g in an.groups if "conv2" in g.producers)
    assert group_precision(an, {g2.id: "fp32"}) == {"conv2": "fp32"}
    with pytest.raises(GraphpruneError, match="no channel group 99"):
        group_precision(an, {99: "fp32"})
    q = Pipeline([QuantizeInt8Pass(data(), precision=group_precision(an, {g2.id: "float32"}))]).run(m)
    assert graph_precision(q)["conv2"] == "fp32"
