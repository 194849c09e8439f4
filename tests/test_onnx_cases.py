"""Export quirks and operator coverage on hand-built graphs, plus the onnx wheel's real
architectures (opset 9, weights computed by ConstantOfShape)."""
import glob
import os

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import graphprune as gp
import onnx_builders as ob
from graphprune.runtime import run


def _prune_and_verify(m, ratio=0.3, **kw):
    model = gp.load(m)
    an = gp.analyse(model)
    plan = gp.choose(an, ratio=ratio, **kw)
    pruned = gp.prune(model, plan)
    report = gp.verify(model, plan, pruned)
    assert report.passed and report.exact, report.summary()
    return model, an, plan, pruned


def test_constant_nodes_identity_and_shared_bias():
    m = ob.paddle_style()
    before = m.SerializeToString()
    model, an, plan, pruned = _prune_and_verify(m, ratio=0.5)
    assert m.SerializeToString() == before  # input untouched
    assert not any(n.op_type in ("Constant", "Identity") for n in model.graph.node)
    # conv1 and conv2 outputs are separate groups sharing one bias initializer
    g1 = next(g for g in an.groups if g.producers == ["conv1"])
    g2 = next(g for g in an.groups if g.producers == ["conv2"])
    assert g1.id != g2.id
    plan = gp.choose(an, keep={g1.id: 4, g2.id: 8})
    pruned = gp.prune(model, plan)
    inits = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    conv = {n.name: n for n in pruned.graph.node}
    assert inits[conv["conv1"].input[2]].shape == (4,)
    assert inits[conv["conv2"].input[2]].shape == (8,)
    assert gp.verify(model, plan, pruned).passed


def test_opset11_split_slice_pad_resize_gemm():
    model, an, plan, pruned = _prune_and_verify(ob.opset11_layout_ops(), ratio=0.5)
    assert gp.count(pruned).macs < gp.count(model).macs
    split = next(n for n in pruned.graph.node if n.op_type == "Split")
    sizes = next(a.ints for a in split.attribute if a.name == "split")
    assert sum(sizes) < 16


def test_opset21_convtranspose_grouped_matmul_dynamic_batch():
    model, an, plan, pruned = _prune_and_verify(ob.opset21_convtranspose_matmul(), ratio=0.5)
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    assert run(pruned, {"x": x})[0].shape == (3, 4, 16, 16)
    assert gp.count(pruned).macs < 0.6 * gp.count(model).macs


def test_external_data_roundtrip(tmp_path):
    m = ob.paddle_style()
    src = tmp_path / "ext.onnx"
    onnx.save_model(m, str(src), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.data", size_threshold=0)
    assert (tmp_path / "ext.data").exists()
    model = gp.load(src)
    plan = gp.choose(gp.analyse(model), ratio=0.5)
    pruned = gp.prune(model, plan)
    gp.save(pruned, tmp_path / "out.onnx")
    again = onnx.load(str(tmp_path / "out.onnx"))
    assert run(again, {"x": np.ones((1, 3, 8, 8), np.float32)})[0].shape == (1, 4, 1, 1)


def test_metadata_criterion_removes_lowest_scores_and_slices_metadata():
    from graphprune.metadata import read_importance, write_importance

    model = gp.load(ob.paddle_style())
    scores = {"conv1": [8, 1, 7, 2, 6, 3, 5, 4], "conv2": list(range(8))}
    write_importance(model, "test", scores, samples=1)
    an = gp.analyse(model)
    plan = gp.choose(an, ratio=0.5, criterion="metadata")
    pruned = gp.prune(model, plan)
    kept = read_importance(pruned)["scores"]
    assert kept["conv1"] == [8, 7, 6, 5]
    assert kept["conv2"] == [4, 5, 6, 7]
    assert gp.verify(model, plan, pruned).passed


def test_per_class_metadata_follows_kept_channels():
    from graphprune.metadata import PER_CLASS_KEY, decode_per_class, encode_per_class, get_json, set_json

    model = gp.load(ob.paddle_style())
    rows = np.arange(3 * 8, dtype=np.float32).reshape(3, 8)
    set_json(model, PER_CLASS_KEY, encode_per_class("test", {"conv1": rows}))
    an = gp.analyse(model)
    g1 = next(g for g in an.groups if g.producers == ["conv1"])
    plan = gp.choose(an, keep={g1.id: 5})
    kept_mask = plan.keep_elems[an.maps[next(n for n in model.graph.node if n.name == "conv1").output[0]].elems]
    out = decode_per_class(get_json(gp.prune(model, plan), PER_CLASS_KEY))["conv1"]
    assert out.shape == (3, 5)
    np.testing.assert_array_equal(out, rows[:, kept_mask])


LIGHT = sorted(glob.glob(os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/light/*.onnx")))
# vgg19, alexnet and zfnet512 carry 250-550 MB of weights once folded: slow on 2 cores
HEAVY = ("vgg19", "alexnet", "zfnet512")


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if any(h in p for h in HEAVY) else p
                                  for p in LIGHT], ids=lambda p: os.path.basename(p))
def test_onnx_wheel_real_architectures(path):
    model = gp.load(path)
    an = gp.analyse(model)
    plan = gp.choose(an, ratio=0.3)
    pruned = gp.prune(model, plan)
    report = gp.verify(model, plan, pruned)
    assert report.passed and report.exact
    if "shufflenet" not in path and "alexnet" not in path:
        # ShuffleNet v1: every group meets a channel shuffle; bvlc_alexnet: LRN pools over the channels
        # of the first convs (frozen, exactly), so only the 3x3 convs and FC layers prune (MACs 0.97x)
        assert gp.count(pruned).macs < 0.75 * gp.count(model).macs
    elif "alexnet" in path:
        assert gp.count(pruned).params < gp.count(model).params


RAPIDOCR = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", ".cache/models/rapidocr/*.onnx")))


@pytest.mark.skipif(not RAPIDOCR, reason="run tools/fetch_real_models.sh (make test does)")
@pytest.mark.parametrize("path", RAPIDOCR, ids=lambda p: os.path.basename(p))
def test_rapidocr_paddle_exports(path):
    shapes = {"x": [1, 3, 48, 320]} if "rec" in path else {"x": [1, 3, 64, 64]}
    model = gp.load(path)
    an = gp.analyse(model)
    plan = gp.choose(an, ratio=0.3)
    pruned = gp.prune(model, plan)
    report = gp.verify(model, plan, pruned, input_shapes=shapes)
    assert report.passed and report.exact and report.shapes_equal
    assert gp.count(pruned, shapes).macs < 0.75 * gp.count(model, shapes).macs


def test_per_channel_elementwise_ops():
    model, an, plan, pruned = _prune_and_verify(ob.elementwise_zoo(), ratio=0.5)
    conv1 = next(g for g in an.groups if g.producers == ["Conv_0"])
    assert conv1.prunable and plan.kept(conv1.id) == 6
    for name in ("in_s", "slope", "mean", "std"):
        t = next(t for t in pruned.graph.initializer if t.name.startswith(name))
        assert t.dims[0] == 6


@pytest.mark.parametrize("opset", [11, 13])
def test_softmax_default_axis_follows_the_opset(opset):
    model = gp.load(ob.softmax_head(opset))
    conv1 = next(g for g in gp.analyse(model).groups if g.producers == ["Conv_0"])
    # opset 11: default axis 1 pools over channels -> frozen; opset 13: last axis (width) -> prunable
    assert conv1.prunable == (opset >= 13)
    if opset >= 13:
        _prune_and_verify(ob.softmax_head(opset), ratio=0.5)


def test_api_accepts_the_raw_model_and_refuses_another():
    raw = ob.paddle_style()
    plan = gp.choose(gp.analyse(raw), ratio=0.5)
    assert gp.verify(raw, plan, gp.prune(raw, plan)).passed
    with pytest.raises(gp.GraphpruneError, match="another model"):
        gp.prune(ob.opset21_convtranspose_matmul(), plan)
