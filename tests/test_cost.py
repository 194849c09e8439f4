"""graphprune.cost: model size at stored precision, the documented energy model (exact
arithmetic on small built models), and the RAPL reader against a fake sysfs tree."""
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphprune.cost import HOROWITZ_45NM, estimate_energy, layer_costs, measure_energy, model_size, rapl_zones
from graphprune.cost.rapl import rapl_unavailable
from graphprune.cost.size import tensor_bytes
from graphprune.passes import Float16Pass, QuantizeInt8Pass
from test_quantize import data, small_cnn

# small_cnn at x (1, 3, 8, 8): conv1 3->8 3x3 pad 1, conv2 8->16 3x3 pad 1, fc 16->5
MACS = {"conv1": 8 * 64 * 27, "conv2": 16 * 64 * 72, "fc": 5 * 16}
WEIGHTS = {"conv1": 8 * 27 + 8, "conv2": 16 * 72 + 16, "fc": 5 * 16 + 5}          # elements incl. bias
ACTS = {"conv1": 3 * 64 + 8 * 64, "conv2": 8 * 64 + 16 * 64, "fc": 16 + 5}        # input + output elements


def test_fp32_size_is_four_bytes_per_parameter():
    m = small_cnn()
    s = model_size(m)
    assert s.bytes == 4 * sum(WEIGHTS.values()) == s.by_dtype["float"]
    assert s.file_bytes == m.ByteSize()


def test_int8_size_counts_int8_weights_scales_zero_points_and_int32_biases():
    q = QuantizeInt8Pass(data(), per_channel=True).run(small_cnn())
    s = model_size(q)
    expect = sum(tensor_bytes(t) for t in q.graph.initializer)
    assert s.bytes == expect
    assert s.by_dtype["int8"] >= 8 * 27 + 16 * 72 + 80            # every weight 1 byte
    assert s.by_dtype["int32"] == 2 * 4 * (8 + 16 + 5)             # biases and their per-channel zero points
    assert s.bytes < 0.45 * model_size(small_cnn()).bytes
    assert tensor_bytes(helper.make_tensor("p", TensorProto.INT4, [3], [1, 2, 3])) == 2   # packed nibbles
    assert model_size(Float16Pass().run(small_cnn())).by_dtype["float16"] == 2 * sum(WEIGHTS.values())


def test_fp32_energy_is_the_documented_formula():
    est = estimate_energy(small_cnn())
    t = HOROWITZ_45NM
    macs = sum(MACS.values())
    assert est.macs == {"fp32": macs}
    assert est.compute_uj == pytest.approx(macs * (3.7 + 0.9) * 1e-6, rel=1e-12)
    assert est.weights_uj == pytest.approx(sum(WEIGHTS.values()) * t.dram_word * 1e-6, rel=1e-12)
    assert est.activations_uj == pytest.approx(sum(ACTS.values()) * t.sram_word * 1e-6, rel=1e-12)
    assert est.label == "estimated" and "estimated" in est.summary()
    assert [(lc.node, lc.macs) for lc in layer_costs(small_cnn())] == list(MACS.items())


def test_int8_and_mixed_energy_charge_each_layer_at_its_precision():
    m = small_cnn()
    q = QuantizeInt8Pass(data(), precision={"conv2": "fp32"}).run(m)
    costs = {lc.node: lc for lc in layer_costs(q)}
    assert {k: (v.precision, v.macs) for k, v in costs.items()} == {
        "conv1": ("int8", MACS["conv1"]), "conv2": ("fp32", MACS["conv2"]), "fc": ("int8", MACS["fc"])}
    assert costs["conv1"].activation_bytes == ACTS["conv1"]          # 1 byte per int8 activation
    assert costs["conv2"].weight_bytes == 4 * WEIGHTS["conv2"]       # float weights untouched
    inits = {t.name: t for t in q.graph.initializer}
    conv1 = next(n for n in q.graph.node if n.name == "conv1")
    dq = {n.output[0]: n for n in q.graph.node if n.op_type == "DequantizeLinear"}
    assert costs["conv1"].weight_bytes == sum(tensor_bytes(inits[i]) for x in conv1.input[1:] for i in dq[x].input)
    est = estimate_energy(q)
    assert est.compute_uj == pytest.approx(((MACS["conv1"] + MACS["fc"]) * 0.3 + MACS["conv2"] * 4.6) * 1e-6)
    assert estimate_energy(QuantizeInt8Pass(data()).run(m)).total_uj < est.total_uj < estimate_energy(m).total_uj


def test_a_shared_weight_is_fetched_once():
    w = numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="c1"),
             helper.make_node("Conv", ["a", "w"], ["y"], name="c2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    costs = layer_costs(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))
    assert [lc.weight_bytes for lc in costs] == [64, 0] and [lc.macs for lc in costs] == [64, 64]


def _zone(root, name, uj, max_uj=1000):
    d = root / name
    d.mkdir(parents=True)
    (d / "name").write_text("package-0\n" if name.count(":") == 1 else "core\n")
    (d / "energy_uj").write_text(f"{uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return d


def test_rapl_reader_on_a_fake_sysfs_tree_handles_wraparound(tmp_path):
    pkg = _zone(tmp_path, "intel-rapl:0", 900)
    _zone(tmp_path, "intel-rapl:0:0", 5)                 # subzone: inside the package's count
    zones = rapl_zones(tmp_path)
    assert [(z.name, z.max_range_uj) for z in zones] == [("package-0", 1000)]
    counter = iter([950, 1000, 0, 150])                  # wraps once: 900 -> 1000 -> 0 -> 150 = 250 uJ

    def work():
        (pkg / "energy_uj").write_text(str(next(counter)))

    m = measure_energy(work, repeats=4, root=tmp_path)
    assert m.joules == pytest.approx((1000 - 900 + 150) * 1e-6) and m.repeats == 4
    assert m.per_call_uj == pytest.approx(62.5) and "measured" in m.summary()
    assert rapl_unavailable(tmp_path) is None


def test_rapl_absent_or_unreadable_says_why(tmp_path):
    assert "no " in rapl_unavailable(tmp_path / "missing")
    assert measure_energy(lambda: None, root=tmp_path / "missing") is None
    assert "no RAPL zone" in rapl_unavailable(tmp_path)
    d = _zone(tmp_path, "intel-rapl:0", 1)
    (d / "energy_uj").unlink()
    (d / "energy_uj").mkdir()                            # reading fails like a root-only file does
    assert rapl_zones(tmp_path) == [] and "not readable" in rapl_unavailable(tmp_path)


def test_this_machine_either_reads_rapl_or_says_why():
    reason = rapl_unavailable()
    assert (reason is None) == bool(rapl_zones())
    assert math.isfinite(estimate_energy(onnx.load("examples/fashion_mnist_vgg.onnx")).total_uj)


@pytest.mark.parametrize("per_channel", [True, False])
def test_projected_int8_costs_equal_what_the_quantizer_writes(per_channel):
    from graphprune.cost import projected_costs, projected_size

    m = small_cnn()
    mixed = {"conv1": "int8", "conv2": "fp32", "fc": "int8"}
    q = QuantizeInt8Pass(data(), per_channel=per_channel, precision=mixed).run(m)
    real = [(lc.node, lc.precision, lc.weight_bytes, lc.activation_bytes) for lc in layer_costs(q)]
    projected = [(lc.node, lc.precision, lc.weight_bytes, lc.activation_bytes)
                 for lc in projected_costs(m, mixed, per_channel=per_channel)]
    assert projected == real
    assert estimate_energy(m, precision=mixed, per_channel=per_channel).total_uj == \
        pytest.approx(estimate_energy(q).total_uj, rel=1e-12)
    q_weights = sum(lc.weight_bytes for lc in layer_costs(q))
    # the QDQ model also stores activation scales/zero points, which the projection leaves out
    assert projected_size(m, mixed, per_channel) == q_weights
    assert model_size(q).bytes - q_weights == 5 * 5      # x, ar, br, g2, y: fp32 scale + uint8 zero point
    h = Float16Pass().run(m)
    assert projected_size(m, {n: "fp16" for n in MACS}) == model_size(h).bytes
    with pytest.raises(Exception, match="no MAC layer named 'relu1'"):
        projected_costs(m, {"relu1": "int8"})


def test_projection_folds_batchnorm_as_preprocessing_does():
    from graphprune.cost import projected_costs, projected_size

    m = small_cnn(bn=True)                                   # conv2 (with bias) -> BN
    del m.graph.node[2].input[2]                              # now a bias-less conv2 -> BN
    del m.graph.initializer[[t.name for t in m.graph.initializer].index("b2")]
    prec = {"conv1": "int8", "conv2": "int8", "fc": "fp32"}
    q = QuantizeInt8Pass(data(), precision=prec).run(m)
    assert "BatchNormalization" not in {n.op_type for n in q.graph.node}
    cost = lambda cs: [(lc.node, lc.precision, lc.weight_bytes, lc.activation_bytes) for lc in cs]  # noqa: E731
    assert cost(projected_costs(m, prec)) == cost(layer_costs(q))
    activation_qparams = 5 * model_size(q).by_dtype["uint8"]    # fp32 scale + uint8 zero point each
    assert projected_size(m, prec) == model_size(q).bytes - activation_qparams
