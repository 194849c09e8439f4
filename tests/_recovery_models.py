"""Small models with BatchNormalization for the recovery tests, built with onnx.helper (no export)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _t(name, arr):
    return numpy_helper.from_array(np.asarray(arr, np.float32), name)


def bn_convnet(seed: int = 0, wrong_stats: bool = True, shared_zero: bool = True, batch="N",
               classes: int = 5, fc_gain: float = 1.0) -> onnx.ModelProto:
    """x (N,3,8,8) -> Conv(4) -> BN -> Relu -> Conv(6) -> BN -> Relu -> GAP -> Flatten -> Gemm(classes).
    With `shared_zero` the first BN's mean and the first Conv's bias are one zero initializer
    (as exporters deduplicate them). Stats deliberately wrong unless `wrong_stats` is False."""
    rng = np.random.default_rng(seed)
    inits = [_t("w1", rng.normal(0, 0.5, (4, 3, 3, 3))), _t("w2", rng.normal(0, 0.3, (6, 4, 3, 3))),
             _t("fc_w", rng.normal(0, 0.5 * fc_gain, (classes, 6))), _t("fc_b", rng.normal(0, 0.1, classes))]
    for i, c in ((1, 4), (2, 6)):
        inits += [_t(f"g{i}", rng.uniform(0.5, 1.5, c)), _t(f"b{i}", rng.normal(0, 0.2, c)),
                  _t(f"v{i}", rng.uniform(2, 5, c) if wrong_stats else np.ones(c))]
        if not (shared_zero and i == 1):
            inits.append(_t(f"m{i}", rng.normal(3, 1, c) if wrong_stats else np.zeros(c)))
    if shared_zero:
        inits.append(_t("zeros4", np.zeros(4)))
    m1 = "zeros4" if shared_zero else "m1"
    conv1_in = ["x", "w1", "zeros4"] if shared_zero else ["x", "w1"]
    nodes = [helper.make_node("Conv", conv1_in, ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "g1", "b1", m1, "v1"], ["n1"], name="bn1", epsilon=1e-5),
             helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c2", "g2", "b2", "m2", "v2"], ["n2"], name="bn2", epsilon=1e-5),
             helper.make_node("Relu", ["n2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc", transB=1)]
    g = helper.make_graph(nodes, "bn_convnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, classes])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def torch_forward(model: onnx.ModelProto, x: np.ndarray, recompute: bool):
    """The bn_convnet forward in torch (float64); with `recompute`, each BN normalises with the
    population statistics of its own input on `x` (upstream BNs already recomputed). Returns
    (output, {bn name: (mean, var)})."""
    import torch
    import torch.nn.functional as F
    p = {t.name: torch.from_numpy(numpy_helper.to_array(t).astype(np.float64)) for t in model.graph.initializer}
    node = {n.name: n for n in model.graph.node}
    stats = {}

    def bn(h, name):
        n = node[name]
        g, b, m, v = (p[i] for i in n.input[1:5])
        if recompute:
            m, v = h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=False)
        stats[name] = (m.numpy(), v.numpy())
        return (h - m[None, :, None, None]) / torch.sqrt(v[None, :, None, None] + 1e-5) * g[None, :, None, None] \
            + b[None, :, None, None]

    h = torch.from_numpy(x.astype(np.float64))
    conv1_bias = p[node["conv1"].input[2]] if len(node["conv1"].input) > 2 else None
    h = F.relu(bn(F.conv2d(h, p["w1"], conv1_bias, padding=1), "bn1"))
    h = F.relu(bn(F.conv2d(h, p["w2"], padding=1), "bn2"))
    out = h.mean((2, 3)) @ p["fc_w"].T + p["fc_b"]
    return out.numpy(), stats


def literal_batch_head(literal: bool = True, seed: int = 0) -> onnx.ModelProto:
    """x (N,3,8,8) -> Conv(6) -> BN -> Relu -> Reshape -> Transpose -> (N, 64, 6), a detector-style head.
    `literal`: the Reshape target is [1, 6, -1] (batch 1 baked in: at batch N it returns one merged
    (1, 64 N, 6)); else [0, 6, -1] (0 copies the batch dim), the same function at batch 1."""
    rng = np.random.default_rng(seed)
    inits = [_t("w", rng.normal(0, 0.5, (6, 3, 3, 3))), _t("g", rng.uniform(0.5, 1.5, 6)),
             _t("b", rng.normal(0, 0.2, 6)), _t("m", rng.normal(0, 0.2, 6)), _t("v", rng.uniform(0.5, 2, 6)),
             numpy_helper.from_array(np.array([1 if literal else 0, 6, -1], np.int64), "shape")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"], name="bn"),
             helper.make_node("Relu", ["n"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "shape"], ["s"], name="reshape"),
             helper.make_node("Transpose", ["s"], ["y"], name="transpose", perm=[0, 2, 1])]
    g = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m
