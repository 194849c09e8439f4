"""graphprune.recovery.recalibrate_bn: exact population statistics, upstream BNs first."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from _recovery_models import bn_convnet, torch_forward
from graphprune.errors import GraphpruneError
from graphprune.recovery import recalibrate_bn
from graphprune.runtime import run


def _x(n=40, seed=1):
    return np.random.default_rng(seed).normal(0.5, 2.0, (n, 3, 8, 8)).astype(np.float32)


def _inits(m):
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def test_wrong_stats_become_the_datas_and_outputs_match_a_torch_reference():
    model, x = bn_convnet(), _x()
    before = model.SerializeToString()
    out, rep = recalibrate_bn(model, x, batch_size=16)   # 40 samples: batches of 16, 16, 8
    assert model.SerializeToString() == before            # the input model is untouched
    onnx.checker.check_model(out)
    assert rep.layers == 2 and rep.passes == 2 and rep.samples == 40 and "2 BatchNormalization" in rep.text
    ref_y, ref_stats = torch_forward(model, x, recompute=True)
    got = _inits(out)
    bn = {n.name: n for n in out.graph.node if n.op_type == "BatchNormalization"}
    for name, (mean, var) in ref_stats.items():
        np.testing.assert_allclose(got[bn[name].input[3]], mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got[bn[name].input[4]], var, rtol=1e-5, atol=1e-5)
    # the stats were wrong before: the raw model is far from the reference, the recalibrated one on it
    y_raw, y_cal = run(model, {"x": x})[0], run(out, {"x": x})[0]
    assert np.abs(y_raw - ref_y).max() > 0.1
    np.testing.assert_allclose(y_cal, ref_y, rtol=1e-4, atol=1e-4)
    # the first BN's mean was one initializer with the first Conv's bias: the bias keeps its zeros
    assert bn["bn1"].input[3] != "zeros4" and np.all(got["zeros4"] == 0)
    conv1 = next(n for n in out.graph.node if n.name == "conv1")
    assert conv1.input[2] == "zeros4"


def test_batch_size_does_not_change_the_statistics():
    model, x = bn_convnet(shared_zero=False), _x(30)
    a, _ = recalibrate_bn(model, x, batch_size=7)
    b, _ = recalibrate_bn(model, x, batch_size=30)
    for k, v in _inits(a).items():
        np.testing.assert_allclose(v, _inits(b)[k], rtol=1e-6, atol=1e-6)
    # max_samples: the first samples only
    c, rep = recalibrate_bn(model, x, max_samples=10)
    _, ref = torch_forward(model, x[:10], recompute=True)
    assert rep.samples == 10
    np.testing.assert_allclose(_inits(c)["m1"], ref["bn1"][0], rtol=1e-5, atol=1e-5)


def test_a_model_without_batchnorm_is_a_no_op_that_says_so():
    model = bn_convnet()
    keep = [n for n in model.graph.node if n.op_type != "BatchNormalization"]
    for n in keep:   # BN "folded": the following node reads the conv output directly
        for i, t in enumerate(n.input):
            n.input[i] = {"n1": "c1", "n2": "c2"}.get(t, t)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    out, rep = recalibrate_bn(model, _x())
    assert rep.layers == 0 and rep.passes == 0 and "no BatchNormalization" in rep.text
    assert out.SerializeToString() == model.SerializeToString()


def test_fixed_batch_models_run_at_their_batch_and_bad_data_is_one_line():
    model, x = bn_convnet(batch=4, shared_zero=False), _x(10)
    out, rep = recalibrate_bn(model, x)
    assert rep.samples == 8                                # 10 = 2 x 4 + 2 left out, never padded
    _, ref = torch_forward(model, x[:8], recompute=True)
    np.testing.assert_allclose(_inits(out)["v2"], ref["bn2"][1], rtol=1e-5, atol=1e-5)
    with pytest.raises(GraphpruneError, match="fixed at 4, only 3 samples"):
        recalibrate_bn(model, x[:3])
    with pytest.raises(GraphpruneError, match="does not run through the model"):
        recalibrate_bn(bn_convnet(), np.zeros((4, 5, 8, 8), np.float32))


def test_statistics_read_through_an_identity_or_a_constant_get_their_own_initializer():
    """torch.onnx.export puts Identity nodes in front of initializers; Paddle exports Constant nodes."""
    model, x = bn_convnet(shared_zero=False), _x()
    g = model.graph
    v2 = next(t for t in g.initializer if t.name == "v2")
    g.node.insert(0, onnx.helper.make_node("Identity", ["v2"], ["v2_alias"], name="alias"))
    g.node.insert(0, onnx.helper.make_node("Constant", [], ["m2_const"], name="m2c",
                                           value=numpy_helper.from_array(numpy_helper.to_array(
                                               next(t for t in g.initializer if t.name == "m2")), "m2_const")))
    bn2 = next(n for n in g.node if n.name == "bn2")
    bn2.input[3], bn2.input[4] = "m2_const", "v2_alias"
    onnx.checker.check_model(model)
    out, rep = recalibrate_bn(model, x)
    _, ref = torch_forward(bn_convnet(shared_zero=False), x, recompute=True)
    got, bn = _inits(out), next(n for n in out.graph.node if n.name == "bn2")
    assert bn.input[3] not in ("m2_const", "m2") and bn.input[4] not in ("v2_alias", "v2")
    np.testing.assert_allclose(got[bn.input[3]], ref["bn2"][0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[bn.input[4]], ref["bn2"][1], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got["v2"], numpy_helper.to_array(v2))      # the aliased initializer is untouched
