"""Small ONNX graphs built node by node, for cases exporters produce but torch tests miss."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(0)


def w(*shape):
    return RNG.standard_normal(shape).astype(np.float32) * 0.3


def model(nodes, inits, inputs, outputs, opset=13, ir=8):
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = ir
    return m


def x_input(c=3, hw=8, batch="N"):
    return helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, c, hw, hw])


def out(name="y"):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)


def paddle_style(hw=8):
    """Weights in Constant nodes, an Identity in front of a weight, and one zero bias shared
    by two convs of different groups (what PyTorch's initializer dedup produces)."""
    const_w = helper.make_node("Constant", [], ["w1"], value=numpy_helper.from_array(w(8, 3, 3, 3)))
    ident = helper.make_node("Identity", ["w2_init"], ["w2"])
    nodes = [
        const_w, ident,
        helper.make_node("Conv", ["x", "w1", "zero8"], ["a"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node("Conv", ["ar", "w2", "zero8"], ["b"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["b"], ["br"]),
        helper.make_node("Conv", ["br", "w3"], ["c"], name="conv3"),
        helper.make_node("GlobalAveragePool", ["c"], ["y"]),
    ]
    inits = {"w2_init": w(8, 8, 3, 3), "zero8": np.zeros(8, np.float32), "w3": w(4, 8, 1, 1)}
    return model(nodes, inits, [x_input(hw=hw)], [out()], opset=11)


def opset11_layout_ops():
    """Split by attribute, Slice/Pad by inputs, Resize with `sizes`, Gemm after Flatten."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node("Split", ["ar"], ["s1", "s2"], axis=1, split=[6, 10]),
        helper.make_node("Conv", ["s2", "w2"], ["c2"]),
        helper.make_node("Concat", ["s1", "c2"], ["cat"], axis=1),
        helper.make_node("Slice", ["cat", "starts", "ends", "axes"], ["sl"]),
        helper.make_node("Pad", ["sl", "pads"], ["pd"], mode="constant"),
        helper.make_node("Resize", ["pd", "roi", "noscales", "sizes"], ["rs"], mode="nearest"),
        helper.make_node("Conv", ["rs", "w3"], ["c3"], strides=[2, 2]),
        helper.make_node("Flatten", ["c3"], ["fl"], axis=1),
        helper.make_node("Gemm", ["fl", "fc", "fcb"], ["y"], transB=0),
    ]
    inits = {
        "w1": w(16, 3, 3, 3), "b1": w(16), "w2": w(12, 10, 1, 1),
        "starts": np.array([2], np.int64), "ends": np.array([17], np.int64), "axes": np.array([1], np.int64),
        "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "roi": np.zeros(0, np.float32), "noscales": np.zeros(0, np.float32),
        "sizes": np.array([1, 15, 20, 20], np.int64), "w3": w(6, 15, 2, 2),
        "fc": w(6 * 10 * 10, 5), "fcb": w(5),
    }
    return model(nodes, inits, [x_input(batch=1)], [out()], opset=11, ir=6)


def opset21_convtranspose_matmul():
    """Opset 21: ConvTranspose, grouped conv, channels-last MatMul with Transpose."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("ConvTranspose", ["a", "wt", "bt"], ["up"], strides=[2, 2]),
        helper.make_node("Relu", ["up"], ["upr"]),
        helper.make_node("Conv", ["upr", "wg"], ["g"], group=4, pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["g"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("MatMul", ["t", "m1"], ["h"]),
        helper.make_node("Add", ["h", "m1b"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["hr"]),
        helper.make_node("MatMul", ["hr", "m2"], ["o"]),
        helper.make_node("Transpose", ["o"], ["y"], perm=[0, 3, 1, 2]),
    ]
    inits = {"w1": w(8, 3, 3, 3), "wt": w(8, 16, 2, 2), "bt": w(16), "wg": w(16, 4, 3, 3),
             "m1": w(16, 24), "m1b": w(24), "m2": w(24, 4)}
    return model(nodes, inits, [x_input()], [out()], opset=21, ir=10)


def no_conv():
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    return model(nodes, {}, [x_input()], [out()])


def elementwise_zoo():
    """Per-channel ops with broadcast constants: InstanceNorm, PRelu, Sub/Div by [C,1,1],
    Clip, LeakyRelu, ReduceMean without keepdims, Unsqueeze back, SE-style Mul."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("InstanceNormalization", ["a", "in_s", "in_b"], ["n"]),
        helper.make_node("PRelu", ["n", "slope"], ["p"]),
        helper.make_node("Sub", ["p", "mean"], ["s"]),
        helper.make_node("Div", ["s", "std"], ["d"]),
        helper.make_node("Clip", ["d", "lo", "hi"], ["c"]),
        helper.make_node("LeakyRelu", ["c"], ["l"], alpha=0.1),
        helper.make_node("ReduceMean", ["l"], ["r"], axes=[2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["r", "uaxes"], ["u"]),
        helper.make_node("Sigmoid", ["u"], ["g"]),
        helper.make_node("Mul", ["l", "g"], ["m"]),
        helper.make_node("Conv", ["m", "w2"], ["y"]),
    ]
    inits = {"w1": w(12, 3, 3, 3), "in_s": w(12), "in_b": w(12), "slope": w(12, 1, 1),
             "mean": w(12, 1, 1), "std": np.abs(w(12, 1, 1)) + 0.5,
             "lo": np.array(-1.0, np.float32), "hi": np.array(1.0, np.float32),
             "uaxes": np.array([2, 3], np.int64), "w2": w(5, 12, 1, 1)}
    return model(nodes, inits, [x_input()], [out()], opset=13)


def softmax_head(opset):
    """Conv -> Softmax with no axis attribute: before opset 13 that means axis 1 (channels)."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Softmax", ["r"], ["s"]), helper.make_node("Conv", ["s", "w2"], ["y"])]
    return model(nodes, {"w1": w(8, 3, 1, 1), "w2": w(4, 8, 1, 1)}, [x_input()], [out()], opset=opset)


def crnn_unrolled(steps=4, feature_piece="literal"):
    """A CRNN's neck as PyTorch exports it: CNN -> Transpose -> Reshape whose target is a
    Concat of [T], the dynamic batch and a literal feature count (C x H, folded from the
    static shape), then a hand-unrolled recurrence: one Gemm per time step sharing a single
    weight and bias. feature_piece="input": the count comes from a graph input instead (a
    form no rewrite can follow)."""
    c, h = 6, 2
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node("Conv", ["ar", "w2", "b2"], ["b"], pads=[1, 1, 1, 1], strides=[2, 4]),
        helper.make_node("Relu", ["b"], ["br"]),
        helper.make_node("Transpose", ["br"], ["t"], perm=[3, 0, 1, 2]),
        helper.make_node("Shape", ["t"], ["t_shape"]),
        helper.make_node("Gather", ["t_shape", "one"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "zero_axis"], ["batch1"]),
        helper.make_node("Concat", ["steps", "batch1", "feat" if feature_piece == "literal" else "n_feat"],
                         ["target"], axis=0),
        helper.make_node("Reshape", ["t", "target"], ["seq"]),
    ]
    outs = []
    for s in range(steps):
        nodes += [helper.make_node("Gather", ["seq", f"i{s}"], [f"x{s}"], axis=0),
                  helper.make_node("Gemm", [f"x{s}", "w_ih", "b_ih"], [f"g{s}"], transB=1),
                  helper.make_node("Tanh", [f"g{s}"], [f"h{s}"]),
                  helper.make_node("Unsqueeze", [f"h{s}", "zero_axis"], [f"u{s}"])]
        outs.append(f"u{s}")
    nodes.append(helper.make_node("Concat", outs, ["y"], axis=0))
    inits = {"w1": w(8, 3, 3, 3), "b1": w(8), "w2": w(c, 8, 3, 3), "b2": w(c),
             "one": np.array(1, np.int64), "zero_axis": np.array([0], np.int64),
             "steps": np.array([steps], np.int64), "feat": np.array([c * h], np.int64),
             "w_ih": w(10, c * h), "b_ih": w(10),
             **{f"i{s}": np.array(s, np.int64) for s in range(steps)}}
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4 * steps])]
    if feature_piece != "literal":
        inputs.append(helper.make_tensor_value_info("n_feat", TensorProto.INT64, [1]))
    m = model(nodes, inits, inputs, [out()], opset=17)
    if feature_piece != "literal":  # the exporter recorded the shape it traced
        m.graph.value_info.append(helper.make_tensor_value_info("seq", TensorProto.FLOAT, [steps, "N", c * h]))
    return m


def tf_squeeze_reshapes():
    """tf2onnx's 1-D conv: Squeeze and ExpandDims written as Reshape with a -1 batch and the
    channel count as a literal, around channels-last Transposes (basic-pitch's CQT front)."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], strides=[1, 4]),
        helper.make_node("Transpose", ["a"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["t", "squeeze_to"], ["s"]),
        helper.make_node("Relu", ["s"], ["r"]),
        helper.make_node("Reshape", ["r", "expand_to"], ["e"]),
        helper.make_node("Transpose", ["e"], ["back"], perm=[0, 3, 1, 2]),
        helper.make_node("Unsqueeze", ["back", "axes"], ["u"]),
        helper.make_node("Reshape", ["u", "drop_to"], ["d"]),
        helper.make_node("Conv", ["d", "w2"], ["y"], pads=[0, 1, 0, 1]),
    ]
    inits = {"w1": w(8, 1, 1, 8), "b1": w(8), "squeeze_to": np.array([-1, 15, 8], np.int64),
             "expand_to": np.array([-1, 1, 15, 8], np.int64), "axes": np.array([2], np.int64),
             "drop_to": np.array([-1, 8, 1, 15], np.int64), "w2": w(4, 8, 1, 3)}
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 1, 64])
    return model(nodes, inits, [x], [out()], opset=13)


def cnn_rnn(op="LSTM", direction="bidirectional"):
    """CNN features into an ONNX LSTM/GRU/RNN node (a CRNN text recogniser, an audio model)."""
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    hidden, dirs = 6, 2 if direction == "bidirectional" else 1
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], pads=[0, 1, 0, 1]),
        helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node("Squeeze", ["ar", "h_axis"], ["sq"]),
        helper.make_node("Transpose", ["sq"], ["seq"], perm=[2, 0, 1]),
        helper.make_node(op, ["seq", "W", "R", "B"], ["y"], hidden_size=hidden, direction=direction),
    ]
    inits = {"w1": w(8, 3, 1, 3), "b1": w(8), "h_axis": np.array([2], np.int64),
             "W": w(dirs, gates * hidden, 8), "R": w(dirs, gates * hidden, hidden),
             "B": w(dirs, 2 * gates * hidden)}
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 1, 10])
    return model(nodes, inits, [x], [out()], opset=14)


def reduce_head(op, axes=(2, 3), keepdims=1, opset=13):
    """Conv -> Reduce* over `axes` -> Conv (1x1 after restoring the rank when keepdims=0)."""
    attrs = {"keepdims": keepdims}
    ins = ["r"]
    axes_as_input = (op == "ReduceSum" and opset >= 13) or opset >= 18
    if axes_as_input:
        ins.append("axes")
    else:
        attrs["axes"] = list(axes)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node(op, ins, ["p"], **attrs)]
    src = "p"
    if not keepdims:
        nodes.append(helper.make_node("Unsqueeze", ["p", "back"], ["pu"]))
        src = "pu"
    nodes.append(helper.make_node("Conv", [src, "w2"], ["y"]))
    inits = {"w1": w(8, 3, 3, 3), "w2": w(4, 1 if 1 in axes else 8, 1, 1),
             "axes": np.array(axes, np.int64), "back": np.array(sorted(axes), np.int64)}
    return model(nodes, inits, [x_input()], [out()], opset=opset)


def qdq_source():
    """A small float CNN to quantize with onnxruntime.quantization (Conv, Relu, pool, Gemm)."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ar"]),
             helper.make_node("Conv", ["ar", "w2", "b2"], ["b"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["b"], ["br"]),
             helper.make_node("GlobalAveragePool", ["br"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], transB=1)]
    inits = {"w1": w(8, 3, 3, 3), "b1": w(8), "w2": w(16, 8, 3, 3), "b2": w(16), "fc": w(5, 16), "fcb": w(5)}
    return model(nodes, inits, [x_input(batch=1)], [out()], opset=13)


def tied_branches():
    """Two branches whose second convs share one weight (a siamese net, a filter bank reused
    per octave): both must slice it the same way for the pruned model to keep one weight."""
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node("Conv", ["x", "wb"], ["b"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["b"], ["br"]),
        helper.make_node("Conv", ["ar", "tied", "tied_b"], ["ta"]),
        helper.make_node("Conv", ["br", "tied", "tied_b"], ["tb"]),
        helper.make_node("Mul", ["ta", "tb"], ["m"]),
        helper.make_node("Conv", ["m", "w3"], ["y"]),
    ]
    inits = {"wa": w(8, 3, 3, 3), "wb": w(8, 3, 3, 3), "tied": w(6, 8, 1, 1), "tied_b": w(6), "w3": w(2, 6, 1, 1)}
    return model(nodes, inits, [x_input()], [out()], opset=13)


def paddle_flatten():
    """paddle2onnx's flatten with an unknown batch: the Reshape target is built at run time
    from Shape(x)[0:1] and a literal -1, so shape inference leaves the result without shape."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node("GlobalAveragePool", ["ar"], ["g"]),
        helper.make_node("Shape", ["g"], ["g_shape"]),
        helper.make_node("Cast", ["g_shape"], ["g_shape32"], to=TensorProto.INT32),
        helper.make_node("Slice", ["g_shape32", "s0", "s1", "s_axes"], ["batch32"]),
        helper.make_node("Cast", ["batch32"], ["batch"], to=TensorProto.INT64),
        helper.make_node("Concat", ["batch", "minus_one"], ["target"], axis=-1),
        helper.make_node("Reshape", ["g", "target"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["y"]),
    ]
    inits = {"w1": w(8, 3, 3, 3), "b1": w(8), "s0": np.array([0], np.int64), "s1": np.array([1], np.int64),
             "s_axes": np.array([0], np.int64), "minus_one": np.array([-1], np.int64), "fc": w(8, 3)}
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])
    return model(nodes, inits, [x], [y], opset=11)


def expand_tile():
    """Conv -> Expand to a literal [1, C, 1, 1] shape -> Tile along height -> Conv."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Expand", ["a", "shape"], ["e"]),
             helper.make_node("Tile", ["e", "reps"], ["t"]),
             helper.make_node("Relu", ["t"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"])]
    inits = {"w1": w(8, 3, 3, 3), "shape": np.array([1, 8, 1, 1], np.int64), "reps": np.array([1, 1, 2, 1], np.int64),
             "w2": w(4, 8, 1, 1)}
    return model(nodes, inits, [x_input()], [out()], opset=13)
