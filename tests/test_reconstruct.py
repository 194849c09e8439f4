"""Least-squares reconstruction (graphprune.recovery.reconstruct, optimize --reconstruct)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphprune as gp
from graphprune.cli import main
from graphprune.recovery.reconstruct import reconstruct
from graphprune.runtime import run


def _t(name, a):
    return numpy_helper.from_array(np.asarray(a, np.float32), name)


def _rel(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def linear_pair(rank: int = 2, relu: bool = False, conv2: dict | None = None, batch=1) -> onnx.ModelProto:
    """x -> conv1 (4 filters; the 4th is 0.1 x the 1st, bias too) [-> Relu] -> conv2 -> y.

    Without the Relu, channel 3 of conv1 is 0.1 x channel 0, so conv2 can read it through channel 0:
    removing it (its filter has the smallest L1 norm) loses nothing a refit of conv2 cannot restore
    exactly. `rank` 1: Conv1d; conv2: extra attributes (strides, dilations, pads, auto_pad)."""
    rng = np.random.default_rng(0)
    k = (3,) * rank
    w1 = rng.normal(0, 1, (4, 3) + k) + np.sign(rng.normal(0, 1, (4, 3) + k))
    b1 = rng.normal(0, 1, 4)
    w1[3], b1[3] = 0.1 * w1[0], 0.1 * b1[0]
    w2 = rng.normal(0, 1, (5, 4) + k)
    pads = [1] * 2 * rank
    a2 = {"pads": pads, **(conv2 or {})}
    if "auto_pad" in a2:
        a2.pop("pads")
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=pads)]
    mid = "c1"
    if relu:
        nodes.append(helper.make_node("Relu", ["c1"], ["r1"], name="relu1"))
        mid = "r1"
    nodes.append(helper.make_node("Conv", [mid, "w2", "b2"], ["y"], name="conv2", **a2))
    size = [12] * rank
    g = helper.make_graph(nodes, "pair", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3] + size)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [_t("w1", w1), _t("b1", b1), _t("w2", w2), _t("b2", rng.normal(0, 1, 5))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def _pruned(model, keep):
    m = gp.load(model)
    plan = gp.choose(gp.analyse(m), keep=keep, criterion="l1")
    return m, plan, gp.prune(m, plan)


def _x(n, rank=2, seed=1):
    return np.random.default_rng(seed).normal(0, 1, (n, 3) + (12,) * rank).astype(np.float32)


@pytest.mark.parametrize("rank,conv2", [(2, None), (1, None),
                                        (2, {"strides": [2, 1], "dilations": [2, 2], "pads": [2, 1, 0, 2]}),
                                        (1, {"strides": [2], "dilations": [2], "pads": [1, 2]}),
                                        (2, {"auto_pad": "VALID"})])
def test_a_channel_the_others_carry_is_restored_exactly(rank, conv2):
    m, plan, p = _pruned(linear_pair(rank, conv2=conv2), {0: 3})
    assert plan.keep_units[plan.analysis.units_of_group(0)].tolist() == [True, True, True, False]   # smallest L1 goes
    x = _x(8, rank)
    ref = run(m, {"x": x[:1]})[0]
    raw = run(p, {"x": x[:1]})[0]
    assert _rel(raw, ref) > 1e-2                                    # pruning alone loses it
    got, rep = reconstruct(m, plan, p, x, ridge=1e-9)
    assert rep.layers == 1 and rep.passes == 1 and rep.samples == 8 and not rep.skipped
    assert _rel(run(got, {"x": x[:1]})[0], ref) < 1e-4               # the refit restores it
    assert rep.error_after[0] < 1e-8 < rep.error_before[0]
    # the default ridge keeps it close too, and the refit is what the report says
    got2, rep2 = reconstruct(m, plan, p, x)
    assert _rel(run(got2, {"x": x[:1]})[0], ref) < 1e-2
    assert "1 convolution(s) refitted by least squares on 8 samples" in rep2.text


def test_inputs_are_not_modified_and_the_graph_keeps_its_structure():
    m, plan, p = _pruned(linear_pair(relu=True), {0: 2})
    before = (m.SerializeToString(), p.SerializeToString())
    got, rep = reconstruct(m, plan, p, _x(4))
    assert (m.SerializeToString(), p.SerializeToString()) == before
    assert [n.op_type for n in got.graph.node] == [n.op_type for n in p.graph.node]
    def kernel(model, conv):
        name = next(n.input[1] for n in model.graph.node if n.name == conv)
        return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)
    assert kernel(got, "conv2").shape == kernel(p, "conv2").shape == (5, 2, 3, 3)
    assert not np.allclose(kernel(got, "conv2"), kernel(p, "conv2"))
    assert np.array_equal(kernel(got, "conv1"), kernel(p, "conv1"))     # producers are left as they are
    onnx.checker.check_model(got)


def test_relu_network_refit_lowers_the_output_error_on_unseen_samples():
    m, plan, p = _pruned(linear_pair(relu=True), {0: 2})
    x, held = _x(16), _x(4, seed=7)
    ref = np.concatenate([run(m, {"x": held[i:i + 1]})[0] for i in range(4)])
    raw = np.concatenate([run(p, {"x": held[i:i + 1]})[0] for i in range(4)])
    got, _ = reconstruct(m, plan, p, x)
    new = np.concatenate([run(got, {"x": held[i:i + 1]})[0] for i in range(4)])
    assert np.mean((new - ref) ** 2) < 0.9 * np.mean((raw - ref) ** 2)   # measured: 0.75 x


def chain3() -> onnx.ModelProto:
    """x -> conv1 (6) -> Relu -> conv2 (6) -> Relu -> conv3 (4): two groups, refitted in two levels."""
    rng = np.random.default_rng(3)
    nodes, inits, prev = [], [], "x"
    for i, (co, ci) in enumerate(((6, 3), (6, 6), (4, 6)), 1):
        inits += [_t(f"w{i}", rng.normal(0, 0.5, (co, ci, 3, 3))), _t(f"b{i}", rng.normal(0, 0.1, co))]
        nodes.append(helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", pads=[1] * 4))
        prev = f"c{i}"
        if i < 3:
            nodes.append(helper.make_node("Relu", [prev], [f"r{i}"], name=f"relu{i}"))
            prev = f"r{i}"
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 12, 12])],
                          [helper.make_tensor_value_info(prev, TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def test_levels_each_conv_is_fitted_on_the_refitted_input_upstream():
    """conv3 is fitted after conv2: fitting both on the unrefitted inputs gives another (worse) conv3."""
    m, plan, p = _pruned(chain3(), {0: 4, 1: 4})
    x = _x(16)
    got, rep = reconstruct(m, plan, p, x)
    assert rep.layers == 2 and rep.passes == 2
    # conv3's kernel is the least-squares fit to the original on conv2's REFITTED output
    ref = run(m, {"x": x})[0]
    assert np.mean((run(got, {"x": x})[0] - ref) ** 2) < np.mean((run(p, {"x": x})[0] - ref) ** 2)


def test_same_padding_is_left_and_listed():
    m, plan, p = _pruned(linear_pair(conv2={"auto_pad": "SAME_UPPER"}), {0: 3})
    got, rep = reconstruct(m, plan, p, _x(4))
    assert rep.layers == 0 and rep.skipped == ["conv2 (SAME padding)"]
    assert "no convolution reads pruned channels that can be refitted (skipped conv2 (SAME padding))" in rep.text
    assert got.SerializeToString() == p.SerializeToString()


def test_fixed_batch_model_runs_sample_by_sample():
    m, plan, p = _pruned(linear_pair(batch=1), {0: 3})
    got, rep = reconstruct(m, plan, p, _x(5), ridge=1e-9)
    x = _x(1, seed=9)
    assert rep.samples == 5 and _rel(run(got, {"x": x})[0], run(m, {"x": x})[0]) < 1e-4


def test_nonsense_data_is_a_one_line_error():
    m, plan, p = _pruned(linear_pair(), {0: 3})
    with pytest.raises(gp.GraphpruneError, match="reconstruction: the data does not run through the model"):
        reconstruct(m, plan, p, np.zeros((2, 5, 12, 12), np.float32))


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path / "cache"))


def test_optimize_reconstruct_judges_candidates_refitted_and_delivers_what_it_judged(tmp_path):
    """Unlabelled data (fidelity): every measured candidate's error is that of the refitted model."""
    from graphprune.metrics import evaluate, get_metric, reference_outputs
    from graphprune.search.stages import fixed_subset
    m = chain3()
    onnx.save(m, tmp_path / "m.onnx")
    x = _x(40)
    np.savez(tmp_path / "d.npz", x=x[:24])
    np.savez(tmp_path / "t.npz", x=x[24:])
    out = tmp_path / "out"
    rc = main(["optimize", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"), "--train-data",
               str(tmp_path / "t.npz"), "-o", str(out), "--reconstruct", "--reconstruct-samples", "8",
               "--budget", "4", "--repeats", "3", "--channel-step", "1", "--holdout", "2",
               "--sensitivity-ratios", "0.5", "--no-progress"])
    assert rc == 0
    lines = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    assert lines[0]["reconstruct"] == {"samples": 8, "seed": 0}
    model = gp.load(str(tmp_path / "m.onnx"))
    an = gp.analyse(model)
    rx = fixed_subset(x[:24], 8, 13)   # without --epochs, --train-data is not read: --data
    metric = get_metric("fidelity", model, has_labels=False)
    ref = reference_outputs(model, x[:24], metric)
    checked = 0
    for r in (r for r in lines[1:] if r["type"] == "measured"):
        cfg = {int(k): v for k, v in r["config"].items()}
        if all(cfg[g.id] == g.units for g in an.groups if g.prunable):
            continue
        plan = gp.choose(an, keep=cfg, criterion="l1")
        fitted = reconstruct(model, plan, gp.prune(model, plan), rx)[0]
        assert r["error"] == pytest.approx(1 - evaluate(fitted, x[:24], metric, ref), abs=1e-9)
        checked += 1
    assert checked >= 2


def test_reconstruct_with_quantize_is_refused_in_one_line(tmp_path, capsys):
    onnx.save(chain3(), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=_x(8))
    out = tmp_path / "o"
    rc = main(["optimize", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"), "-o", str(out),
               "--reconstruct", "--quantize", "int8", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--reconstruct cannot be combined with --quantize int8" in err and "\n" not in err
    assert not out.exists()


def test_recovery_refits_once_in_one_step_before_training():
    """finetune.recover with reconstruct_x: one pruning step (whatever --finetune-steps says), the refit
    reported, and training starts from the refitted model (a zero learning rate ends exactly there)."""
    from graphprune.data.dataset import Dataset
    from graphprune.search.finetune import recover
    model = gp.load(chain3())
    an = gp.analyse(model)
    x = _x(24)
    ref = run(model, {"x": x[:8]})[0]

    def error_fn(m):
        return float(np.mean((run(m, {"x": x[:8]})[0] - ref) ** 2) / np.mean(ref ** 2))
    plan = gp.choose(an, keep={0: 4, 1: 4}, criterion="l1")
    fitted = reconstruct(model, plan, gp.prune(model, plan), x[8:])[0]
    logs = []
    got, rep = recover(model, an, {0: 4, 1: 4}, "l1", Dataset(x[8:]), x[:8],
                       None, epochs=1e-9, steps=3, lr=1e-12, batch_size=8, log=logs.append, error_fn=error_fn,
                       distill_weight=1.0, reconstruct_x=x[8:], before=fitted)
    assert rep["steps"] == 1 and rep["reconstruction"]["layers"] == 2
    assert any("prunes in one step (not 3)" in m for m in logs)
    assert error_fn(got) == pytest.approx(error_fn(fitted), rel=1e-3)
    assert error_fn(fitted) < error_fn(gp.prune(model, plan))
