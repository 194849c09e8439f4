"""Importance criteria: one finite score per channel per Conv, metadata round trip, CLI errors."""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from graphprune import metadata as md
from graphprune.cli import main
from graphprune.data import Dataset, load_data, load_fashion_mnist
from graphprune.errors import GraphpruneError
from graphprune.importance import METHODS, compute_importance, read_per_class

torch.set_num_threads(1)
CLASSES = 4


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c3 = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.fc = nn.Linear(12, CLASSES)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(x + self.b2(self.c2(x)))
        x = F.relu(self.c3(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    torch.manual_seed(0)
    net = Net().eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.2, 1.5)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.zeros(1, 3, 8, 8), buf, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
                          training=torch.onnx.TrainingMode.PRESERVE)
    return onnx.load_from_string(buf.getvalue())


@pytest.fixture(scope="module")
def data() -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset(rng.standard_normal((12, 3, 8, 8)).astype(np.float32), np.arange(12) % CLASSES)


def _convs(model):
    return {n.name: n for n in model.graph.node if n.op_type == "Conv"}


def _producers(model):
    return {n.name: n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")}


def _out_channels(node, inits):
    dims = inits[node.input[1]].dims
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return dims[0] if trans_b else dims[1]
    return dims[-1] if node.op_type == "MatMul" else dims[0]


@pytest.mark.parametrize("method", METHODS)
def test_one_finite_score_per_channel(model, data, method):
    """Every producer (the convs and the dense layer) gets one finite score per output channel."""
    imp = compute_importance(model, data, method, samples=8, batch_size=4, seed=0, progress=False, n_steps=4)
    producers = _producers(model)
    assert set(imp.scores) == set(producers) and len(producers) == 4
    inits = {t.name: t for t in model.graph.initializer}
    for name, s in imp.scores.items():
        assert s.shape == (_out_channels(producers[name], inits),)
        assert np.all(np.isfinite(s)) and s.min() >= 0 and s.max() == pytest.approx(1.0)


def test_scores_are_deterministic(model, data):
    a = compute_importance(model, data, "taylor", samples=8, batch_size=4, seed=3, progress=False)
    b = compute_importance(model, data, "taylor", samples=8, batch_size=4, seed=3, progress=False)
    for k in a.scores:
        np.testing.assert_array_equal(a.scores[k], b.scores[k])


def test_bn_uses_gamma(model):
    imp = compute_importance(model, None, "bn")
    bn = [n for n in model.graph.node if n.op_type == "BatchNormalization"][0]
    gamma = np.abs(onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == bn.input[1])))
    conv = next(n.name for n in model.graph.node if n.op_type == "Conv" and n.output[0] == bn.input[0])
    np.testing.assert_allclose(imp.scores[conv], gamma / gamma.max(), rtol=1e-6)
    assert imp.parameters["bn_fallback"] == [n for n in _producers(model) if n.endswith(("c3/Conv", "fc/Gemm"))]


def test_per_class_and_metadata_round_trip(model, data):
    imp = compute_importance(model, data, "lrp", samples=12, batch_size=6, per_class=True, progress=False)
    for name, s in imp.scores.items():
        assert imp.per_class[name].shape == (CLASSES, s.shape[0])
    scored = imp.to_model(model)
    meta = md.read_importance(scored)
    assert meta["method"] == "lrp" and meta["samples"] == 12 and meta["data_hash"] == imp.data_hash
    for name, s in imp.scores.items():
        np.testing.assert_allclose(meta["scores"][name], s)
    pc = read_per_class(scored)
    for name, v in imp.per_class.items():
        np.testing.assert_allclose(pc[name], v, atol=1e-3)  # float16 encoding


def test_fashion_mnist_loader():
    ds = load_fashion_mnist("test")
    assert ds.x.shape == (10000, 1, 28, 28) and ds.x.dtype == np.float32
    assert set(np.unique(ds.y)) == set(range(10))


def test_image_folder(tmp_path):
    from PIL import Image
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("RGB", (10, 12), (i * 100, 50, 200)).save(tmp_path / cls / f"{i}.png")
    ds = load_data(tmp_path, size=8, mean="0.5", std="0.25")
    assert ds.x.shape == (4, 3, 8, 8) and list(ds.y) == [0, 0, 1, 1]
    np.testing.assert_allclose(ds.x[0, 1], (50 / 255 - 0.5) / 0.25, rtol=1e-5)


# ---------------------------------------------------------------- CLI
@pytest.fixture()
def files(tmp_path, model, data):
    mpath = tmp_path / "m.onnx"
    onnx.save(model, mpath)
    npz = tmp_path / "d.npz"
    np.savez(npz, x=data.x, y=data.y)
    return tmp_path, mpath, npz


def test_cli_scores_into_metadata(files):
    tmp, mpath, npz = files
    out = tmp / "scored.onnx"
    assert main(["importance", str(mpath), "--data", str(npz), "--method", "gradcam", "--samples", "8",
                 "--batch-size", "4", "--per-class", "--quiet", "-o", str(out)]) == 0
    scored = onnx.load(out)
    assert md.read_importance(scored)["method"] == "gradcam"
    assert set(read_per_class(scored)) == set(_producers(scored))
    assert main(["importance", str(mpath), "--method", "l2", "-o", str(tmp / "l2.onnx")]) == 0


def _bad(tmp, mpath, name, x, y, method="taylor"):
    p = tmp / f"{name}.npz"
    np.savez(p, x=x, y=y)
    return main(["importance", str(mpath), "--data", str(p), "--method", method, "--quiet",
                 "-o", str(tmp / f"{name}.onnx")])


def test_cli_bad_input_exits_2(files, capsys):
    tmp, mpath, npz = files
    x = np.zeros((4, 3, 8, 8), np.float32)
    assert _bad(tmp, mpath, "shape", np.zeros((4, 3, 9, 9), np.float32), np.zeros(4, int)) == 2
    assert _bad(tmp, mpath, "chan", np.zeros((4, 1, 8, 8), np.float32), np.zeros(4, int)) == 2
    assert _bad(tmp, mpath, "label", x, np.array([0, 1, 2, CLASSES])) == 2
    assert _bad(tmp, mpath, "empty", x[:0], np.zeros(0, int)) == 2
    assert main(["importance", str(mpath), "--data", str(npz), "--method", "magic", "-o",
                 str(tmp / "u.onnx")]) == 2
    err = capsys.readouterr().err
    assert "out of range" in err and "empty" in err and "unknown importance method" in err
    assert all(line.startswith("graphprune: error:") for line in err.strip().splitlines())


def test_unknown_method_api(model):
    with pytest.raises(GraphpruneError):
        compute_importance(model, None, "nope")


# ---------------------------------------------------------------- captum layer methods, all layers in one pass
@pytest.fixture(scope="module")
def bridged(model):
    from graphprune.bridge import to_torch
    from graphprune.importance import conv_modules
    from graphprune.importance.xai import _Logits
    net = to_torch(model)
    return _Logits(net).eval(), list(conv_modules(net).values())


def _per_layer_captum(method, wrapper, layer, x, y, n_steps=4, internal_batch_size=None):
    from captum.attr import LayerConductance, LayerDeepLift, LayerGradCam
    if method == "gradcam":
        return LayerGradCam(wrapper, layer).attribute(x, target=y, attr_dim_summation=False)
    if method == "deeplift":
        return LayerDeepLift(wrapper, layer).attribute(x, baselines=torch.zeros_like(x), target=y)
    return LayerConductance(wrapper, layer).attribute(x, baselines=torch.zeros_like(x), target=y, n_steps=n_steps,
                                                      internal_batch_size=internal_batch_size)


@pytest.mark.parametrize("method,internal_batch_size", [("gradcam", None), ("deeplift", None),
                                                        ("conductance", None), ("conductance", 12)])
def test_one_pass_equals_captum_per_layer(bridged, data, method, internal_batch_size):
    """The one-pass multi-layer forms give captum's per-layer attributions at every conv, sign included."""
    from graphprune.importance import captum_layers as xai
    wrapper, layers = bridged
    assert any(isinstance(m, nn.ReLU) for m in wrapper.modules())  # so DeepLift's nonlinearity rule is exercised
    x, y = torch.from_numpy(data.x[:6]), torch.from_numpy(data.y[:6])
    if method == "gradcam":
        got = xai._gradcam_layers(wrapper, layers)(x, y)
    elif method == "deeplift":
        got = xai._deeplift_layers(wrapper, layers)(x, y)
    else:  # 12 inputs per chunk: captum's _batch_attribution splits the 5 path points of 6 examples in 4 calls
        got = xai._conductance_layers(wrapper, layers, 4, internal_batch_size=internal_batch_size)(x, y)
    assert len(got) == len(layers)
    for layer, attr in zip(layers, got):
        want = _per_layer_captum(method, wrapper, layer, x, y, internal_batch_size=internal_batch_size)
        want = want.detach()
        assert attr.shape == want.shape and want.abs().max() > 0
        torch.testing.assert_close(attr, want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))


def test_deeplift_differs_from_gradient_times_input(bridged, data):
    """Guards the test above: with DeepLift's rule removed the attributions change."""
    from captum.attr import LayerGradientXActivation
    from graphprune.importance import captum_layers as xai
    wrapper, layers = bridged
    x, y = torch.from_numpy(data.x[:6]), torch.from_numpy(data.y[:6])
    got = xai._deeplift_layers(wrapper, layers)(x, y)
    plain = [LayerGradientXActivation(wrapper, m).attribute(x, target=y) for m in layers]
    assert any(not torch.allclose(a, b, rtol=1e-3, atol=1e-5) for a, b in zip(got, plain))


@pytest.mark.parametrize("method", ["gradcam", "deeplift", "conductance"])
def test_scores_equal_captum_per_layer(model, data, bridged, method):
    """relevance_scores (batching, example slicing for conductance, aggregation) on captum's per-layer output."""
    from graphprune.importance import conv_modules
    from graphprune.importance.xai import relevance_scores
    wrapper, layers = bridged
    scores, pcs, _ = relevance_scores(wrapper.net, data, method, batch_size=4, per_class=True, progress=False,
                                      n_steps=4)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    for name, layer in conv_modules(wrapper.net).items():
        r = _per_layer_captum(method, wrapper, layer, x, y).detach().abs().double()
        r = r.reshape(r.shape[0], r.shape[1], -1).mean(-1).numpy()
        np.testing.assert_allclose(scores[name], r.mean(0), rtol=1e-5)
        np.testing.assert_allclose(pcs[name][1], r[data.y == 1].mean(0), rtol=1e-5)


@pytest.mark.parametrize("method,passes,inputs", [("taylor", 3, 12), ("gradcam", 3, 12), ("deeplift", 3, 24),
                                                  ("conductance", 6, 12 * 5)])
def test_one_pass_for_all_layers(bridged, data, method, passes, inputs):
    """12 samples, batches of 4: one forward per batch for all convs (deeplift: over inputs and baselines).

    conductance, batches of 10 and n_steps 4: each forward holds all 5 path points of 2 samples, so no
    path point is evaluated twice (captum's own internal batching would repeat one per chunk).
    """
    from graphprune.importance.xai import relevance_scores
    net = bridged[0].net
    seen = []
    handle = net.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    try:
        relevance_scores(net, data, method, batch_size=4 if method != "conductance" else 10, progress=False,
                         n_steps=4)
    finally:
        handle.remove()
    assert len(seen) - 1 == passes and sum(seen) - 1 == inputs  # - the one-sample shape check


# ---------------------------------------------------------------- node names of the scored model (issues 10, 11 #9)
def _dense_model(names=None):
    """Conv -> Relu -> Conv -> Relu -> GAP -> Flatten -> MatMul(+Add) -> Relu -> Gemm: a conv+dense
    classifier. `names`: the 9 node names (None: all nodes unnamed, as hand-built exports are)."""
    from onnx import helper

    from onnx_builders import model as build, out, w, x_input
    names = names or [""] * 9
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a1"], names[0], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a1"], ["r1"], names[1]),
             helper.make_node("Conv", ["r1", "w2"], ["a2"], names[2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a2"], ["r2"], names[3]),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"], names[4]),
             helper.make_node("Flatten", ["g"], ["f"], names[5]),
             helper.make_node("MatMul", ["f", "w3"], ["h0"], names[6]),
             helper.make_node("Add", ["h0", "b3"], ["h"], names[7]),
             helper.make_node("Relu", ["h"], ["hr"], names[8]),
             helper.make_node("Gemm", ["hr", "w4", "b4"], ["y"], "", transB=1)]
    inits = {"w1": w(6, 3, 3, 3), "w2": w(8, 6, 3, 3), "w3": w(8, 10), "b3": w(10), "w4": w(CLASSES, 10),
             "b4": w(CLASSES)}
    return build(nodes, inits, [x_input(3, 8)], [out()])


@pytest.fixture()
def dense_files(tmp_path, data):
    npz = tmp_path / "d.npz"
    np.savez(npz, x=data.x, y=data.y)
    return tmp_path, npz


def _producer_weights(m):
    """The weights of the Conv/MatMul/Gemm nodes, in graph order."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    return [inits[n.input[1]] for n in m.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]


def _prune_by_planted_scores(tmp, scored_path):
    """Replace the scored model's scores by channel index (keep the top half = the last channels),
    prune --criterion metadata, and return (stdout, pruned model, scored model)."""
    scored = onnx.load(scored_path)
    meta = md.read_importance(scored)
    meta["scores"] = {k: list(range(len(v))) for k, v in meta["scores"].items()}
    md.set_json(scored, md.IMPORTANCE_KEY, meta)
    planted = tmp / "planted.onnx"
    onnx.save(scored, planted)
    return planted, scored


@pytest.mark.parametrize("names", [None, ["conv", "", "conv", "", "", "", "fc", "", ""]],
                         ids=["unnamed", "duplicate"])
def test_scores_attach_to_nodes_and_drive_metadata_pruning(dense_files, capsys, names):
    """Issue 10 (two convs named alike: one was scored) and issue 11 #9 (unnamed nodes: keys matched
    no node). The written model's nodes carry the metadata keys, every producer is scored, and
    `prune --criterion metadata` ranks every group by the metadata (planted scores decide what stays)."""
    tmp, npz = dense_files
    original = _dense_model(names)
    mpath, scored_path, pruned_path = tmp / "m.onnx", tmp / "scored.onnx", tmp / "pruned.onnx"
    onnx.save(original, mpath)
    assert main(["importance", str(mpath), "--data", str(npz), "--method", "taylor", "--no-progress",
                 "--samples", "8", "-o", str(scored_path)]) == 0
    scored = onnx.load(scored_path)
    keys = set(md.read_importance(scored)["scores"])
    node_names = [n.name for n in scored.graph.node]
    assert len(keys) == 4 and keys <= set(node_names)  # 2 convs, MatMul, Gemm
    assert all(node_names.count(k) == 1 for k in keys)
    assert {n.op_type for n in scored.graph.node if n.name in keys} == {"Conv", "MatMul", "Gemm"}
    assert [n.name for n in onnx.load(mpath).graph.node] == [n.name for n in original.graph.node]  # input untouched
    if names:  # named nodes keep their names; only the duplicate gets a suffix
        assert node_names[0] == "conv" and node_names[2] != "conv" and node_names[6] == "fc"

    planted, _ = _prune_by_planted_scores(tmp, scored_path)
    capsys.readouterr()
    assert main(["prune", str(planted), "--criterion", "metadata", "--ratio", "0.5", "-o", str(pruned_path)]) == 0
    assert "no importance metadata" not in capsys.readouterr().out
    w0, w1 = _producer_weights(original), _producer_weights(onnx.load(pruned_path))
    # planted score = channel index: the upper half of every prunable group is kept
    np.testing.assert_array_equal(w1[0], w0[0][3:])
    np.testing.assert_array_equal(w1[1], w0[1][4:, 3:])
    np.testing.assert_array_equal(w1[2], w0[2][4:, 5:])
    np.testing.assert_array_equal(w1[3], w0[3][:, 5:])


def test_written_names_survive_normalisation(dense_files):
    """The keys are the names graphprune.load gives the written model's nodes (what every tool reads)."""
    import graphprune as gp
    tmp, npz = dense_files
    imp = compute_importance(_dense_model(), None, "l1")
    scored = imp.to_model(_dense_model())
    names = {n.name for n in gp.load(scored).graph.node}
    assert set(imp.scores) <= names


def test_to_model_refuses_a_model_it_did_not_score(model):
    imp = compute_importance(_dense_model(), None, "l2")
    with pytest.raises(GraphpruneError, match="not a unique node"):
        imp.to_model(model)


@pytest.mark.parametrize("method", ["lrp", "taylor", "gradcam", "deeplift", "ig", "conductance"])
def test_xai_scores_hidden_dense_units(data, method):
    """XAI methods score the MatMul hidden units (and the Gemm), not only convs: not flat, not all zero."""
    imp = compute_importance(_dense_model(), data, method, samples=8, batch_size=4, progress=False,
                             **({"n_steps": 4} if method in ("ig", "conductance") else {}))
    dense = {k: v for k, v in imp.scores.items() if k.startswith(("MatMul", "Gemm"))}
    assert sorted(v.shape for v in dense.values()) == [(4,), (10,)]
    for v in dense.values():
        assert np.isfinite(v).all() and v.max() == 1.0 and np.ptp(v) > 0


def test_channel_last_matmul_is_scored_per_feature():
    """A MatMul on (N, T, C) has its features on the last axis: one score per output feature."""
    from onnx import helper

    from onnx_builders import model as build, out, w, x_input
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], "conv"),
             helper.make_node("Reshape", ["a", "shape"], ["t"], "flat"),
             helper.make_node("Transpose", ["t"], ["tt"], "tr", perm=[0, 2, 1]),
             helper.make_node("MatMul", ["tt", "w2"], ["h"], "mm"),
             helper.make_node("ReduceMean", ["h"], ["y"], "pool", axes=[1], keepdims=0)]
    m = build(nodes, {"w1": w(5, 3, 1, 1), "w2": w(5, 7), "shape": np.array([0, 5, -1], np.int64)},
              [x_input(3, 4)], [out()])
    rng = np.random.default_rng(1)
    ds = Dataset(rng.standard_normal((6, 3, 4, 4)).astype(np.float32), np.arange(6) % 7)
    for method in ("taylor", "gradcam", "deeplift"):
        imp = compute_importance(m, ds, method, samples=6, batch_size=3, progress=False)
        assert imp.scores["mm"].shape == (7,) and imp.scores["conv"].shape == (5,)


def test_metadata_that_names_no_node_is_refused_and_missing_layers_are_named(tmp_path, capsys):
    """Keys matching no producer were an L1 ranking reported as a metadata one: refuse. A partial
    match ranks the rest by L1 and the note names those producers."""
    import graphprune as gp
    m = gp.load(_dense_model())
    md.write_importance(m, "lrp", {"a1": [1.0] * 6, "a2": [1.0] * 8})  # keys of the old unnamed-model bug
    with pytest.raises(GraphpruneError, match="none is a Conv/Gemm/MatMul"):
        gp.choose(gp.analyse(m), ratio=0.5, criterion="metadata")
    md.write_importance(m, "lrp", {"Conv_0": list(range(6))})
    plan = gp.choose(gp.analyse(m), ratio=0.5, criterion="metadata")
    assert any("no importance metadata (Conv_2, MatMul_6)" in n for n in plan.notes), plan.notes


def test_cli_import_does_not_import_torch():
    """`graphprune --help` and every other subcommand's parsing stay free of torch."""
    import subprocess
    import sys
    code = "import sys, graphprune.cli; graphprune.cli.build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_grouped_conv_transpose_l1_is_per_output_channel():
    """ConvTranspose weights are (in, out/groups, k...): the L1 score of output channel o of group g sums
    the weights that write it, as the pruning analysis ranks it (criteria._filter_norms)."""
    from graphprune.criteria import _filter_norms
    torch.manual_seed(0)
    net = nn.Sequential(nn.ConvTranspose2d(4, 6, 3, groups=2), nn.Flatten(), nn.LazyLinear(2))
    net(torch.zeros(1, 4, 5, 5))
    imp = compute_importance(net, None, "l1")
    w = net[0].weight.detach().numpy()
    node = onnx.helper.make_node("ConvTranspose", ["x", "w"], ["y"], group=2)
    want = _filter_norms(node, w, "convtranspose", 1)
    np.testing.assert_allclose(imp.scores["0"], want / want.max(), rtol=1e-6)
    assert imp.scores["2"].shape == (2,)
