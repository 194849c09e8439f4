"""Small non-classifier ONNX models for the metric tests, built here (no downloads).

`yolo_head` has a YOLO-style detection head: a hidden conv (one prunable group of 8
channels) feeding a box branch (|conv| x 8: cx, cy, w, h in pixels) and a class branch
(sigmoid scores), concatenated and flattened to [N, 4+C, anchors] (v8 layout) or
transposed to [N, anchors, 5+C] (v5 layout, with a sigmoid objectness). `segmenter`
gives per-pixel scores (N, C, H, W), a sigmoid map for C = 1.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _finish(nodes, inits, out_shape, name, hw) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, hw, hw])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="graphprune-tests")
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


def _hidden(rng, inits, width=8):
    def w(name, *shape, scale=1.0):
        arr = rng.standard_normal(shape).astype(np.float32) * np.float32(scale / np.sqrt(np.prod(shape[1:])))
        # uneven filter norms so that the pruning criteria have something to rank
        arr *= np.exp(rng.normal(0, 0.6, size=(shape[0],) + (1,) * (len(shape) - 1))).astype(np.float32)
        inits.append(numpy_helper.from_array(arr, name))
        return name
    return w, [helper.make_node("Conv", ["x", w("w0", width, 3, 3, 3)], ["h0"], name="conv0", pads=[1, 1, 1, 1]),
               helper.make_node("Relu", ["h0"], ["h"], name="relu0")]


def yolo_head(classes: int = 2, layout: str = "v8", hw: int = 16, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits: list = []
    w, nodes = _hidden(rng, inits)
    n_cls = classes + (1 if layout == "v5" else 0)
    anchors = (hw // 2) ** 2
    inits += [numpy_helper.from_array(np.float32(8.0), "eight"),
              numpy_helper.from_array(np.asarray([0, 4 + n_cls, anchors], np.int64), "shape")]
    nodes += [
        helper.make_node("Conv", ["h", w("wb", 4, 8, 1, 1)], ["b0"], name="conv_box", strides=[2, 2]),
        helper.make_node("Abs", ["b0"], ["b1"], name="abs"),
        helper.make_node("Mul", ["b1", "eight"], ["boxes"], name="scale"),
        helper.make_node("Conv", ["h", w("wc", n_cls, 8, 1, 1, scale=3.0)], ["c0"], name="conv_cls", strides=[2, 2]),
        helper.make_node("Sigmoid", ["c0"], ["scores"], name="sigmoid"),
        helper.make_node("Concat", ["boxes", "scores"], ["cat"], name="concat", axis=1),
    ]
    if layout == "v8":
        nodes.append(helper.make_node("Reshape", ["cat", "shape"], ["y"], name="flatten"))
        out = ["N", 4 + classes, anchors]
    else:
        nodes += [helper.make_node("Reshape", ["cat", "shape"], ["flat"], name="flatten"),
                  helper.make_node("Transpose", ["flat"], ["y"], name="to_rows", perm=[0, 2, 1])]
        out = ["N", anchors, 5 + classes]
    return _finish(nodes, inits, out, f"yolo_{layout}", hw)


def segmenter(classes: int = 3, hw: int = 16, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits: list = []
    w, nodes = _hidden(rng, inits)
    head = "y" if classes > 1 else "logit"
    nodes.append(helper.make_node("Conv", ["h", w("wm", classes, 8, 1, 1, scale=3.0)], [head], name="conv_mask"))
    if classes == 1:
        nodes.append(helper.make_node("Sigmoid", ["logit"], ["y"], name="sigmoid"))
    return _finish(nodes, inits, ["N", classes, hw, hw], "segmenter", hw)


def images(n: int = 16, hw: int = 16, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, hw, hw)).astype(np.float32)


def text_map(hw: int = 32, seed: int = 0) -> onnx.ModelProto:
    """A DB-style text detector in miniature: (N, 1, hw, hw) sigmoid map, high (~0.95) where the input
    is bright, low (~0.05) on a zero background; one prunable group of 8 channels of uneven norms."""
    rng = np.random.default_rng(seed)
    norms = np.exp(rng.normal(0, 0.6, 8)).astype(np.float32)
    w0 = (rng.uniform(0.5, 1.0, (8, 3, 3, 3)) * norms[:, None, None, None] / 27).astype(np.float32)
    wm = np.full((1, 8, 1, 1), 1.0, np.float32)
    wm *= np.float32(6.0 / w0.sum())            # a bright block (all 1) gives logit 6 - 3 = 3
    inits = [numpy_helper.from_array(w0, "w0"), numpy_helper.from_array(wm, "wm"),
             numpy_helper.from_array(np.asarray([-3.0], np.float32), "bm")]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["h0"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h0"], ["h"], name="relu0"),
             helper.make_node("Conv", ["h", "wm", "bm"], ["logit"], name="conv_mask"),
             helper.make_node("Sigmoid", ["logit"], ["y"], name="sigmoid")]
    return _finish(nodes, inits, ["N", 1, hw, hw], "text_map", hw)


def text_images(n: int = 6, hw: int = 32, seed: int = 1) -> np.ndarray:
    """Zero images with two bright 'text lines' (blocks of 1.0) each, at random places."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 3, hw, hw), np.float32)
    for i in range(n):
        for r in (2, hw // 2 + 2):
            c, w = rng.integers(1, hw // 4), rng.integers(hw // 3, hw // 2)
            x[i, :, r:r + 5, c:c + w] = 1.0
    return x
