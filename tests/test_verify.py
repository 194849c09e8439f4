"""The checks users rely on as proofs (issues 10 and 11): verify fails wrong models at any
output scale and on NaN, a plan prunes the weights of the model it is applied to, prune
never returns a model onnxruntime cannot run, and API/CLI inputs are validated."""
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphprune as gp
import onnx_builders as ob
from graphprune.runtime import run


def _cli(*args):
    r = subprocess.run([sys.executable, "-m", "graphprune", *map(str, args)], capture_output=True, text=True)
    return r.returncode, r.stdout, r.stderr


def _inits(m):
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def _set(m, name, value):
    t = next(t for t in m.graph.initializer if t.name == name)
    t.CopyFrom(numpy_helper.from_array(np.asarray(value, dtype=numpy_helper.to_array(t).dtype), name))


def _copy(m):
    c = onnx.ModelProto()
    c.CopyFrom(m)
    return c


# ----------------------------------------------------------------- B: verify is a proof
@pytest.fixture
def tiny_mobilenet(exported):
    """MobileNetV3-like with a classifier scaled by 1e-10: outputs around 1e-11, as
    torchvision's mobilenet_v2 with random weights gives."""
    model = gp.load(exported("mobilenetv3", "ts"))
    last = [n for n in model.graph.node if n.op_type == "Gemm"][-1]
    for name in last.input[1:]:
        _set(model, name, _inits(model)[name] * 1e-10)
    model = gp.load(model)
    plan = gp.choose(gp.analyse(model), ratio=0.5)
    return model, plan, gp.prune(model, plan), last


def test_exact_prune_of_tiny_outputs_passes(tiny_mobilenet):
    model, plan, pruned, _ = tiny_mobilenet
    x = {"x": np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)}
    assert 0 < np.abs(run(model, x)[0]).max() < 1e-8
    report = gp.verify(model, plan, pruned)
    assert report.passed and report.exact, report.summary()
    assert report.tensors_compared > 20  # intermediates, not only the output
    assert report.max_rel_diff < 1e-4


def test_sabotaged_classifier_fails_at_tiny_scale(tiny_mobilenet):
    model, plan, pruned, last = tiny_mobilenet
    bad = _copy(pruned)
    w = next(n for n in bad.graph.node if n.name == last.name).input[1]
    _set(bad, w, _inits(bad)[w] * -5)
    report = gp.verify(model, plan, bad)
    assert not report.passed, report.summary()
    assert "FAILED" in report.summary()
    assert any(last.output[0] in f for f in report.failed)


def test_nan_in_pruned_model_fails(tiny_mobilenet):
    model, plan, pruned, _ = tiny_mobilenet
    for all_nan in (False, True):
        bad = _copy(pruned)
        conv = next(n for n in bad.graph.node if n.op_type == "Conv")
        w = _inits(bad)[conv.input[1]].copy()
        if all_nan:
            w[:] = np.nan
        else:
            w.flat[0] = np.nan
        _set(bad, conv.input[1], w)
        report = gp.verify(model, plan, bad)
        assert not report.passed and any("NaN/Inf" in f for f in report.failed), report.summary()


def test_intermediate_sabotage_is_named(tiny_mobilenet):
    """A wrong kept channel inside the network is caught where it first appears."""
    model, plan, pruned, _ = tiny_mobilenet
    bad = _copy(pruned)
    conv = [n for n in bad.graph.node if n.op_type == "Conv"][2]
    w = _inits(bad)[conv.input[1]].copy()
    w[0] *= 1.01  # one filter 1 % off
    _set(bad, conv.input[1], w)
    report = gp.verify(model, plan, bad)
    assert not report.passed
    assert report.failed[0].startswith(conv.output[0] + ":"), report.failed


def test_cli_verify_reports_tensors_compared(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(ob.paddle_style(), str(src))
    code, out, err = _cli("prune", src, "-o", tmp_path / "o.onnx", "--ratio", "0.5", "--verify")
    assert code == 0, err
    line = next(ln for ln in out.splitlines() if ln.startswith("verify:"))
    assert "tensors compared" in line and "worst relative diff" in line and line.endswith("exact")


# ----------------------------------------------- A: a plan applied to another model
def _finetuned(raw):
    """The same architecture with other weights (a fine-tuned checkpoint)."""
    other = _copy(raw)
    rng = np.random.default_rng(7)
    for t in other.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.dtype == np.float32 and a.size > 1:
            t.CopyFrom(numpy_helper.from_array((a + rng.standard_normal(a.shape) * 0.3).astype(np.float32), t.name))
    for n in other.graph.node:  # paddle_style keeps one weight in a Constant node
        if n.op_type == "Constant":
            a = numpy_helper.to_array(n.attribute[0].t)
            n.attribute[0].t.CopyFrom(numpy_helper.from_array(-a, n.attribute[0].t.name))
    return other


def test_plan_prunes_the_weights_of_the_model_it_is_applied_to():
    raw_a = ob.paddle_style()
    raw_b = _finetuned(raw_a)
    plan = gp.choose(gp.analyse(raw_a), ratio=0.5)
    pruned_a, pruned_b = gp.prune(raw_a, plan), gp.prune(raw_b, plan)
    x = {"x": np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    assert not np.allclose(run(pruned_a, x)[0], run(pruned_b, x)[0])
    assert gp.verify(raw_b, plan, pruned_b).passed
    # verify judges against the model it is given, not the plan's
    assert not gp.verify(raw_b, plan, pruned_a).passed
    assert not gp.verify(raw_a, plan, pruned_b).passed
    # B's weights, A's channel choice
    # (per node: A's all-zero shared bias slices to one constant, B's noisy one to one per conv)
    def weight_dims(m):
        inits = {t.name: list(t.dims) for t in m.graph.initializer}
        return [[inits.get(i) for i in n.input[1:]] for n in m.graph.node if n.op_type == "Conv"]
    assert weight_dims(pruned_a) == weight_dims(pruned_b)


def test_plan_refuses_a_model_of_another_shape():
    raw_a = ob.paddle_style()
    plan = gp.choose(gp.analyse(raw_a), ratio=0.5)
    wider = _copy(raw_a)
    _set(wider, "w3", np.ones((6, 8, 1, 1), np.float32))
    with pytest.raises(gp.GraphpruneError, match=r"another model: weight 'w3' has shape \[6, 8, 1, 1\]"):
        gp.prune(wider, plan)
    with pytest.raises(gp.GraphpruneError, match="another model"):
        gp.verify(wider, plan, gp.prune(raw_a, plan))


# --------------------------------------------- C: prune's result must run in onnxruntime
def test_prune_refuses_a_result_onnxruntime_cannot_run(monkeypatch, tmp_path):
    from graphprune.passes import prune_channels

    real = prune_channels.PruneChannelsPass.run

    def broken(self, model):  # a rewrite bug the ONNX checker cannot see: a Conv in double
        out = real(self, model)
        conv = next(n for n in out.graph.node if n.op_type == "Conv")
        cast = helper.make_node("Cast", [conv.input[0]], ["x_as_double"], to=TensorProto.DOUBLE, name="to_double")
        back = helper.make_node("Cast", ["y_double"], [conv.output[0]], to=TensorProto.FLOAT, name="to_float")
        w = next(t for t in out.graph.initializer if t.name == conv.input[1])
        w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w).astype(np.float64), w.name))
        bias = list(conv.input[2:])
        for b in bias:
            t = next(t for t in out.graph.initializer if t.name == b)
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))
        conv.input[0] = "x_as_double"
        conv.output[0] = "y_double"
        i = list(out.graph.node).index(conv)
        out.graph.node.insert(i, cast)
        out.graph.node.insert(i + 2, back)
        return out

    monkeypatch.setattr(prune_channels.PruneChannelsPass, "run", broken)
    model = gp.load(ob.paddle_style())
    plan = gp.choose(gp.analyse(model), ratio=0.5)
    with pytest.raises(gp.GraphpruneError, match="does not run in onnxruntime.*Conv"):
        gp.prune(model, plan)


def _double_conv_model():
    """A Conv in float64: valid ONNX, but onnxruntime's CPU provider has no such kernel."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2")]
    inits = {"w1": ob.w(8, 3, 3, 3).astype(np.float64), "w2": ob.w(4, 8, 1, 1).astype(np.float64)}
    x = helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)
    return ob.model(nodes, inits, [x], [y])


def test_prune_refuses_a_model_onnxruntime_cannot_run_before_pruning(tmp_path):
    src = tmp_path / "double.onnx"
    onnx.save(_double_conv_model(), str(src))
    out = tmp_path / "o.onnx"
    code, _, err = _cli("prune", src, "-o", out, "--ratio", "0.5")
    assert code == 2 and not out.exists()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "before pruning" in lines[0] and "conv1" in lines[0], err


# ------------------------------------------------------------- D: API/CLI validation
def test_choose_accepts_numpy_integers_and_refuses_bools_and_floats():
    an = gp.analyse(ob.paddle_style())
    plan = gp.choose(an, ratio=0.5, round_to=np.int64(4))
    assert all(plan.kept(g.id) % 4 == 0 for g in an.groups if g.prunable)
    for bad in (True, 4.0, "4"):
        with pytest.raises(gp.GraphpruneError, match="round-to must be a positive integer"):
            gp.choose(an, ratio=0.5, round_to=bad)


def _dynamic_model():
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["c"]),
             helper.make_node("GlobalAveragePool", ["c"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    return ob.model(nodes, {"w1": ob.w(8, 3, 3, 3), "w2": ob.w(4, 8, 1, 1)}, [x], [ob.out()])


def test_count_and_verify_refuse_bad_input_shapes():
    model = gp.load(_dynamic_model())
    plan = gp.choose(gp.analyse(model), ratio=0.5)
    pruned = gp.prune(model, plan)
    with pytest.raises(gp.GraphpruneError, match="positive integer"):
        gp.count(model, {"x": [1, 3, -8, 8]})
    with pytest.raises(gp.GraphpruneError, match="positive integer"):
        gp.verify(model, plan, pruned, input_shapes={"x": [1, 3, 0, 8]})
    with pytest.raises(gp.GraphpruneError, match="no input 'nope'"):
        gp.verify(model, plan, pruned, input_shapes={"nope": [1, 3, 8, 8]})
    with pytest.raises(gp.GraphpruneError, match="does not fit"):
        gp.verify(model, plan, pruned, input_shapes={"x": [1, 3, 8]})


def test_a_scalar_input_takes_the_empty_shape():
    """silero-vad's sample rate is a rank-0 input: its shape is [] (the one rule gives that too)."""
    from graphprune.inputs import concrete_shapes
    m = _dynamic_model()
    m.graph.input.append(helper.make_tensor_value_info("sr", TensorProto.INT64, []))
    m.graph.node.append(helper.make_node("Identity", ["sr"], ["sr_out"]))
    m.graph.output.append(helper.make_tensor_value_info("sr_out", TensorProto.INT64, []))
    model = gp.load(m)
    shapes = concrete_shapes(model, {"x": [1, 3, 8, 8]})
    assert shapes["sr"] == []
    assert gp.count(model, shapes).macs == gp.count(model, {"x": [1, 3, 8, 8]}).macs > 0
    with pytest.raises(gp.GraphpruneError, match="does not fit"):
        gp.count(model, {"x": [1, 3, 8, 8], "sr": [1]})


def test_cli_refuses_an_input_shape_that_would_exhaust_memory(tmp_path):
    src = tmp_path / "dyn.onnx"
    onnx.save(_dynamic_model(), str(src))
    out = tmp_path / "o.onnx"
    code, _, err = _cli("prune", src, "-o", out, "--ratio", "0.5", "--verify",
                        "--input-shape", "x=1,3,100000,100000")
    lines = err.strip().splitlines()
    assert code == 2 and not out.exists() and len(lines) == 1, err
    assert "x=1,3,100000,100000" in lines[0] and "GiB" in lines[0]


# ---------------------------------------------------------------- E: non-finite weights
def _with_weight(value):
    m = ob.paddle_style()
    w = _inits(m)["w3"].copy()
    w.flat[3] = value
    _set(m, "w3", w)
    return m


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_weights_are_refused_naming_the_weight(value):
    m = _with_weight(value)
    with pytest.raises(gp.GraphpruneError, match="weight 'w3' holds 1 (NaN|Inf)"):
        gp.analyse(m)
    with pytest.raises(gp.GraphpruneError, match="weight 'w3'"):
        gp.load(m)


def test_cli_refuses_nan_weights_in_analyze_and_importance(tmp_path):
    src = tmp_path / "nan.onnx"
    onnx.save(_with_weight(np.nan), str(src))
    for args in (["analyze", src], ["importance", src, "-o", tmp_path / "i.onnx", "--method", "l1"]):
        code, _, err = _cli(*args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "'w3'" in err, (args, err)


def test_a_plan_does_not_prune_a_checkpoint_with_nan_weights():
    raw = ob.paddle_style()
    plan = gp.choose(gp.analyse(raw), ratio=0.5)
    with pytest.raises(gp.GraphpruneError, match="weight 'w3'"):
        gp.prune(_with_weight(np.nan), plan)


def test_inf_outside_layer_parameters_is_accepted():
    """-inf is a legitimate constant where no layer computes with it (a running maximum)."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Max", ["a", "floor"], ["m"]),
             helper.make_node("Conv", ["m", "w2"], ["y"])]
    inits = {"w1": ob.w(8, 3, 3, 3), "w2": ob.w(4, 8, 1, 1), "floor": np.array(-np.inf, np.float32)}
    model = gp.load(ob.model(nodes, inits, [ob.x_input()], [ob.out()]))
    plan = gp.choose(gp.analyse(model), ratio=0.5)
    assert gp.verify(model, plan, gp.prune(model, plan)).passed


def test_quick_check_session_computes_what_a_normal_session_does_and_rejects_bad_weights():
    """prune's run check loads weights as in-memory external initializers with graph
    optimisations off (fast): same outputs as a normal session, the input model untouched,
    and a weight whose shape contradicts the graph is still refused at load."""
    from graphprune.runtime import session
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Gemm", ["f", "wg"], ["y"], transB=1, name="fc"),
             helper.make_node("Flatten", ["r"], ["f"])]
    nodes = nodes[:2] + [nodes[3], nodes[2]]
    inits = {"w1": ob.w(16, 3, 3, 3), "wg": ob.w(10, 16 * 8 * 8)}   # 40 KB: goes apart
    m = ob.model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    before = m.SerializeToString()
    x = {"x": np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    quick, normal = session(m, quick=True).run(None, x)[0], session(m).run(None, x)[0]
    np.testing.assert_allclose(quick, normal, rtol=1e-5, atol=1e-6)
    assert m.SerializeToString() == before
    bad = onnx.ModelProto()
    bad.CopyFrom(m)
    wg = next(t for t in bad.graph.initializer if t.name == "wg")
    wg.CopyFrom(numpy_helper.from_array(ob.w(10, 16 * 8 * 8 - 64), "wg"))
    with pytest.raises(gp.GraphpruneError, match="onnxruntime cannot load the model"):
        session(bad, quick=True).run(None, x)
