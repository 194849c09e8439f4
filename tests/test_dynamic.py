"""graphprune dynamic: the exported ONNX model equals the torch gated model on every input, on
both paths; the graph facts (branch point, gates); exact integer tables; one-line errors."""
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import graphprune as gp
from graphprune.dynamic.build import DynamicOptions, build_dynamic, prepare
from graphprune.dynamic.export import with_threshold
from graphprune.dynamic.graph import default_branch, split_model
from graphprune.dynamic.measure import predictions
from graphprune.dynamic.selection import integer_table, select_numpy
from graphprune.dynamic.subsets import specialise
from graphprune.errors import GraphpruneError
from graphprune.runtime import session

CLASSES = 4


def _cnn(opset=17):
    """conv-BN-relu-pool, conv-BN-relu (t2), [conv-BN-relu, conv+bias-relu] + t2 (residual), relu,
    conv+bias-LeakyRelu, GAP, Flatten, Gemm: two gateable convs after t2 (c3 into c4; c5 into the
    Gemm, no BN), one that is not (c4 meets the residual Add)."""
    rng = np.random.default_rng(0)
    inits, nodes = {}, []

    def W(name, *shape, scale=0.5):
        inits[name] = (rng.standard_normal(shape) * scale).astype(np.float32)
        return name

    def bn(name, c, x, y):
        inits[f"{name}.g"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        inits[f"{name}.b"] = rng.normal(0, 0.1, c).astype(np.float32)
        inits[f"{name}.m"] = rng.normal(0, 0.1, c).astype(np.float32)
        inits[f"{name}.v"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        nodes.append(helper.make_node("BatchNormalization", [x, f"{name}.g", f"{name}.b", f"{name}.m", f"{name}.v"],
                                      [y], name=name))

    def conv(name, x, y, cin, cout, bias=False):
        ins = [x, W(f"{name}.w", cout, cin, 3, 3)] + ([W(f"{name}.bias", cout, scale=0.1)] if bias else [])
        nodes.append(helper.make_node("Conv", ins, [y], name=name, pads=[1, 1, 1, 1]))

    conv("c1", "x", "c1o", 1, 4)
    bn("bn1", 4, "c1o", "b1o")
    nodes += [helper.make_node("Relu", ["b1o"], ["r1"], name="relu1"),
              helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2])]
    conv("c2", "p1", "c2o", 4, 8)
    bn("bn2", 8, "c2o", "b2o")
    nodes.append(helper.make_node("Relu", ["b2o"], ["t2"], name="relu2"))
    conv("c3", "t2", "c3o", 8, 8)
    bn("bn3", 8, "c3o", "b3o")
    nodes.append(helper.make_node("Relu", ["b3o"], ["r3"], name="relu3"))
    conv("c4", "r3", "c4o", 8, 8, bias=True)
    nodes += [helper.make_node("Add", ["c4o", "t2"], ["a4"], name="add4"),
              helper.make_node("Relu", ["a4"], ["r4"], name="relu4")]
    conv("c5", "r4", "c5o", 8, 6, bias=True)
    nodes += [helper.make_node("LeakyRelu", ["c5o"], ["r5"], name="lrelu5", alpha=0.1),
              helper.make_node("GlobalAveragePool", ["r5"], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
              helper.make_node("Gemm", ["flat", W("fc.w", CLASSES, 6), W("fc.b", CLASSES, scale=0.1)], ["logits"],
                               name="fc", transB=1)]
    g = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _data(model, n=96, seed=1):
    """Random inputs labelled by the model itself (a task the branch can learn)."""
    x = np.random.default_rng(seed).standard_normal((n, 1, 8, 8)).astype(np.float32)
    y = session(model).run(None, {"x": x})[0].argmax(1).astype(np.int64)
    return x, y


_FAST = dict(samples=96, importance_samples=32, epochs=1, batch_size=16, head_steps=60, progress=False)


def _build(head_grid=1):
    m = _cnn()
    x, y = _data(m)
    return m, x, y, build_dynamic(m, (x, y), DynamicOptions(k=2, threshold=0.5, budget=0.5, head_grid=head_grid,
                                                            branch_at="middle", dispatch="gather", **_FAST))


@pytest.fixture(scope="module")
def built():
    return _build()


@pytest.fixture(scope="module")
def built_grid():
    """The head on a 2 x 2 AveragePool grid of the branch map instead of its global average."""
    return _build(head_grid=2)


def test_graph_split_and_gates():
    m = gp.load(_cnn())
    assert default_branch(m) == "t2"
    s = split_model(m, "t2", 0.5)
    assert s.rest_inputs == ["t2"] and s.output == "logits" and s.classes == CLASSES
    assert [(g.producer, g.bn, g.out, g.consumer, g.channels, g.keep) for g in s.gates] == \
        [("c3", "bn3", "b3o", "c4", 8, 4), ("c5", None, "c5o", "fc", 6, 3)]


@pytest.mark.parametrize("which,form", [("built", "gather"), ("built", "subsets"), ("built_grid", "gather")])
def test_onnx_equals_torch_on_every_input_both_paths(which, form, request):
    """Both forms of the gated path (weights gathered per input; one constant-weight rest per class
    subset, graphprune.dynamic.subsets) compute the torch gated model's function."""
    m, x, y, r = request.getfixturevalue(which)
    with torch.no_grad():
        conf = torch.softmax(r.net.branch_logits(r.net.features(torch.from_numpy(x))), 1).max(1).values.numpy()
    thr = float(np.median(conf))   # half the inputs exit, half take the gated path
    r.net.threshold = thr
    model = with_threshold(r.model if form == "gather" else specialise(r.model), thr)
    onnx.checker.check_model(model, full_check=True)
    scores, exits = predictions(model, x)
    with torch.no_grad():
        ref = r.net(torch.from_numpy(x)).numpy()
        ref_exits = r.net.decide(torch.from_numpy(x)).numpy()
    assert 0 < exits.sum() < len(x)
    np.testing.assert_array_equal(exits, ref_exits)
    for a, b in zip(scores, ref):   # each output at its own scale
        assert np.abs(a - b).max() <= 1e-5 * max(np.abs(b).max(), 1e-30), (a, b)
    # the gated path is really gated: its scores differ from the full model's
    full = session(m).run(None, {"x": x})[0]
    assert np.abs(scores[~exits] - full[~exits]).max() > 1e-3
    # the early exit returns the branch's scores
    with torch.no_grad():
        z = r.net.branch_logits(r.net.features(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(scores[exits], z[exits], rtol=1e-5, atol=1e-6)


def test_gathered_filters_are_the_masked_ones(built):
    """The filters the ONNX model gathers for an input are the torch masks' ones (exit output off)."""
    m, x, y, r = built
    model = with_threshold(r.model, 2.0)
    extra = onnx.ModelProto()
    extra.CopyFrom(model)
    # expose the else branch's index tensors through a copy whose If returns them
    else_g = next(a.g for a in next(n for n in extra.graph.node if n.op_type == "If").attribute
                  if a.name == "else_branch")
    then_g = next(a.g for a in next(n for n in extra.graph.node if n.op_type == "If").attribute
                  if a.name == "then_branch")
    for i, g in enumerate(r.split.gates):
        name = f"dyn/g{i}/idx"
        else_g.output.append(helper.make_tensor_value_info(name, TensorProto.INT64, [g.keep]))
        then_g.node.append(helper.make_node("Constant", [], [f"then/{i}"],
                                            value=numpy_helper.from_array(np.zeros(g.keep, np.int64))))
        then_g.output.append(helper.make_tensor_value_info(f"then/{i}", TensorProto.INT64, [g.keep]))
        next(n for n in extra.graph.node if n.op_type == "If").output.append(f"out/{i}")
        extra.graph.output.append(helper.make_tensor_value_info(f"out/{i}", TensorProto.INT64, [g.keep]))
    sess = session(extra)
    with torch.no_grad():
        masks = r.net.masks(r.net.subsets(r.net.branch_logits(r.net.features(torch.from_numpy(x)))))
    for j in range(len(x)):
        outs = sess.run(None, {"x": x[j:j + 1]})
        for i in range(len(r.split.gates)):
            assert sorted(outs[1 + i].tolist()) == np.flatnonzero(masks[i][j].numpy()).tolist()


def test_integer_table_sums_are_exact_and_distinct():
    rng = np.random.default_rng(0)
    pc = rng.uniform(0, 1, (10, 64))
    pc[:, 5:20] = 0.0   # dead filters: equal (zero) for every class
    t = integer_table(pc, 3)
    assert t.dtype == np.float32 and np.all(t == np.round(t))
    s = t[[1, 4, 7]].sum(0)
    assert len(set(s.tolist())) == 64 and s.max() < 2 ** 24
    np.testing.assert_array_equal(s, t[[1, 4, 7]].astype(np.float64).sum(0))
    kept = select_numpy(t, [1, 4, 7], 50)
    # every filter with importance outranks the dead ones, which go lowest index first
    assert set(range(20, 64)) | set(range(5)) <= set(kept.tolist()) and kept[-1] == 5


def test_metadata_and_batch_one(built):
    _, x, _, r = built
    from graphprune import metadata as md
    meta = md.get_json(r.model, "graphprune.dynamic")
    assert meta["k"] == 2 and meta["branch"] == "t2" and [g["kept"] for g in meta["gates"]] == [4, 3]
    assert r.model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    with pytest.raises(Exception):   # the gating is per input: a batch of 2 is refused by the runtime
        session(r.model).run(None, {"x": x[:2]})


def test_opset13_model_is_converted():
    m = prepare(_cnn(opset=13))
    assert next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17


def test_bad_options_refused():
    m = _cnn()
    x, y = _data(m, n=16)
    with pytest.raises(GraphpruneError, match="no labels"):
        build_dynamic(m, (x, None), DynamicOptions(**_FAST))
    with pytest.raises(GraphpruneError, match="larger than the model's 4 classes"):
        build_dynamic(m, (x, y), DynamicOptions(k=5, **_FAST))
    with pytest.raises(GraphpruneError, match="neither a node nor a tensor"):
        build_dynamic(m, (x, y), DynamicOptions(branch_at="nope", **_FAST))
    with pytest.raises(GraphpruneError, match="no conv after branch point"):
        build_dynamic(m, (x, y), DynamicOptions(branch_at="r5", **_FAST))
    with pytest.raises(GraphpruneError, match="per-class"):
        build_dynamic(m, (x, y), DynamicOptions(method="l1", **_FAST))


def _gp(capsys, *args):
    """The CLI in this process (torch is imported already; a subprocess would spend seconds on it)."""
    from graphprune.cli import main
    code = main(["dynamic", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("extra,needle", [(["--k", "5"], "larger than the model's 4 classes"),
                                          (["--branch-at", "fc.w"], "neither a node nor a tensor"),
                                          ("nolabels", "labels y are needed")])
def test_cli_one_line_errors(tmp_path, capsys, extra, needle):
    m = _cnn()
    p = tmp_path / "m.onnx"
    onnx.save(m, str(p))
    x, y = _data(m, n=16)
    data = tmp_path / "d.npz"
    if extra == "nolabels":
        np.savez(data, x=x)
        extra = []
    else:
        np.savez(data, x=x, y=y)
    code, out, err = _gp(capsys, p, "--data", data, "-o", tmp_path / "o.onnx", *extra)
    assert code == 2 and err.startswith("graphprune: error: ") and needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "o.onnx").exists()


def test_cli_writes_the_model(tmp_path, capsys):
    m = _cnn()
    p = tmp_path / "m.onnx"
    onnx.save(m, str(p))
    before = p.read_bytes()
    x, y = _data(m, n=64)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    code, out, err = _gp(capsys, p, "--data", tmp_path / "d.npz", "-o", tmp_path / "o.onnx", "--k", "2",
                         "--branch-at", "middle", "--samples", "64", "--importance-samples", "16", "--epochs", "0.5",
                         "--batch-size", "16", "--no-progress")
    assert code == 0, err
    assert "branch at t2" in out and "2 gated convs (4/8, 3/6 filters kept per input)" in out
    assert p.read_bytes() == before
    d = onnx.load(str(tmp_path / "o.onnx"))
    onnx.checker.check_model(d, full_check=True)
    assert [n.op_type for n in d.graph.node][-1] == "If"
    assert session(d).run(None, {"x": x[:1]})[0].shape == (1, CLASSES)


def test_tvm_compiles_and_agrees_with_onnxruntime_on_both_paths(built):
    """The one ONNX model compiles with TVM's Relax importer (If, TopK, Gather of weights) and
    gives onnxruntime's scores on exiting and gated inputs alike."""
    from graphprune.targets import compile_model
    from graphprune.targets.measure_local import run_tvm_local
    _, x, _, r = built
    with torch.no_grad():
        conf = torch.softmax(r.net.branch_logits(r.net.features(torch.from_numpy(x))), 1).max(1).values.numpy()
    model = with_threshold(r.model, float(np.median(conf)))
    scores, exits = predictions(model, x)
    picks = list(np.flatnonzero(exits)[:3]) + list(np.flatnonzero(~exits)[:3])
    assert len(picks) == 6
    for form in (model, specialise(model)):    # gather form, subset-dispatch form (nested Ifs)
        compiled = compile_model(form, "x86")
        for i in picks:
            got = run_tvm_local(compiled, {"x": x[i:i + 1]})[0]
            assert np.abs(got - scores[i]).max() <= 1e-5 * np.abs(scores[i]).max(), i


def test_with_threshold_refuses_a_model_that_is_not_dynamic():
    with pytest.raises(GraphpruneError, match="not a graphprune dynamic model"):
        with_threshold(_cnn(), 2.0)


def test_head_pool_grid():
    from graphprune.dynamic.graph import head_pool
    m = gp.load(_cnn())   # t2 is 4 x 4
    assert head_pool(m, "t2", 1) is None
    assert head_pool(m, "t2", 2) == ([2, 2], [2, 2])
    assert head_pool(m, "t2", 3) == ([2, 2], [1, 1])
    with pytest.raises(GraphpruneError, match="static H, W >= 5"):
        head_pool(m, "t2", 5)
