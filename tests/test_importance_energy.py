"""`graphprune importance --method energy` (graphprune.importance.energy): activation energy into the readers."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphprune as gp
from graphprune.cli import main
from graphprune.importance import compute_importance
from graphprune.metadata import read_importance
from graphprune.runtime import run


def _t(name, a):
    return numpy_helper.from_array(np.asarray(a, np.float32), name)


def residual_net() -> onnx.ModelProto:
    """x -> conv1 (4) -> Relu -> r; r + conv2(r) (4) -> s; s -> conv3 (3) -> y.
    The 4 channels form one group (conv1 and conv2 produce it, conv2 and conv3 read it)."""
    rng = np.random.default_rng(0)
    inits = [_t("w1", rng.normal(0, 1, (4, 3, 3, 3))), _t("b1", rng.normal(0, 1, 4)),
             _t("w2", rng.normal(0, 1, (4, 4, 1, 1)) * np.array([1, 3, 0.1, 1])[None, :, None, None]),
             _t("w3", rng.normal(0, 1, (3, 4, 3, 3)) * np.array([0.2, 1, 2, 0.5])[None, :, None, None])]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["c2"], name="conv2"),
             helper.make_node("Add", ["r", "c2"], ["s"], name="add"),
             helper.make_node("Conv", ["s", "w3"], ["y"], name="conv3", pads=[1] * 4)]
    g = helper.make_graph(nodes, "res", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def test_scores_are_the_energy_reaching_every_reader_through_the_residual_add():
    m = residual_net()
    x = np.random.default_rng(1).normal(0, 1, (10, 3, 8, 8)).astype(np.float32)
    imp = compute_importance(m, (x, None), "energy", samples=None)
    w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in m.graph.initializer}
    ext = onnx.ModelProto()
    ext.CopyFrom(m)
    ext.graph.output.extend([helper.make_empty_tensor_value_info(t) for t in ("r", "s")])
    _, r, s = (a.astype(np.float64) for a in run(ext, {"x": x}))
    expect = (r ** 2).mean((0, 2, 3)) * (w["w2"] ** 2).sum((0, 2, 3)) + \
        (s ** 2).mean((0, 2, 3)) * (w["w3"] ** 2).sum((0, 2, 3))
    expect /= expect.max()
    for producer in ("conv1", "conv2"):   # both producers of the group carry the group's scores
        np.testing.assert_allclose(imp.scores[producer], expect, rtol=1e-5)
    assert imp.samples == 10 and imp.parameters["readers"] == 2 and imp.parameters["unread_units"] == 0
    # the ranking a plan takes from the metadata is this one
    scored = imp.to_model(m)
    plan = gp.choose(gp.analyse(gp.load(scored)), keep={0: 2}, criterion="metadata")
    kept = plan.keep_units[plan.analysis.units_of_group(0)]
    assert kept.tolist() == (expect >= np.sort(expect)[-2]).tolist()
    assert read_importance(scored)["method"] == "energy"


def test_cli_energy_needs_data_and_no_per_class(tmp_path, capsys):
    onnx.save(residual_net(), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 3, 8, 8), np.float32))
    for extra, msg in (([], "--method energy needs --data"),
                       (["--data", str(tmp_path / "d.npz"), "--per-class"], "--per-class needs an XAI method")):
        rc = main(["importance", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.onnx"), "--method", "energy",
                   "--no-progress", *extra])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and msg in err and "\n" not in err
        assert not (tmp_path / "o.onnx").exists()
    rc = main(["importance", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.onnx"), "--method", "energy",
               "--data", str(tmp_path / "d.npz"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0 and "top-1 class" not in err and "energy scores for 3 layers from 4 samples" in err


def test_data_that_does_not_fit_is_a_one_line_error():
    with pytest.raises(gp.GraphpruneError, match="energy importance: the data does not run through the model"):
        compute_importance(residual_net(), (np.zeros((2, 5, 8, 8), np.float32), None), "energy", samples=None)
