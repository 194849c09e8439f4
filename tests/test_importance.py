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


@pytest.mark.parametrize("method", METHODS)
def test_one_finite_score_per_channel(model, data, method):
    imp = compute_importance(model, data, method, samples=8, batch_size=4, seed=0, progress=False, n_steps=4)
    convs = _convs(model)
    assert set(imp.scores) == set(convs)
    inits = {t.name: t for t in model.graph.initializer}
    for name, s in imp.scores.items():
        assert s.shape == (inits[convs[name].input[1]].dims[0],)
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
    assert imp.parameters["bn_fallback"] == [n for n in _convs(model) if n.endswith("c3/Conv")]


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
    assert set(read_per_class(scored)) == set(_convs(scored))
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
    from graphprune.importance_xai import _Logits
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
    from graphprune import importance_xai as xai
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
    from graphprune import importance_xai as xai
    wrapper, layers = bridged
    x, y = torch.from_numpy(data.x[:6]), torch.from_numpy(data.y[:6])
    got = xai._deeplift_layers(wrapper, layers)(x, y)
    plain = [LayerGradientXActivation(wrapper, m).attribute(x, target=y) for m in layers]
    assert any(not torch.allclose(a, b, rtol=1e-3, atol=1e-5) for a, b in zip(got, plain))


@pytest.mark.parametrize("method", ["gradcam", "deeplift", "conductance"])
def test_scores_equal_captum_per_layer(model, data, bridged, method):
    """relevance_scores (batching, example slicing for conductance, aggregation) on captum's per-layer output."""
    from graphprune.importance import conv_modules
    from graphprune.importance_xai import relevance_scores
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
    from graphprune.importance_xai import relevance_scores
    net = bridged[0].net
    seen = []
    handle = net.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    try:
        relevance_scores(net, data, method, batch_size=4 if method != "conductance" else 10, progress=False,
                         n_steps=4)
    finally:
        handle.remove()
    assert len(seen) - 1 == passes and sum(seen) - 1 == inputs  # - the one-sample shape check
