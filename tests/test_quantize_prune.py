"""Pruning a model quantized by QuantizeInt8Pass with mixed precision: the result is still a
QDQ model with the same per-layer precision, onnxruntime runs it, and its outputs match the
zeroed reference (the quantized model with the removed channels' weights set to zero)."""
import numpy as np
import onnx
from onnx import numpy_helper

import graphprune as gp
from graphprune.passes import QuantizeInt8Pass, ZeroRemovedChannelsPass
from graphprune.quant import graph_precision, precision_of
from graphprune.runtime import run
from test_quantize import data, small_cnn


def _wider_cnn():
    """small_cnn plus a third conv, so one int8 group and one fp32 group are both prunable."""
    # fixed weights: with others, a float-order difference can flip one activation's int8
    # rounding, which verify (rightly, at 1e-4 per tensor) does not call exact (docs/verify.md)
    m = small_cnn(rng=np.random.default_rng(7))
    g = m.graph
    rng = np.random.default_rng(3)
    relu2 = next(n for n in g.node if n.name == "relu2")
    relu2.output[0] = "br0"
    at = list(g.node).index(relu2) + 1
    g.node.insert(at, onnx.helper.make_node("Conv", ["br0", "w3", "b3"], ["c3"], pads=[1, 1, 1, 1], name="conv3"))
    g.node.insert(at + 1, onnx.helper.make_node("Relu", ["c3"], ["br"], name="relu3"))
    g.initializer.extend([numpy_helper.from_array((rng.standard_normal((16, 16, 3, 3)) * 0.2).astype(np.float32), "w3"),
                          numpy_helper.from_array((rng.standard_normal(16) * 0.2).astype(np.float32), "b3")])
    onnx.checker.check_model(m)
    return m


def test_pruning_a_mixed_precision_qdq_model_keeps_it_qdq_and_exact():
    q = QuantizeInt8Pass(data(), per_channel=True, precision={"conv2": "fp32"}).run(_wider_cnn())
    precision = graph_precision(q)
    assert precision == {"conv1": "int8", "conv2": "fp32", "conv3": "int8", "fc": "int8"}

    model = gp.load(q)
    an = gp.analyse(model)
    prunable = {p for g in an.groups if g.prunable for p in g.producers}
    assert {"conv1", "conv2", "conv3"} <= prunable             # int8 and fp32 layers alike
    plan = gp.choose(an, ratio=0.5)
    pruned = gp.prune(model, plan)
    onnx.checker.check_model(pruned)
    assert graph_precision(pruned) == precision                 # still QDQ where it was, float where not
    assert precision_of(pruned) == precision                    # the recorded map travels with the model
    inits = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    dq = {n.output[0]: n for n in pruned.graph.node if n.op_type == "DequantizeLinear"}
    convs = {n.name: n for n in pruned.graph.node if n.op_type == "Conv"}
    for name in ("conv1", "conv3"):
        wq, scale, zp = (inits[i] for i in dq[convs[name].input[1]].input)
        assert wq.dtype == np.int8 and scale.shape == zp.shape == (wq.shape[0],)
    assert [convs[n] for n in ("conv1", "conv2", "conv3")] and inits[convs["conv2"].input[1]].dtype == np.float32
    assert [inits[dq[convs[n].input[1]].input[0]].shape[0] for n in ("conv1", "conv3")] == [4, 8]
    assert inits[convs["conv2"].input[1]].shape[0] == 8

    x = data(16, seed=11)
    reference = ZeroRemovedChannelsPass(plan).run(model)
    got, want = run(pruned, {"x": x})[0], run(reference, {"x": x})[0]
    # integer weights and the same activation scales: only float summation order differs
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    report = gp.verify(model, plan, pruned)
    assert report.passed and report.exact, report.summary()
