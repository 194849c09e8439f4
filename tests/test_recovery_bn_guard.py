"""graphprune.search.finetune: recovery does not recalibrate BNs on data whose statistics are not the
model's own (recalibrating the ORIGINAL on it lowers the metric); it keeps the pruned model's statistics
and trains with them frozen."""
import numpy as np
import pytest
from onnx import numpy_helper

import graphprune as gp
from _recovery_models import bn_convnet
from graphprune.data import Dataset
from graphprune.recovery import recalibrate_bn
from graphprune.runtime import run
from graphprune.search import finetune
from graphprune.search.finetune import recover


def _bn_stats(m):
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    return [np.concatenate([inits[n.input[3]], inits[n.input[4]]]) for n in m.graph.node
            if n.op_type == "BatchNormalization"]


def _fidelity_error(teacher, x_eval):
    t_out = run(teacher, {"x": x_eval})[0]
    return lambda m: float(np.abs(run(m, {"x": x_eval})[0] - t_out).mean() / np.abs(t_out).mean())


def _case():
    """The original's statistics are those of the evaluation data (A); the training data (B) is shifted,
    as rendered text is for PP-OCRv4 det."""
    rng = np.random.default_rng(0)
    x_a = rng.normal(0.5, 2, (120, 3, 8, 8)).astype(np.float32)
    x_b = rng.normal(3.0, 0.3, (96, 3, 8, 8)).astype(np.float32)
    teacher = gp.load(recalibrate_bn(bn_convnet(fc_gain=10.0), x_a)[0])
    return teacher, x_a, x_b


def test_recalibration_on_unlike_data_is_skipped_and_the_statistics_stay_frozen():
    teacher, x_a, x_b = _case()
    an = gp.analyse(teacher)
    cfg = {g.id: g.units - 1 for g in an.groups if g.prunable}
    err = _fidelity_error(teacher, x_a[:60])
    assert err(recalibrate_bn(teacher, x_b)[0]) > finetune.BN_HARM        # the premise: B is unlike A
    pruned = gp.prune(teacher, gp.choose(an, keep=cfg, criterion="l1"))
    logs = []
    m, rep = recover(teacher, an, cfg, "l1", Dataset(x_b), x_a[:60], None, epochs=1, steps=2, lr=1e-3,
                     batch_size=32, error_fn=err, log=logs.append)
    assert sum("lowers the ORIGINAL model's metric" in ln for ln in logs) == 1   # decided once per recovery
    assert [b["layers"] for b in rep["bn_recalibration"]] == [0, 0, 0]           # 2 steps + the final phase
    assert all(b["skipped"] == ["all: recalibrating the original on this data lowers its metric"]
               for b in rep["bn_recalibration"])
    for got, want in zip(_bn_stats(m), _bn_stats(pruned)):
        np.testing.assert_array_equal(got, want)                                 # frozen through training
    assert rep["accuracy_after"] == pytest.approx(1 - err(m))


def test_the_decision_is_taken_on_the_original_with_a_tolerance():
    teacher, x_a, x_b = _case()
    err = _fidelity_error(teacher, x_a[:60])
    log = []
    assert finetune._bn_suits_data(teacher, x_a, 32, err, log.append)     # the data it was calibrated on: recalibrate
    assert not finetune._bn_suits_data(teacher, x_b, 32, err, log.append) and len(log) == 1
    # a loss of up to BN_HARM is noise (the Fashion-MNIST example: 0.0025), above it is not; nor is a loss of
    # up to two of the judged samples (2 / n_eval)
    fake = iter([0.10, 0.10 + finetune.BN_HARM / 2, 0.10, 0.10 + 2 * finetune.BN_HARM, 0.1, 0.115, 0.1, 0.125])
    assert finetune._bn_suits_data(teacher, x_b, 32, lambda m: next(fake), log.append, n_eval=2000)
    assert not finetune._bn_suits_data(teacher, x_b, 32, lambda m: next(fake), log.append, n_eval=2000)
    assert finetune._bn_suits_data(teacher, x_b, 32, lambda m: next(fake), log.append, n_eval=100)
    assert not finetune._bn_suits_data(teacher, x_b, 32, lambda m: next(fake), log.append, n_eval=100)
