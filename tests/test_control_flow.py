"""Control flow: Ifs with a constant condition are inlined; channels are followed into data-
dependent If branches and Loop bodies, and convs inside them are pruned. Real models: silero-vad."""
import glob
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphprune as gp
from graphprune.passes import ZeroRemovedChannelsPass
from graphprune.runtime import run
from onnx_builders import model, out, w, x_input

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _branch(name, nodes, outputs, inits=None):
    return helper.make_graph(nodes, name, [], outputs,
                             [numpy_helper.from_array(v, k) for k, v in (inits or {}).items()])


def _vi(name, c=4):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", c, 8, 8])


def data_dependent_if():
    """cond is an input: each branch runs two convs on the outer conv's output `ar` (read from
    the outer scope, weights in Constant nodes inside the branch); the If output feeds a conv."""
    then_g = _branch("then", [
        helper.make_node("Constant", [], ["tw1"], value=numpy_helper.from_array(w(6, 8, 3, 3))),
        helper.make_node("Conv", ["ar", "tw1"], ["t1"], pads=[1, 1, 1, 1], name="t_conv1"),
        helper.make_node("Relu", ["t1"], ["t1r"]),
        helper.make_node("Conv", ["t1r", "tw2"], ["t2"], name="t_conv2"),
    ], [_vi("t2")], {"tw2": w(4, 6, 1, 1)})
    else_g = _branch("else", [
        helper.make_node("Conv", ["ar", "ew1"], ["e1"], name="e_conv1"),
        helper.make_node("Sigmoid", ["e1"], ["e1s"]),
        helper.make_node("Conv", ["e1s", "ew2"], ["e2"], pads=[1, 1, 1, 1], name="e_conv2"),
    ], [_vi("e2")], {"ew1": w(5, 8, 1, 1), "ew2": w(4, 5, 3, 3)})
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["a"], pads=[1, 1, 1, 1], name="conv0"),
        helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node("If", ["cond"], ["f"], then_branch=then_g, else_branch=else_g, name="branch"),
        helper.make_node("Relu", ["f"], ["fr"]),
        helper.make_node("Conv", ["fr", "w3"], ["y"], name="conv3"),
    ]
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    return model(nodes, {"w0": w(8, 3, 3, 3), "w3": w(3, 4, 1, 1)}, [x_input(), cond], [out()])


def _check_both_branches(raw, plan, pruned):
    reference = ZeroRemovedChannelsPass(plan).run(plan.analysis.model)
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    for c in (True, False):
        feeds = {"x": x, "cond": np.array(c)}
        want, got = run(reference, feeds)[0], run(pruned, feeds)[0]
        assert got.shape == run(raw, feeds)[0].shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_convs_inside_a_data_dependent_if_are_pruned_in_both_branches():
    raw = data_dependent_if()
    m = gp.load(raw)
    an = gp.analyse(m)
    by_producer = {tuple(sorted(g.producers)): g for g in an.groups}
    assert all(g.prunable for g in an.groups if g.producers != ["conv3"]), [(g.producers, g.reason) for g in an.groups]
    assert ("e_conv2", "t_conv2") in by_producer       # the If output couples both branches
    assert ("t_conv1",) in by_producer and ("e_conv1",) in by_producer
    plan = gp.choose(an, ratio=0.5)
    pruned = gp.prune(m, plan)
    assert gp.count(pruned).params < 0.6 * gp.count(m).params
    _check_both_branches(raw, plan, pruned)
    report = gp.verify(m, plan, pruned)  # its random feed takes one branch
    assert report.passed and report.exact


def test_branches_that_disagree_freeze_the_if_output():
    raw = data_dependent_if()
    else_g = next(a for a in raw.graph.node[2].attribute if a.name == "else_branch").g
    else_g.node.append(helper.make_node("Neg", ["u"], ["e3"]))
    del else_g.output[:]
    else_g.output.append(_vi("e3"))  # channels of an input the analysis does not follow
    raw.graph.input.append(_vi("u"))
    m = gp.load(raw)
    an = gp.analyse(m)
    then_out = next(g for g in an.groups if g.producers == ["t_conv2"])
    assert not then_out.prunable and "branches of If" in then_out.reason
    plan = gp.choose(an, ratio=0.5)
    pruned = gp.prune(m, plan)
    reference = ZeroRemovedChannelsPass(plan).run(plan.analysis.model)
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    for c in (True, False):
        feeds = {"x": x, "cond": np.array(c), "u": np.ones((2, 4, 8, 8), np.float32)}
        np.testing.assert_allclose(run(pruned, feeds)[0], run(reference, feeds)[0], rtol=1e-4, atol=1e-5)


def test_if_with_a_constant_or_shape_condition_is_inlined():
    raw = data_dependent_if()
    shape_cond = [helper.make_node("Shape", ["x"], ["xs"]),
                  helper.make_node("Constant", [], ["i1"], value=numpy_helper.from_array(np.array(1, np.int64))),
                  helper.make_node("Gather", ["xs", "i1"], ["c"], axis=0),
                  helper.make_node("Constant", [], ["three"], value=numpy_helper.from_array(np.array(3, np.int64))),
                  helper.make_node("Equal", ["c", "three"], ["cond2"])]
    raw.graph.node[2].input[0] = "cond2"
    for n in reversed(shape_cond):
        raw.graph.node.insert(0, n)
    del raw.graph.input[1]
    m = gp.load(raw)
    assert not any(n.op_type == "If" for n in m.graph.node)
    assert {"t_conv1", "t_conv2"} <= {n.name for n in m.graph.node}
    plan = gp.choose(gp.analyse(m), ratio=0.5)
    pruned = gp.prune(m, plan)
    report = gp.verify(m, plan, pruned)
    assert report.passed and report.exact


def test_rank_test_behind_an_outer_scope_pad_is_inlined():
    """An If on data whose branch pads with widths from the main graph's initializers, then
    tests `x.size(2) == 1` (TorchScript-style shape branching): onnx's shape inference reads constant
    values only from the graph it infers, so the widths must reach the body for the test to
    fold. Only the data-dependent If remains, and both branches compute what they did."""
    xin = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6])
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    inner_then = _branch("sq", [helper.make_node("Unsqueeze", ["p", "ax0"], ["s"])],
                         [helper.make_tensor_value_info("s", TensorProto.FLOAT, None)])
    inner_else = _branch("id", [helper.make_node("Identity", ["p"], ["s2"])],
                         [helper.make_tensor_value_info("s2", TensorProto.FLOAT, None)])
    then_g = _branch("then", [
        helper.make_node("Pad", ["x", "pads"], ["p"]),
        helper.make_node("Shape", ["p"], ["sh"]),
        helper.make_node("Gather", ["sh", "two"], ["d2"]),
        helper.make_node("Equal", ["d2", "one"], ["is1"]),
        helper.make_node("If", ["is1"], ["r"], then_branch=inner_then, else_branch=inner_else, name="rank_test"),
        helper.make_node("Relu", ["r"], ["t"]),
    ], [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    else_g = _branch("else", [helper.make_node("Neg", ["x"], ["e"])],
                     [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    g = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g, name="on_data")],
        "g", [xin, cond], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 2], np.int64), "pads"),
         numpy_helper.from_array(np.array(2, np.int64), "two"), numpy_helper.from_array(np.array(1, np.int64), "one"),
         numpy_helper.from_array(np.array([0], np.int64), "ax0")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    from graphprune.passes import NormalizePass
    n = NormalizePass()(m)

    def ifs(graph):
        return [nd.name for nd in graph.node if nd.op_type == "If"] + \
            [x for nd in graph.node for a in nd.attribute if a.type == onnx.AttributeProto.GRAPH for x in ifs(a.g)]
    assert ifs(n.graph) == ["on_data"]
    x = np.random.default_rng(0).standard_normal((1, 4, 6)).astype(np.float32)
    for c in (True, False):
        feeds = {"x": x, "cond": np.array(c)}
        np.testing.assert_array_equal(run(n, feeds)[0], run(m, feeds)[0])


def test_loop_body_convs_are_followed_and_what_crosses_the_body_is_frozen():
    body = helper.make_graph([
        helper.make_node("Conv", ["ar", "bw1"], ["b1"], name="body_conv1"),
        helper.make_node("Relu", ["b1"], ["b1r"]),
        helper.make_node("Conv", ["b1r", "bw2"], ["b2"], name="body_conv2"),
        helper.make_node("Add", ["acc_in", "b2"], ["acc_out"]),
        helper.make_node("Identity", ["cond_in"], ["cond_out"]),
    ], "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []), _vi("acc_in")],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), _vi("acc_out")],
        [numpy_helper.from_array(w(6, 8, 1, 1), "bw1"), numpy_helper.from_array(w(4, 6, 1, 1), "bw2")])
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["a"], pads=[1, 1, 1, 1], name="conv0"),
        helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node("Conv", ["ar", "wz"], ["z"], name="convz"),
        helper.make_node("Loop", ["trips", "", "z"], ["y"], body=body, name="loop"),
    ]
    raw = model(nodes, {"w0": w(8, 3, 3, 3), "wz": w(4, 8, 1, 1), "trips": np.array(3, np.int64)},
                [x_input()], [_vi("y")])
    m = gp.load(raw)
    an = gp.analyse(m)
    groups = {tuple(g.producers): g for g in an.groups}
    assert groups[("body_conv1",)].prunable
    assert not groups[("conv0",)].prunable and "body of Loop" in groups[("conv0",)].reason
    plan = gp.choose(an, ratio=0.5)
    pruned = gp.prune(m, plan)
    report = gp.verify(m, plan, pruned)
    assert report.passed and report.exact and report.shapes_equal


SILERO = sorted(glob.glob(os.path.join(ROOT, ".cache/models/silero-vad/*.onnx")))
SILERO_IF = [p for p in SILERO if os.path.basename(p) in
             ("silero_vad.onnx", "silero_vad_16k_op15.onnx", "silero_vad_op18_ifless.onnx")]


def _silero_feeds(length, sr):
    x = np.random.default_rng(0).standard_normal((1, length)).astype(np.float32)
    return {"input": x, "state": np.zeros((2, 1, 128), np.float32), "sr": np.array(sr, np.int64)}


@pytest.mark.skipif(not SILERO_IF, reason="run tools/fetch_real_models.sh (make test does)")
@pytest.mark.parametrize("path", SILERO_IF, ids=os.path.basename)
def test_silero_vad_if_models_prune_their_convs(path):
    raw = onnx.load(path)
    m = gp.load(raw)
    shapes = {"input": [1, 256], "state": [2, 1, 128]}
    an = gp.analyse(m, input_shapes=shapes)
    convs = {n.name for n in gp.analysis.all_nodes(m.graph) if n.op_type == "Conv"}
    pruned_convs = {p for g in an.groups if g.prunable for p in g.producers}
    assert len(pruned_convs & convs) >= 4
    plan = gp.choose(an, ratio=0.3)
    pruned = gp.prune(m, plan, input_shapes=shapes)  # the onnxruntime run needs silero's chunk shape
    assert gp.count(pruned).params < 0.85 * gp.count(m).params
    report = gp.verify(m, plan, pruned, input_shapes=shapes)  # sr=0: the 8 kHz path
    assert report.passed and report.exact and report.shapes_equal
    reference = ZeroRemovedChannelsPass(plan).run(plan.analysis.model)
    for length, sr in ((512, 16000), (256, 8000)):
        feeds = _silero_feeds(length, sr)
        want, got, orig = run(reference, feeds), run(pruned, feeds), run(raw, feeds)
        assert [g.shape for g in got] == [o.shape for o in orig]
        for a, b in zip(want, got):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_count_includes_the_costlier_branch_of_an_if():
    """MACs inside If branches count (the costlier one: which runs depends on the data)."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)

    def branch(name, out_ch):
        w = numpy_helper.from_array(rng.standard_normal((out_ch, 3, 3, 3)).astype(np.float32), f"w_{name}")
        conv = helper.make_node("Conv", ["x", f"w_{name}"], [f"y_{name}"], pads=[1, 1, 1, 1])
        return helper.make_graph([conv], name, [], [helper.make_tensor_value_info(f"y_{name}", TensorProto.FLOAT,
                                                                                   None)]), w

    then_g, w_then = branch("then", 8)
    else_g, w_else = branch("else", 2)
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5]),
         helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w_then, w_else])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert gp.count(m).macs == 8 * 5 * 5 * 3 * 3 * 3


@pytest.mark.skipif(not any(p.endswith("/silero_vad.onnx") for p in SILERO),
                    reason="run tools/fetch_real_models.sh (make test does)")
def test_count_sees_into_silero_vads_computed_branch_shapes():
    """silero_vad.onnx keeps its weights in Constant nodes inside the sample-rate If and computes
    its Pad widths there: the count is the costlier branch's MACs, the same as counting each
    sample rate's network with the If inlined (sr made a constant), and its params are the
    Constant weights of both branches."""
    path = next(p for p in SILERO if p.endswith("/silero_vad.onnx"))
    m = onnx.load(path)
    shapes = {"input": [1, 256], "state": [2, 1, 128]}
    per_rate = []
    for sr in (8000, 16000):
        fixed = onnx.ModelProto()
        fixed.CopyFrom(m)
        kept = [i for i in fixed.graph.input if i.name != "sr"]
        del fixed.graph.input[:]
        fixed.graph.input.extend(kept)
        fixed.graph.initializer.append(numpy_helper.from_array(np.array(sr, np.int64), "sr"))
        from graphprune.inputs import with_static_inputs
        from graphprune.passes import NormalizePass
        inlined = NormalizePass()(with_static_inputs(fixed, shapes))
        assert not [n for n in inlined.graph.node if n.op_type == "If"]
        per_rate.append(gp.count(inlined, shapes).macs)
    got = gp.count(m, shapes)
    assert min(per_rate) > 0 and got.macs == max(per_rate)
    assert got.params > 2 * 100_000
