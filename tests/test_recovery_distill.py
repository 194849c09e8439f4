"""Distillation recovery: losses, the teacher cache, and a pruned model recovering without labels."""
import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import graphprune as gp
from _recovery_models import bn_convnet
from graphprune.data import Dataset
from graphprune.errors import GraphpruneError
from graphprune.recovery import recalibrate_bn
from graphprune.recovery import teacher as teacher_mod
from graphprune.recovery.distill import loss_fn, objective
from graphprune.runtime import run
from graphprune.search.finetune import recover


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _kl_np(s, t, temp):
    ps, pt = _softmax(s / temp), _softmax(t / temp)
    return float(np.mean((pt * (np.log(pt) - np.log(ps))).sum(1)) * temp * temp)


def test_losses_match_their_numpy_definitions():
    rng = np.random.default_rng(0)
    t_logits, t_box = rng.normal(0, 2, (6, 4)), rng.normal(3, 0.5, (6, 10, 5))
    t_prob = _softmax(rng.normal(0, 1, (6, 3)))
    s_logits, s_box, s_prob = rng.normal(0, 2, (6, 4)), rng.normal(3, 0.5, (6, 10, 5)), _softmax(rng.normal(0, 1, (6, 3)))
    y = rng.integers(0, 4, 6)
    idx = np.array([4, 1, 2])
    o = objective([t_logits.astype(np.float32), t_box.astype(np.float32), t_prob.astype(np.float32)], None, 0.3,
                  temperature=2.0)
    assert o.kinds == ["kl", "mse", "kl-prob"] and o.weight == 1.0       # no labels: distillation alone
    var_c = np.var(t_box.astype(np.float32).astype(np.float64), axis=(0, 1))     # per channel of the shortest axis (5)
    np.testing.assert_allclose(o.scales[1].reshape(-1), var_c, rtol=1e-5)
    outs = [torch.tensor(a[idx], dtype=torch.float32) for a in (s_logits, s_box, s_prob)]
    got = float(loss_fn(o)(outs, idx))
    want = (_kl_np(s_logits[idx], t_logits[idx], 2.0)
            + np.mean((s_box[idx] - t_box[idx]) ** 2 / var_c)
            + _kl_np(np.log(s_prob[idx]), np.log(t_prob[idx]), 2.0)) / 3
    assert got == pytest.approx(want, rel=1e-4)
    # with labels: (1 - w) x cross-entropy + w x distillation
    o2 = objective([t_logits.astype(np.float32)], y, 0.3, temperature=2.0)
    ce = float(np.mean(-np.log(_softmax(s_logits[idx])[np.arange(3), y[idx]])))
    got2 = float(loss_fn(o2)(outs[:1], idx))
    assert got2 == pytest.approx(0.7 * ce + 0.3 * _kl_np(s_logits[idx], t_logits[idx], 2.0), rel=1e-4)
    assert "0.7 x cross-entropy" in o2.text and "KL at T=2" in o2.text
    with pytest.raises(GraphpruneError, match="student has 1 outputs, the teacher 3"):
        loss_fn(o)(outs[:1], idx)


def test_the_regression_loss_weighs_each_channel_by_its_own_scale():
    """A YOLO-style head [N, 4+C, anchors]: pixel coordinates (variance ~1e4) and class scores
    (variance ~0.1) contribute alike; a constant channel gets a floor, not an infinite weight."""
    from graphprune.recovery.distill import channel_variance
    rng = np.random.default_rng(1)
    t = np.concatenate([rng.normal(320, 100, (4, 4, 50)), rng.uniform(0, 1, (4, 2, 50)), np.zeros((4, 1, 50))], 1)
    v = channel_variance(t.astype(np.float32))
    assert v.shape == (1, 7, 1)
    np.testing.assert_allclose(v[0, :6, 0], np.var(t[:, :6], axis=(0, 2)), rtol=1e-4)
    assert v[0, 6, 0] == pytest.approx(1e-6 * np.mean(np.r_[np.var(t[:, :6], axis=(0, 2)), 0.0]), rel=1e-4)
    o = objective([t.astype(np.float32)], None, 1.0)
    s = t.copy()
    s[:, 0] += 100.0           # one coordinate channel off by one standard deviation ...
    s[:, 4] += np.sqrt(v[0, 4, 0])   # ... and one class channel off by one of its own
    loss = loss_fn(o)([torch.tensor(s, dtype=torch.float32)], np.arange(4))
    assert float(loss) == pytest.approx((100.0 ** 2 / v[0, 0, 0] + 1.0) / 7, rel=1e-3)


def test_teacher_outputs_are_computed_once_per_model_and_data():
    m, x = bn_convnet(), np.random.default_rng(0).normal(0, 1, (10, 3, 8, 8)).astype(np.float32)
    a, per = teacher_mod.teacher_outputs(m, x, batch_size=4)
    assert not per and len(a) == 1 and a[0].shape == (10, 5)
    np.testing.assert_allclose(a[0], run(m, {"x": x})[0], rtol=1e-6, atol=1e-6)
    assert teacher_mod.teacher_outputs(m, x.copy())[0] is a          # same model and data: the cached arrays
    assert teacher_mod.teacher_outputs(m, x[:5])[0] is not a


def _teacher(x):
    """A small BN conv net whose BN statistics are the data's and whose classes are balanced."""
    m = recalibrate_bn(bn_convnet(fc_gain=10.0), x)[0]
    mean_logit = run(m, {"x": x})[0].mean(0)
    for t in m.graph.initializer:
        if t.name == "fc_b":
            t.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(t) - mean_logit).astype(np.float32), "fc_b"))
    return gp.load(m)


def test_a_pruned_model_recovers_its_fidelity_to_the_original_without_labels():
    x = np.random.default_rng(0).normal(0.5, 2, (400, 3, 8, 8)).astype(np.float32)
    teacher, x_eval, train = _teacher(x), x[:100], Dataset(x[100:])
    an = gp.analyse(teacher)
    t_out = run(teacher, {"x": x_eval})[0]

    def kl(m):   # the fidelity error: KL(original || pruned) on held-out samples
        return _kl_np(run(m, {"x": x_eval})[0], t_out, 1.0)
    cfg = {g.id: g.units // 2 for g in an.groups if g.prunable}
    logs = []
    m, rep = recover(teacher, an, cfg, "l1", train, x_eval, None, epochs=4, steps=1, lr=0.05, batch_size=32,
                     seed=0, error_fn=kl, log=logs.append)
    onnx.checker.check_model(m)
    kl_before, kl_after = 1 - rep["accuracy_before"], 1 - rep["accuracy_after"]
    assert kl_before == pytest.approx(kl(gp.prune(teacher, gp.choose(an, keep=cfg, criterion="l1"))), rel=1e-6)
    assert kl_after == pytest.approx(kl(m), rel=1e-6)
    assert kl_before > 0.3 and kl_after < 0.5 * kl_before                # measured 0.44 -> 0.13
    assert rep["objective"] == {"distillation": True, "kinds": ["kl"], "weight": 1.0, "temperature": 4.0,
                                "labels": False}
    assert [b["layers"] for b in rep["bn_recalibration"]] == [2, 2]        # before each training phase
    assert rep["bn_recalibration"][0]["samples"] == 300
    assert gp.count(m).macs < gp.count(teacher).macs
    assert any("distillation from the original model" in line for line in logs)
    # deterministic: the same seed gives the same model
    m2, _ = recover(teacher, an, cfg, "l1", train, x_eval, None, epochs=4, steps=1, lr=0.05, batch_size=32,
                    seed=0, error_fn=kl)
    assert m2.SerializeToString() == m.SerializeToString()
    with pytest.raises(GraphpruneError, match="without labels the models must be judged by a metric"):
        recover(teacher, an, cfg, "l1", train, x_eval, None, epochs=1)


def test_a_diverging_training_is_retried_at_a_tenth_of_the_learning_rate():
    """SGD at too large a learning rate (u2netp diverged from its own outputs at 1e-3 and 1e-4,
    ending as a constant map): the try is thrown away and training restarts at lr/10, lr/100."""
    from graphprune.recovery.distill import objective
    from graphprune.recovery.train import LR_TRIES, train_epochs
    x = np.random.default_rng(0).normal(0.5, 2, (200, 3, 8, 8)).astype(np.float32)
    teacher = _teacher(x)
    an = gp.analyse(teacher)
    student = gp.prune(teacher, gp.choose(an, keep={g.id: g.units // 2 for g in an.groups if g.prunable}))
    student = recalibrate_bn(student, x)[0]   # as recovery does before training
    goal = objective([run(teacher, {"x": x})[0]], None, 1.0)

    def kl(m):
        return _kl_np(run(m, {"x": x})[0], goal.targets[0], 1.0)
    m, st = train_epochs(student, x, None, 1.0, 0.05, 32, 0, objective=goal)
    assert st["diverged_tries"] == [] and st["lr"] == 0.05 and kl(m) < kl(student)
    m, st = train_epochs(student, x, None, 1.0, 5.0, 32, 0, objective=goal)
    assert 1 <= len(st["diverged_tries"]) < LR_TRIES and st["diverged_tries"][0]["lr"] == 5.0
    assert st["lr"] == pytest.approx(5.0 / 10 ** len(st["diverged_tries"]))
    assert np.isfinite(st["loss_last"]) and kl(m) < kl(student)
    onnx.checker.check_model(m)


def test_a_recovery_that_ends_worse_is_redone_at_a_tenth_of_the_learning_rate(monkeypatch):
    """The retry rule of recover(), with the training replaced by a recorder: worse, worse, better."""
    from graphprune.search import finetune
    x = np.random.default_rng(0).normal(0.5, 2, (120, 3, 8, 8)).astype(np.float32)
    teacher = _teacher(x)
    an = gp.analyse(teacher)
    cfg = {g.id: g.units // 2 for g in an.groups if g.prunable}
    seen, after = [], iter([0.1, 0.2, 0.9])

    def fake(model, an, config, criterion, train, x_eval, epochs, steps, lr, *rest):
        seen.append(lr)
        return model, {"accuracy_after": next(after)}
    monkeypatch.setattr(finetune, "_recover_at", fake)
    _, rep = recover(teacher, an, cfg, "l1", Dataset(x), x[:20], None, epochs=1, lr=0.3,
                     error_fn=lambda m: 0.5)   # 0.5 before recovery
    assert seen == pytest.approx([0.3, 0.03, 0.003]) and rep["lr"] == pytest.approx(0.003)
    assert [t["accuracy_after"] for t in rep["worse_tries"]] == [0.1, 0.2]
    after = iter([0.6])
    seen.clear()
    _, rep = recover(teacher, an, cfg, "l1", Dataset(x), x[:20], None, epochs=1, lr=0.3, error_fn=lambda m: 0.5)
    assert seen == [0.3] and rep["worse_tries"] == [] and rep["lr"] == 0.3
