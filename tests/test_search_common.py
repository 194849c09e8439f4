"""Tiny ONNX CNNs and matching data for the search tests (built here, no downloads).

`tiny_resnet` is conv-relu-conv-relu-conv + residual add, another conv, global
average pooling and a linear classifier: three prunable channel groups. The data's
labels are the original model's own predictions, so its error starts at 0 and
pruning raises it measurably.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper, TensorProto


def tiny_resnet(seed: int = 0, widths=(16, 32, 24), classes: int = 4, hw: int = 12) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    a, b, c = widths
    inits = []

    def w(name, *shape):
        fan_in = int(np.prod(shape[1:]))
        arr = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        # uneven filter norms so that the ranking criteria have something to rank
        scale = np.exp(rng.normal(0, 0.6, size=(shape[0],) + (1,) * (len(shape) - 1))).astype(np.float32)
        inits.append(numpy_helper.from_array(arr * scale, name))
        return name

    def bias(name, n):
        inits.append(numpy_helper.from_array((rng.standard_normal(n) * 0.05).astype(np.float32), name))
        return name

    nodes = [
        helper.make_node("Conv", ["x", w("w1", a, 1, 3, 3), bias("b1", a)], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", w("w2", b, a, 3, 3), bias("b2", b)], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", w("w3", a, b, 3, 3), bias("b3", a)], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c3", "r1"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["r3"], name="relu3"),
        helper.make_node("Conv", ["r3", w("w4", c, a, 3, 3), bias("b4", c)], ["c4"], name="conv4",
                         pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c4"], ["r4"], name="relu4"),
        helper.make_node("GlobalAveragePool", ["r4"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", w("wf", classes, c), bias("bf", classes)], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_resnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="graphprune-tests")
    model.ir_version = 10
    _balance_classes(model, hw)
    onnx.checker.check_model(model)
    return model


def _balance_classes(model: onnx.ModelProto, hw: int) -> None:
    """Shift the classifier bias so that every class is predicted about equally often
    (random weights otherwise predict one class for nearly every input)."""
    import onnxruntime as ort
    x = np.random.default_rng(123).standard_normal((512, 1, hw, hw)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"x": x})[0]
    z = (logits - logits.mean(0)) / (logits.std(0) + 1e-6)
    wf = next(t for t in model.graph.initializer if t.name == "wf")
    bf = next(t for t in model.graph.initializer if t.name == "bf")
    w = numpy_helper.to_array(wf) / (logits.std(0)[:, None] + 1e-6)
    b = (numpy_helper.to_array(bf) - logits.mean(0)) / (logits.std(0) + 1e-6)
    wf.CopyFrom(numpy_helper.from_array(w.astype(np.float32), "wf"))
    bf.CopyFrom(numpy_helper.from_array(b.astype(np.float32), "bf"))
    del z


def self_labelled_data(model: onnx.ModelProto, n: int = 256, seed: int = 1, hw: int = 12):
    """Random inputs labelled with the model's own predictions (its error is 0)."""
    import onnxruntime as ort
    x = np.random.default_rng(seed).standard_normal((n, 1, hw, hw)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": x})[0].argmax(1).astype(np.int64)
    return x, y


def write_case(tmp_path, n: int = 256, seed: int = 0):
    """tiny model + data files in tmp_path; returns (model_path, data_path)."""
    m = tiny_resnet(seed)
    mp = tmp_path / "tiny.onnx"
    onnx.save(m, mp)
    x, y = self_labelled_data(m, n)
    dp = tmp_path / "data.npz"
    np.savez(dp, x=x, y=y)
    return mp, dp
