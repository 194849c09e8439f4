"""LowerRNNPass: LSTM/GRU/RNN unrolled into primitive ops give onnxruntime's outputs of the
original node (every direction, layout, initial-state and bias variant), inside If bodies too;
what it cannot lower exactly is refused in one line. TVM compiles of lowered models (silero-vad
included): tests/test_latency_import.py."""
from __future__ import annotations

import zlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphprune.errors import GraphpruneError
from graphprune.passes.lower_rnn import RECURRENT, LowerRNNPass

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def rnn_model(op="LSTM", direction="forward", seq=3, batch=2, inp=5, hidden=4, bias=True, init_h=True,
              init_c=True, layout=0, opset=17, dynamic_seq=False, **attrs):
    """One recurrent node with random weights; X, initial_h, initial_c are graph inputs."""
    rng = np.random.default_rng(zlib.crc32(repr((op, direction, seq, batch)).encode()))
    nd, g = 2 if direction == "bidirectional" else 1, GATES[op]
    inits = [numpy_helper.from_array(rng.uniform(-1, 1, (nd, g * hidden, inp)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.uniform(-1, 1, (nd, g * hidden, hidden)).astype(np.float32), "R")]
    if bias:
        inits.append(numpy_helper.from_array(rng.uniform(-1, 1, (nd, 2 * g * hidden)).astype(np.float32), "B"))
    s = "S" if dynamic_seq else seq
    x_dims = [s, batch, inp] if layout == 0 else [batch, s, inp]
    state = [nd, batch, hidden] if layout == 0 else [batch, nd, hidden]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_dims)]
    names = ["X", "W", "R", "B" if bias else "", ""]
    if init_h:
        inputs.append(helper.make_tensor_value_info("h0", TensorProto.FLOAT, state))
    names.append("h0" if init_h else "")
    if op == "LSTM":
        if init_c:
            inputs.append(helper.make_tensor_value_info("c0", TensorProto.FLOAT, state))
        names.append("c0" if init_c else "")
    while names[-1] == "":
        names.pop()
    outs = ["Y", "Y_h", "Y_c"][:3 if op == "LSTM" else 2]
    if layout:
        attrs["layout"] = 1
    node = helper.make_node(op, names, outs, name=f"my_{op.lower()}", hidden_size=hidden, direction=direction,
                            **attrs)
    y = [s, nd, batch, hidden] if layout == 0 else [batch, s, nd, hidden]
    graph = helper.make_graph([node], "rnn", inputs, [helper.make_tensor_value_info(o, TensorProto.FLOAT, d)
                                                      for o, d in zip(outs, [y, state, state])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def feeds_for(model, seed=0):
    rng = np.random.default_rng(seed)
    return {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
            for i in model.graph.input}


def run(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def ops_of(graph):
    out = set()
    for n in graph.node:
        out.add(n.op_type)
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                out |= ops_of(a.g)
    return out


def assert_lowered_matches(model, seed=0):
    lowered = LowerRNNPass()(model)
    onnx.checker.check_model(lowered, full_check=True)
    assert not ops_of(lowered.graph) & set(RECURRENT)
    feeds = feeds_for(model, seed)
    want, got = run(model, feeds), run(lowered, feeds)
    assert len(want) == len(got)
    for w, g in zip(want, got):
        assert w.shape == g.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    return lowered


CASES = [dict(op=op, direction=d, init_h=ih, bias=b)
         for op in RECURRENT for d in ("forward", "reverse", "bidirectional")
         for ih, b in ((True, True), (False, False))]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_lowered_equals_onnxruntime(case):
    assert_lowered_matches(rnn_model(**case))


@pytest.mark.parametrize("op", RECURRENT)
def test_layout_1_batch_major(op):
    """onnxruntime refuses layout 1: the reference is the same weights at layout 0 on transposed data."""
    batch_major, seq_major = (rnn_model(op, "bidirectional", layout=k, seq=4, batch=3) for k in (1, 0))
    lowered = LowerRNNPass()(batch_major)
    feeds = feeds_for(batch_major)
    got = run(lowered, feeds)
    want = run(seq_major, {k: v.transpose(1, 0, 2) for k, v in feeds.items()})
    np.testing.assert_allclose(got[0], want[0].transpose(2, 0, 1, 3), rtol=1e-5, atol=1e-6)
    for g, w in zip(got[1:], want[1:]):
        np.testing.assert_allclose(g, w.transpose(1, 0, 2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("lbr", [0, 1])
@pytest.mark.parametrize("init_h", [True, False])
def test_gru_linear_before_reset(lbr, init_h):
    assert_lowered_matches(rnn_model("GRU", "bidirectional", init_h=init_h, linear_before_reset=lbr))


def test_lstm_initial_c_without_initial_h_and_seq_1():
    assert_lowered_matches(rnn_model("LSTM", "forward", init_h=False, init_c=True, seq=1))
    assert_lowered_matches(rnn_model("LSTM", "reverse", init_h=True, init_c=False, seq=5, batch=1))


def test_relu_rnn_and_explicit_default_activations():
    assert_lowered_matches(rnn_model("RNN", "bidirectional", activations=["Relu", "Tanh"]))
    assert_lowered_matches(rnn_model("LSTM", "forward", activations=["Sigmoid", "Tanh", "Tanh"]))


@pytest.mark.parametrize("opset", [9, 11, 18])
def test_old_and_new_opsets(opset):
    """Slice takes its bounds as attributes before opset 10; LSTM layout exists from 14."""
    lowered = assert_lowered_matches(rnn_model("LSTM", "bidirectional", opset=opset))
    assert lowered.opset_import[0].version == opset


def test_only_used_outputs_are_built():
    m = rnn_model("LSTM", "forward")
    m.graph.node[0].output[:] = ["", "Y_h"]
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None))
    lowered = assert_lowered_matches(m)
    assert {o for n in lowered.graph.node for o in n.output} & {"Y", "Y_c"} == set()


def test_lstm_inside_if_branches():
    """silero-vad's LSTMs sit in If branches and read outer-scope tensors."""
    inner = rnn_model("LSTM", "forward")
    branch_nodes = list(inner.graph.node)
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("Y_h",)]
    branch_nodes[0].output[:] = ["", "Y_h"]
    then = helper.make_graph(branch_nodes, "then", [], outs)
    other = helper.make_graph([helper.make_node("Identity", ["h0"], ["Y_h2"])], "else", [],
                              [helper.make_tensor_value_info("Y_h2", TensorProto.FLOAT, None)])
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    node = helper.make_node("If", ["cond"], ["out"], then_branch=then, else_branch=other)
    graph = helper.make_graph([node], "g", list(inner.graph.input) + [cond],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              list(inner.graph.initializer))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    lowered = LowerRNNPass()(m)
    assert "LSTM" not in ops_of(lowered.graph)
    feeds = {k: v for k, v in feeds_for(inner).items()}
    for flag in (True, False):
        feeds["cond"] = np.array(flag)
        np.testing.assert_allclose(run(lowered, feeds)[0], run(m, feeds)[0], rtol=1e-5, atol=1e-6)


def test_input_model_is_not_modified_and_no_rnn_is_a_no_op():
    m = rnn_model("GRU", "forward")
    before = m.SerializeToString()
    LowerRNNPass()(m)
    assert m.SerializeToString() == before
    plain = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]))
    assert LowerRNNPass()(plain) is plain


@pytest.mark.parametrize("kwargs, what", [
    (dict(op="LSTM", clip=1.0), "attribute clip"),
    (dict(op="LSTM", input_forget=1), "attribute input_forget=1"),
    (dict(op="GRU", activations=["HardSigmoid", "Tanh"]), "activations ['HardSigmoid', 'Tanh']"),
    (dict(op="RNN", activations=["Tanh"], activation_alpha=[1.0]), "attribute activation_alpha"),
])
def test_unsupported_attributes_are_refused_in_one_line(kwargs, what):
    m = rnn_model(**kwargs)
    with pytest.raises(GraphpruneError) as err:
        LowerRNNPass()(m)
    msg = str(err.value)
    assert "\n" not in msg and what in msg and f"{kwargs['op']} node 'my_{kwargs['op'].lower()}'" in msg


def test_sequence_lens_and_peepholes_are_refused():
    m = rnn_model("LSTM", init_h=True, init_c=True)
    m.graph.initializer.append(numpy_helper.from_array(np.full(2, 3, np.int32), "lens"))
    m.graph.node[0].input[4] = "lens"
    with pytest.raises(GraphpruneError, match="input sequence_lens is not supported"):
        LowerRNNPass()(m)
    m.graph.node[0].input[4] = ""
    m.graph.initializer.append(numpy_helper.from_array(np.zeros((1, 12), np.float32), "P"))
    m.graph.node[0].input.append("P")
    with pytest.raises(GraphpruneError, match=r"input P \(peepholes\) is not supported"):
        LowerRNNPass()(m)


def test_dynamic_sequence_length_says_to_pin_it():
    with pytest.raises(GraphpruneError, match="dynamic sequence length.*--input-shape"):
        LowerRNNPass()(rnn_model("LSTM", dynamic_seq=True))


def test_length_unknown_at_static_inputs_is_not_blamed_on_input_shape():
    """silero_vad.onnx: the LSTM input comes out of an If whose branches differ in shape, so no
    --input-shape can make its length static: the error says so instead of asking for one."""
    m = rnn_model("RNN", seq=2, batch=1, inp=5)
    vi = helper.make_tensor_value_info
    two = helper.make_graph([helper.make_node("Identity", ["X"], ["a"])], "two", [], [vi("a", TensorProto.FLOAT, None)])
    one = helper.make_graph([helper.make_node("Slice", ["X", "s0", "s1"], ["b"])], "one", [],
                            [vi("b", TensorProto.FLOAT, None)])
    m.graph.initializer.extend([numpy_helper.from_array(np.array([0], np.int64), "s0"),
                                numpy_helper.from_array(np.array([1], np.int64), "s1")])
    m.graph.input.append(vi("flag", TensorProto.BOOL, []))
    m.graph.node.insert(0, helper.make_node("If", ["flag"], ["Xsel"], then_branch=two, else_branch=one))
    m.graph.node[1].input[0] = "Xsel"
    with pytest.raises(GraphpruneError, match="shape inference cannot tell even at static input shapes") as err:
        LowerRNNPass()(m)
    assert "--input-shape" not in str(err.value)


def test_torch_exported_lstm_gru_rnn():
    """What torch.onnx writes (its own W/R reordering into ONNX's iofc / zrh, the bias split)."""
    torch = pytest.importorskip("torch")
    import io
    torch.manual_seed(0)
    mods = [torch.nn.LSTM(6, 5, bidirectional=True), torch.nn.GRU(6, 5), torch.nn.RNN(6, 5, nonlinearity="relu",
                                                                                       bidirectional=True)]
    x = torch.randn(4, 3, 6)
    for mod in mods:
        buf = io.BytesIO()
        torch.onnx.export(mod, (x,), buf, dynamo=False, opset_version=17, input_names=["X"])
        m = onnx.load_from_string(buf.getvalue())
        assert ops_of(m.graph) & set(RECURRENT)
        lowered = LowerRNNPass()(m)
        feeds = {"X": x.numpy()}
        for w, g in zip(run(m, feeds), run(lowered, feeds)):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
