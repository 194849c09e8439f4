"""The small models, data and files tools/bad_inputs.py replays over the CLI (built, never downloaded).

One folder of fixtures is built per run and copied into each case's folder, so a case that
(wrongly) modifies or adds a file cannot affect another.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CLASSES = 4
RNG = np.random.default_rng(0)


def _w(*shape):
    return numpy_helper.from_array((RNG.standard_normal(shape) * 0.3).astype(np.float32))


def classifier(hw=(8, 8), names=("conv1", "conv2")) -> onnx.ModelProto:
    """x (N,3,H,W) -> Conv 16 -> Relu -> Conv 16 -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> logits (N,4)
    (16 channels: on the x86 target's channel step of 8, optimize has kept counts to choose from)."""
    inits = {"w1": _w(16, 3, 3, 3), "b1": _w(16), "w2": _w(16, 16, 3, 3), "b2": _w(16), "fc": _w(CLASSES, 16),
             "fcb": _w(CLASSES)}
    for name, t in inits.items():
        t.name = name
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], pads=[1, 1, 1, 1], name=names[0]),
        helper.make_node("Relu", ["a"], ["ar"], name="relu1"),
        helper.make_node("Conv", ["ar", "w2", "b2"], ["b"], pads=[1, 1, 1, 1], name=names[1]),
        helper.make_node("Relu", ["b"], ["br"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["br"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"], transB=1, name="fc"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, *hw])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])
    g = helper.make_graph(nodes, "classifier", [x], [y], list(inits.values()))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def no_conv() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8, 8])
    m = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def qlinear_conv() -> onnx.ModelProto:
    """x -> QuantizeLinear -> QLinearConv -> DequantizeLinear: a quantized model's conv."""
    q = lambda v, name, dt=np.uint8: numpy_helper.from_array(np.array(v, dt), name)  # noqa: E731
    inits = [q(0.05, "xs", np.float32), q(128, "xz"), q(0.02, "ws", np.float32), q(128, "wz"),
             numpy_helper.from_array(RNG.integers(0, 255, (8, 3, 3, 3)).astype(np.uint8), "w"),
             q(0.1, "ys", np.float32), q(128, "yz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("QLinearConv", ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["yq"], pads=[1, 1, 1, 1]),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])
    m = helper.make_model(helper.make_graph(nodes, "qconv", [x], [y], inits), opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def _npz(path: Path, x, y) -> None:
    with open(path, "wb") as f:
        np.savez(f, x=x, y=y)


def _data(folder: Path) -> None:
    x = RNG.standard_normal((16, 3, 8, 8)).astype(np.float32)
    y = np.arange(16) % CLASSES
    _npz(folder / "data.npz", x, y)
    _npz(folder / "x_strings.npz", np.full((16, 3, 8, 8), "a"), y)
    _npz(folder / "x_complex.npz", x.astype(np.complex64) + 1j, y)
    _npz(folder / "y_strings.npz", x, np.array(["cat"] * 16))
    _npz(folder / "y_complex.npz", x, y.astype(np.complex64))
    _npz(folder / "labels_1e20.npz", x, np.full(16, 1e20))
    _npz(folder / "labels_out_of_range.npz", x, np.full(16, CLASSES + 3))
    _npz(folder / "wrong_shape.npz", x[:, :1], y)
    from PIL import Image
    for c in range(2):
        (folder / "images" / f"class{c}").mkdir(parents=True)
        for i in range(2):
            Image.fromarray(RNG.integers(0, 255, (8, 8, 3)).astype(np.uint8)).save(folder / "images" / f"class{c}" / f"{i}.png")


def _targets(folder: Path) -> None:
    def target(body: str, name: str = "bad") -> str:
        return '{"targets": {"%s": {"description": "t", "tvm": {"kind": "llvm"}, "rpc_key": "t", %s}}}' % (name, body)
    (folder / "targets_nan_power.json").write_text(target('"channel_step": 8, "power_w": NaN'))
    (folder / "targets_negative_power.json").write_text(target('"channel_step": 8, "power_w": -5'))
    (folder / "targets_step_1e999.json").write_text(target('"channel_step": 1e999, "power_w": 5'))
    (folder / "targets_not_utf8.json").write_bytes(target('"channel_step": 8, "power_w": 5').replace(
        '"t"', '"caf\\xe9"').encode("utf-8").replace(b"\\xe9", b"\xe9"))
    (folder / "targets_not_json.json").write_text('{"targets": {"bad": ')
    (folder / "targets_mcpu_typo.json").write_text(
        '{"targets": {"typo": {"description": "t", "tvm": {"kind": "llvm", "mcpu": "skylake-avx51"}, '
        '"rpc_key": "t", "channel_step": 8, "power_w": 5}}}')


def build_fixtures(folder: Path) -> Path:
    folder.mkdir(parents=True)
    model = classifier()
    onnx.save(model, str(folder / "model.onnx"))
    onnx.save(classifier(hw=("H", "W")), str(folder / "dynamic.onnx"))
    onnx.save(classifier(names=("conv", "conv")), str(folder / "dupnames.onnx"))
    onnx.save(no_conv(), str(folder / "noconv.onnx"))
    onnx.save(qlinear_conv(), str(folder / "qlinearconv.onnx"))
    data = model.SerializeToString()
    (folder / "folder.onnx").mkdir()
    (folder / "corrupt.onnx").write_bytes(bytes(RNG.integers(0, 256, 600).astype(np.uint8)))
    (folder / "truncated.onnx").write_bytes(data[: len(data) // 2])
    (folder / "empty.onnx").write_bytes(b"")
    (folder / "text.onnx").write_text("hello, this is not a model\n")
    (folder / "latin1.onnx").write_bytes("caf\u00e9 cr\u00e8me \u00ff\n".encode("latin-1"))
    (folder / "notes.txt").write_text("a regular file\n")
    os.symlink("model.onnx", folder / "link.onnx")
    (folder / "sub").mkdir()
    onnx.save(model, str(folder / "sub" / "best.onnx"))
    (folder / "journal_dir").mkdir()
    (folder / "journal_dir" / "journal.jsonl").write_text("[1, 2, 3]\n")
    _data(folder)
    _targets(folder)
    return folder
