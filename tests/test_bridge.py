"""The ONNX->torch bridge computes what onnxruntime computes, and writes weights back exactly."""
from __future__ import annotations

import glob
import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from graphprune.bridge import OnnxModule, to_torch

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- models
class ResBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.MaxPool2d(2))
        self.c1, self.b1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16)
        self.down = nn.Conv2d(8, 16, 1, stride=2)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)) + self.down(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class DepthwiseSE(nn.Module):
    """MobileNetV3-ish: grouped + depthwise conv, SE block, hardswish, ReLU6, concat, split/slice."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.group = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.dw = nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=16)
        self.se1, self.se2 = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.pw = nn.Conv2d(24, 8, 1)
        self.fc = nn.Linear(8 * 4 * 4, 3)

    def forward(self, x):
        x = F.hardswish(self.conv(x))
        x = F.relu6(self.group(x))
        y = self.dw(x)
        s = F.hardsigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(y, 1)))))
        y = y * s
        a, b = torch.split(y, [8, 8], dim=1)
        z = torch.cat([a, torch.sigmoid(b) * b, y[:, 4:12]], dim=1)
        z = F.avg_pool2d(F.leaky_relu(self.pw(z), 0.1), 2)
        return self.fc(torch.flatten(z, 1))


class ChannelsLast(nn.Module):
    """ConvNeXt-ish: Linear on channels-last via Transpose, LayerNorm, GELU, ConvTranspose, Resize."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.lin1, self.lin2 = nn.Linear(8, 16), nn.Linear(16, 8)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.head = nn.Conv2d(4, 2, 1)
        self.inorm = nn.InstanceNorm2d(4, affine=True)

    def forward(self, x):
        x = self.conv(x)
        y = x.permute(0, 2, 3, 1)
        y = self.lin2(F.gelu(self.lin1(self.norm(y))))
        x = x + y.permute(0, 3, 1, 2)
        x = self.inorm(self.up(x))
        x = F.interpolate(x, scale_factor=2, mode="nearest") + F.interpolate(x, size=(32, 32), mode="bilinear")
        x = F.pad(x, (1, 0, 0, 1))
        return torch.tanh(self.head(x)).mean(dim=(2, 3))


def _randomise_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
    return model.eval()


def export(model: nn.Module, shape, dynamo: bool, opset: int = 17) -> onnx.ModelProto:
    model.eval()
    x = torch.randn(*shape)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            prog = torch.onnx.export(model, (x,), dynamo=True, opset_version=18,
                                     dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=64)}})
            m = prog.model_proto
        else:
            torch.onnx.export(model, x, buf, dynamo=False, opset_version=opset, input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
                              training=torch.onnx.TrainingMode.PRESERVE)
            m = onnx.load_from_string(buf.getvalue())
    if m.ir_version > 10:
        m.ir_version = 10
    return m


def ort_run(model: onnx.ModelProto, *xs: np.ndarray):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: x for i, x in zip(sess.get_inputs(), xs)})


def assert_matches(model: onnx.ModelProto, *xs: np.ndarray, atol=1e-4) -> OnnxModule:
    bridge = to_torch(model)
    ref = ort_run(model, *xs)
    with torch.no_grad():
        out = bridge(*[torch.from_numpy(x) for x in xs])
    out = out if isinstance(out, tuple) else (out,)
    for r, o in zip(ref, out):
        np.testing.assert_allclose(o.numpy(), r, atol=atol, rtol=1e-4)
    return bridge


def assert_write_back_exact(model: onnx.ModelProto, bridge: OnnxModule) -> None:
    back = bridge.write_back(model)
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in back.graph.initializer}
    assert before.keys() == after.keys()
    for k in before:
        assert before[k].dtype == after[k].dtype and np.array_equal(before[k], after[k]), k


# ---------------------------------------------------------------- tests
CASES = [(ResBN, (2, 3, 16, 16)), (DepthwiseSE, (2, 3, 8, 8)), (ChannelsLast, (2, 3, 8, 8))]


@pytest.mark.parametrize("cls,shape", CASES, ids=[c[0].__name__ for c in CASES])
def test_torchscript_export_matches_onnxruntime(cls, shape):
    torch.manual_seed(0)
    model = export(_randomise_bn(cls()), shape, dynamo=False)
    x = np.random.default_rng(0).standard_normal((3,) + shape[1:]).astype(np.float32)  # other batch size
    bridge = assert_matches(model, x)
    assert_write_back_exact(model, bridge)


@pytest.mark.parametrize("cls,shape", CASES[:2], ids=[c[0].__name__ for c in CASES[:2]])
def test_dynamo_export_matches_onnxruntime(cls, shape):
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = export(_randomise_bn(cls()), shape, dynamo=True)
    x = np.random.default_rng(1).standard_normal((3,) + shape[1:]).astype(np.float32)
    bridge = assert_matches(model, x)
    assert_write_back_exact(model, bridge)


def test_modules_are_named_after_nodes_and_hookable():
    model = export(_randomise_bn(ResBN()), (1, 3, 16, 16), dynamo=False)
    bridge = to_torch(model)
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    assert bridge.conv_nodes() == convs
    seen = {}
    for name in convs:
        assert isinstance(bridge.module_for_node(name), nn.Conv2d)
        bridge.hook(name, lambda m, i, o, name=name: seen.__setitem__(name, o.shape))
    bridge(torch.randn(2, 3, 16, 16))
    assert set(seen) == set(convs)
    assert len(bridge.conv_bn_pairs()) == 3  # PRESERVE kept stem, c1, c2 BN nodes
    assert isinstance(bridge.module_for_node(bridge.conv_bn_pairs()[0][1]), nn.BatchNorm2d)


def test_gradients_flow_and_trained_weights_write_back():
    model = export(_randomise_bn(DepthwiseSE()), (1, 3, 8, 8), dynamo=False)
    bridge = to_torch(model)
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    bridge(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in bridge.parameters())
    with torch.no_grad():
        for p in bridge.parameters():
            p.add_(0.01 * torch.randn_like(p))
        expect = bridge(x).numpy()
    back = bridge.write_back(model)
    np.testing.assert_allclose(ort_run(back, x.detach().numpy())[0], expect, atol=1e-4, rtol=1e-4)


def _paddle_like_model(opset: int) -> onnx.ModelProto:
    """Weights as Constant nodes, an Identity in front of an initializer, a shared initializer,
    asymmetric conv pads, attribute-form Unsqueeze/Split (opset 11) or input-form (opset 21)."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((4, 4, 1, 1)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    gemm_w = rng.standard_normal((4, 2)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w1"], name="const_w1", value=numpy_helper.from_array(w1, "w1")),
        helper.make_node("Identity", ["b"], ["b_id"], name="id_b"),
        helper.make_node("Conv", ["x", "w1", "b_id"], ["c1"], name="conv.1", pads=[0, 1, 1, 0]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b"], ["c2"], name="conv.2"),
        helper.make_node("Conv", ["r1", "w2"], ["c3"], name="conv.3"),  # shares w2 with conv.2
        helper.make_node("Clip", ["c3", "lo", "hi"], ["c3c"], name="clip") if opset >= 11 else None,
    ]
    nodes = [n for n in nodes if n is not None]
    if opset >= 13:
        nodes += [helper.make_node("Split", ["c2", "split"], ["s1", "s2"], name="split", axis=1),
                  helper.make_node("ReduceMean", ["c3c", "axes"], ["m"], name="mean", keepdims=1)
                  if opset >= 18 else helper.make_node("ReduceMean", ["c3c"], ["m"], axes=[2, 3], name="mean")]
    else:
        nodes += [helper.make_node("Split", ["c2"], ["s1", "s2"], name="split", axis=1, split=[2, 2]),
                  helper.make_node("ReduceMean", ["c3c"], ["m"], axes=[2, 3], name="mean")]
    nodes += [
        helper.make_node("Concat", ["s2", "s1"], ["cat"], name="cat", axis=1),
        helper.make_node("Add", ["cat", "m"], ["sum"], name="add"),
        helper.make_node("GlobalAveragePool", ["sum"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
        helper.make_node("MatMul", ["flat", "gemm_w"], ["y"], name="matmul"),
    ]
    inits = [numpy_helper.from_array(b, "b"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array(gemm_w, "gemm_w"), numpy_helper.from_array(np.float32(0.0), "lo"),
             numpy_helper.from_array(np.float32(6.0), "hi"),
             numpy_helper.from_array(np.array([2, 2], np.int64), "split"),
             numpy_helper.from_array(np.array([2, 3], np.int64), "axes")]
    graph = helper.make_graph(nodes, "paddle_like",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7 if opset < 15 else 10
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("opset", [11, 13, 21])
def test_constant_weights_identity_and_shared_initializers(opset):
    model = _paddle_like_model(opset)
    x = np.random.default_rng(2).standard_normal((2, 3, 6, 6)).astype(np.float32)
    bridge = assert_matches(model, x)
    assert bridge.module_for_node("conv.2").weight is bridge.module_for_node("conv.3").weight
    assert isinstance(bridge.module_for_node("matmul"), nn.Linear)
    assert isinstance(bridge.module_for_node("clip"), nn.ReLU6)
    assert_write_back_exact(model, bridge)
    # Constant-node weights are written back into the Constant node
    with torch.no_grad():
        bridge.module_for_node("conv.1").weight.mul_(2)
    back = bridge.write_back(model)
    const = next(n for n in back.graph.node if n.name == "const_w1")
    np.testing.assert_array_equal(numpy_helper.to_array(const.attribute[0].t),
                                  2 * numpy_helper.to_array(model.graph.node[0].attribute[0].t))


def test_gemm_attributes():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((5, 4)).astype(np.float32)
    c = rng.standard_normal((1, 5)).astype(np.float32)
    c2 = rng.standard_normal((3, 5)).astype(np.float32)  # a full (N, M) C cannot be a bias
    nodes = [helper.make_node("Gemm", ["x", "w", "c"], ["g1"], name="g_plain", transB=1),
             helper.make_node("Gemm", ["x", "w", "c2"], ["g2"], name="g_scaled", transB=1, alpha=0.5, beta=2.0),
             helper.make_node("Add", ["g1", "g2"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(c, "c"),
                               numpy_helper.from_array(c2, "c2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    bridge = assert_matches(model, rng.standard_normal((3, 4)).astype(np.float32))
    assert isinstance(bridge.module_for_node("g_plain"), nn.Linear)
    assert bridge.module_for_node("g_scaled").bias is None
    assert_write_back_exact(model, bridge)


RAPIDOCR = sorted(glob.glob(str(ROOT / ".cache/models/rapidocr/*.onnx")))


@pytest.mark.parametrize("path", RAPIDOCR or [None], ids=[Path(p).name for p in RAPIDOCR] or ["absent"])
def test_rapidocr_models(path):
    if path is None:
        pytest.skip("rapidocr models not fetched (tools/fetch_real_models.sh)")
    model = onnx.load(path)
    inp = model.graph.input[0].type.tensor_type.shape.dim
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in inp]
    h = dims[2] or 64  # det models need multiples of 32; rec/cls fix H=48
    shape = [1, dims[1] or 3, h, dims[3] or (192 if h == 48 else 64)]
    x = np.random.default_rng(4).uniform(-1, 1, shape).astype(np.float32)
    bridge = assert_matches(model, x, atol=2e-3)
    assert bridge.conv_nodes()
    assert_write_back_exact(model, bridge)


def test_duplicate_node_names_are_not_hooked_blindly():
    """Two Convs named alike: module_for_node(name) would return the last one; it refuses instead."""
    from graphprune.errors import GraphpruneError
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], "conv"), helper.make_node("Conv", ["a", "w2"], ["y"], "conv")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(rng.standard_normal((3, 2, 1, 1)).astype(np.float32), "w1"),
                           numpy_helper.from_array(rng.standard_normal((2, 3, 1, 1)).astype(np.float32), "w2")])
    net = to_torch(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))
    with pytest.raises(GraphpruneError, match="not unique"):
        net.module_for_node("conv")
