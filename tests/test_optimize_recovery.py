"""`graphprune optimize` with recovery without labels (distillation) and --bn-recalibrate."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import graphprune as gp
from _recovery_models import bn_convnet
from graphprune.cli import main
from graphprune.metadata import get_json
from graphprune.recovery import recalibrate_bn
from graphprune.runtime import run
from graphprune.search.objectives import error_rate
from graphprune.search.optimize import OptimizeOptions, run_optimize


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def case(tmp_path):
    """A BN conv net (statistics the training data's, balanced classes), labelled --data (self-labelled: the
    original is 100 % right) and x-only training data. The statistics are those of the training part, on
    which recovery recalibrates: recalibrating this sensitive net on 200 of its 300 samples would flip 5 of
    the 100 judged predictions of the original, and recovery then keeps the model's own statistics
    (finetune._bn_suits_data, tests/test_recovery_bn_guard.py)."""
    x = np.random.default_rng(0).normal(0.5, 2, (300, 3, 8, 8)).astype(np.float32)
    m = recalibrate_bn(bn_convnet(fc_gain=10.0), x[100:])[0]
    mean_logit = run(m, {"x": x})[0].mean(0)
    for t in m.graph.initializer:
        if t.name == "fc_b":
            t.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(t) - mean_logit).astype(np.float32), "fc_b"))
    y = run(m, {"x": x})[0].argmax(1)
    onnx.save(m, tmp_path / "bn.onnx")
    np.savez(tmp_path / "data.npz", x=x[:100], y=y[:100])
    np.savez(tmp_path / "train_x.npz", x=x[100:])
    return tmp_path / "bn.onnx", tmp_path / "data.npz", tmp_path / "train_x.npz"


def _opts(case, out, **kw):
    base = dict(model=str(case[0]), data=str(case[1]), outdir=str(out), budget=4, repeats=5, channel_step=1,
                holdout=2, progress=False, sensitivity_ratios=(0.5,), uniform_ratios=(0.5,))
    base.update(kw)
    return OptimizeOptions(**base)


def test_recovery_distils_from_the_original_on_unlabelled_training_data(case, tmp_path):
    out, logs = tmp_path / "out", []
    s = run_optimize(_opts(case, out, epochs=1.5, lr=0.05, batch_size=32, train_data=str(case[2]), budget=2,
                           finetune_steps=1,
                           group_bounds="0:0.5:0.5,1:0.5:0.5"), log=logs.append)   # forces a pruned choice
    rec = s["recovery"] or s["recovery_rejected"]
    assert rec is not None and rec["train_samples"] == 200 and rec["eval_samples"] == 100
    assert rec["objective"] == {"distillation": True, "kinds": ["kl"], "weight": 1.0, "temperature": 4.0,
                                "labels": False}
    assert all(b["layers"] == 2 for b in rec["bn_recalibration"])
    assert any("distillation from the original model (KL at T=4)" in line for line in logs)
    m = onnx.load(out / "best.onnx")   # judged as today: what is delivered has the reported accuracy
    d = np.load(case[1])
    assert 1 - error_rate(m, d["x"], d["y"]) == pytest.approx(s["delivered"]["accuracy"])
    if s["recovery"]:
        assert rec["accuracy_after"] >= rec["accuracy_before"]
        assert get_json(m, "graphprune.optimize")["recovery"]["objective"]["distillation"]
        assert "training (distillation from the original model (KL at T=4))" in (out / "report.md").read_text()


@pytest.mark.parametrize("workers", [1, 2])
def test_bn_recalibrate_judges_every_candidate_recalibrated(case, tmp_path, workers):
    """In this process and in pool workers alike."""
    out = tmp_path / "out"
    s = run_optimize(_opts(case, out, bn_recalibrate=True, bn_samples=64, workers=workers), log=lambda m: None)
    lines = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    assert lines[0]["bn_recalibrate"] == {"samples": 64, "seed": 0}
    model = gp.load(str(case[0]))
    an = gp.analyse(model)
    d = np.load(case[1])
    calib = d["x"][np.sort(np.random.default_rng(11).permutation(100)[:64])]
    measured = [r for r in lines[1:] if r["type"] == "measured"]
    full = {str(g.id): g.units for g in an.groups if g.prunable}
    checked = 0
    for r in measured:
        cfg = {int(k): v for k, v in r["config"].items()}
        if r["config"] == full:
            assert r["error"] == 0.0              # the original is never recalibrated
            continue
        raw = gp.prune(model, gp.choose(an, keep=cfg, criterion="l1"))
        cal = recalibrate_bn(raw, calib)[0]
        assert r["error"] == pytest.approx(error_rate(cal, d["x"], d["y"]), abs=1e-12)
        checked += 1
    assert checked >= 3
    # the delivered pruned model is the recalibrated candidate the search judged
    best = onnx.load(out / "best.onnx")
    assert error_rate(best, d["x"], d["y"]) == pytest.approx(s["chosen"]["error"], abs=1e-12)


@pytest.mark.parametrize("args,msg", [(["--distill-weight", "2"], "--distill-weight must be in [0, 1]"),
                                      (["--temperature", "0"], "--temperature must be a finite number > 0"),
                                      (["--bn-samples", "0"], "--bn-samples must be an integer >= 1")])
def test_bad_recovery_options_are_one_line(case, tmp_path, capsys, args, msg):
    out = tmp_path / "o"
    rc = main(["optimize", str(case[0]), "--data", str(case[1]), "-o", str(out), "--no-progress", *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("graphprune: error:") and msg in err and "\n" not in err
    assert not out.exists()


def test_no_labels_anywhere_recovery_distils_and_is_judged_by_agreement(case, tmp_path):
    """Unlabelled --data and --train-data: the search's metric (agreement with the original)
    judges the recovered model, and what is delivered has the reported agreement."""
    from graphprune.metrics import evaluate, get_metric, reference_outputs
    d = np.load(case[1])
    np.savez(tmp_path / "x_only.npz", x=d["x"])
    out = tmp_path / "out"
    s = run_optimize(_opts(case, out, data=str(tmp_path / "x_only.npz"), epochs=1.0, lr=0.05, batch_size=32,
                           train_data=str(case[2]), budget=2, finetune_steps=1,
                           group_bounds="0:0.5:0.5,1:0.5:0.5"))
    rec = s["recovery"] or s["recovery_rejected"]
    assert rec is not None and rec["objective"]["distillation"] and not rec["objective"]["labels"]
    original, delivered = onnx.load(case[0]), onnx.load(out / "best.onnx")
    metric = get_metric("agreement", original, False)
    ref = reference_outputs(original, d["x"], metric, None)
    value = evaluate(delivered, d["x"], metric, ref, None)
    assert value == pytest.approx(1 - s["chosen"]["error"] if not s["recovery"] else rec["accuracy_after"])
