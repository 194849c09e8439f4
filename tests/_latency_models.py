"""Tiny CNNs built with onnx.helper for the latency tests (IR 9: onnxruntime 1.31 rejects IR 14)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def tiny_cnn(channels: int = 8, size: int = 16, seed: int = 0, relu6: bool = False) -> onnx.ModelProto:
    """conv-act-conv-act-GAP-FC; act is Relu, or Clip(0, 6) (ReLU6, MobileNet's) with relu6."""
    rng = np.random.default_rng(seed)

    def init(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)
    inits = [init("w1", channels, 3, 3, 3), init("b1", channels), init("w2", 8, channels, 3, 3), init("b2", 8),
             init("wf", 8, 10), init("bf", 10)]
    if relu6:
        inits += [numpy_helper.from_array(np.array(0, np.float32), "lo"),
                  numpy_helper.from_array(np.array(6, np.float32), "hi")]

    def act(a, b):
        return helper.make_node("Clip", [a, "lo", "hi"], [b]) if relu6 else helper.make_node("Relu", [a], [b])
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        act("c1", "r1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        act("c2", "r2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def unsupported_model() -> onnx.ModelProto:
    """Valid ONNX that TVM's Relax frontend cannot import (an op from a custom domain)."""
    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph([node], "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    model.ir_version = 9
    return model


@pytest.fixture(autouse=True)
def isolated_latency_env(monkeypatch, tmp_path):
    """Autouse in the latency test modules (import it there): a private measurement cache
    and target config, and only the latency subcommands, so no test sees another's state."""
    from graphprune import cli

    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("GRAPHPRUNE_TARGETS", raising=False)
    monkeypatch.setattr(cli, "COMMANDS", ["graphprune.cli.latency_commands"])


def yolo_like(channels: int = 8, seed: int = 0, dynamic: bool = True) -> onnx.ModelProto:
    """A YOLOv8-style neck on dynamic H/W: stride-2 convs down to H/8, then two nearest Resize x2
    each concatenated with the skip of the same size, and a head conv. With H and W symbolic,
    TVM's Relax frontend cannot prove the upsampled map and the skip equal in size."""
    rng = np.random.default_rng(seed)

    def init(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)
    c = channels
    inits = [init("w1", c, 3, 3, 3), init("w2", c, c, 3, 3), init("w3", c, c, 3, 3),
             init("w4", c, 2 * c, 3, 3), init("w5", 4, 2 * c, 1, 1), init("b5", 4),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    down = dict(strides=[2, 2], pads=[1, 1, 1, 1])
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], **down), helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], **down), helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3"], ["c3"], **down), helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("Resize", ["r3", "", "scales"], ["u1"], mode="nearest"),
        helper.make_node("Concat", ["u1", "r2"], ["k1"], axis=1),
        helper.make_node("Conv", ["k1", "w4"], ["c4"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c4"], ["r4"]),
        helper.make_node("Resize", ["r4", "", "scales"], ["u2"], mode="nearest"),
        helper.make_node("Concat", ["u2", "r1"], ["k2"], axis=1),
        helper.make_node("Conv", ["k2", "w5", "b5"], ["y"]),
    ]
    hw = ["H", "W"] if dynamic else [64, 64]
    out_hw = ["H2", "W2"] if dynamic else [32, 32]
    graph = helper.make_graph(nodes, "yolo_like", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, *hw])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, *out_hw])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def lstm_model() -> onnx.ModelProto:
    """Valid ONNX with an LSTM (silero-vad has one; TVM 0.27's Relax frontend has no converter, prepare.py lowers it)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((1, 16, 3)).astype(np.float32), "W")
    r = numpy_helper.from_array(rng.standard_normal((1, 16, 4)).astype(np.float32), "R")
    node = helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=4, name="lstm0")
    graph = helper.make_graph([node], "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 1, 1, 4])], [w, r])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def data_dependent_pad_model() -> onnx.ModelProto:
    """Pad widths from a graph input: nothing to fold, and Relax cannot import dynamic pads."""
    node = helper.make_node("Pad", ["x", "p"], ["y"])
    graph = helper.make_graph([node], "pad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                                              helper.make_tensor_value_info("p", TensorProto.INT64, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model
