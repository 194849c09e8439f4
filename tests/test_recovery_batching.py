"""Training a model that bakes batch 1 into a literal Reshape target: batch N == N batch-1 passes."""
import numpy as np
import pytest
import torch
from onnx import numpy_helper

from _recovery_models import literal_batch_head
from graphprune.bridge import to_torch
from graphprune.recovery.batching import backward_batch, merges_samples, torch_runner
from graphprune.recovery.distill import loss_fn, objective
from graphprune.recovery.teacher import teacher_outputs
from graphprune.recovery.train import train_epochs


def _data(n=8):
    rng = np.random.default_rng(3)
    return rng.normal(0, 1, (n, 3, 8, 8)).astype(np.float32), rng.normal(0, 1, (n, 64, 6)).astype(np.float32)


def test_the_literal_reshape_merges_samples_and_is_detected():
    x, _ = _data()
    bad, good = to_torch(literal_batch_head(True)), to_torch(literal_batch_head(False))
    with torch.no_grad():
        assert tuple(bad(torch.from_numpy(x[:2])).shape) == (1, 128, 6)     # the two samples merged
        np.testing.assert_allclose(bad(torch.from_numpy(x[:1])).numpy(), good(torch.from_numpy(x[:1])).numpy(),
                                   rtol=1e-6, atol=1e-6)                    # exact at batch 1
    assert merges_samples(torch_runner(bad), x) and not merges_samples(torch_runner(good), x)
    # the teacher (onnxruntime) detects it too and runs one sample at a time: same outputs as batching the good one
    t_bad, per_bad = teacher_outputs(literal_batch_head(True), x)
    t_good, per_good = teacher_outputs(literal_batch_head(False), x)
    assert per_bad and not per_good and t_bad[0].shape == (8, 64, 6)
    np.testing.assert_allclose(t_bad[0], t_good[0], rtol=1e-5, atol=1e-5)


def _grads(net):
    return {n: p.grad.detach().clone() for n, p in net.named_parameters() if p.grad is not None}


def test_a_batch_step_equals_the_mean_of_batch_one_passes():
    """The merging model, one sample at a time inside the batch, gives the loss and every gradient
    of a true batch-4 step (the same function with a batch-correct Reshape), and of 4 separate
    batch-1 passes averaged."""
    x, t = _data()
    obj = objective([t], None, 1.0)
    loss = loss_fn(obj)
    idx = np.array([5, 0, 3, 6])
    xt = torch.from_numpy(x)
    bad, good = to_torch(literal_batch_head(True)), to_torch(literal_batch_head(False))
    l_bad = backward_batch(bad, xt, idx, loss, per_sample=True)
    l_good = backward_batch(good, xt, idx, loss, per_sample=False)
    g_bad, g_good = _grads(bad), _grads(good)
    assert l_bad == pytest.approx(l_good, rel=1e-5)
    assert set(g_bad) == set(g_good) and len(g_bad) == 3                      # conv weight, BN scale and bias
    for k in g_good:
        torch.testing.assert_close(g_bad[k], g_good[k], rtol=1e-5, atol=1e-6)
    one = to_torch(literal_batch_head(True))                                  # 4 separate batch-1 passes
    acc, total = None, 0.0
    for i in idx:
        one.zero_grad()
        li = loss([one(xt[int(i):int(i) + 1])], np.array([i]))
        li.backward()
        total += float(li.detach()) / len(idx)
        acc = {k: v / len(idx) + (acc[k] if acc else 0) for k, v in _grads(one).items()}
    assert total == pytest.approx(l_bad, rel=1e-5)
    for k in acc:
        torch.testing.assert_close(g_bad[k], acc[k], rtol=1e-5, atol=1e-6)
    # batched naively, the merging model is wrong: its output is not the batch's
    from graphprune.errors import GraphpruneError
    with pytest.raises(GraphpruneError, match=r"output 0 has shape \(1, 256, 6\), the teacher's \(4, 64, 6\)"):
        backward_batch(to_torch(literal_batch_head(True)), xt, idx, loss, per_sample=False)


def test_training_the_merging_model_in_batches_equals_training_the_batch_correct_one():
    x, t = _data()
    obj = objective([t], None, 1.0)
    m_bad, st_bad = train_epochs(literal_batch_head(True), x, None, 2, 0.05, 4, 0, objective=obj)
    m_good, st_good = train_epochs(literal_batch_head(False), x, None, 2, 0.05, 4, 0, freeze_bn=True, objective=obj)
    assert st_bad["per_sample"] and not st_good["per_sample"] and st_bad["batches"] == 4
    assert st_bad["loss_last"] < st_bad["loss_first"]
    assert st_bad["loss_first"] == pytest.approx(st_good["loss_first"], rel=1e-5)
    assert st_bad["loss_last"] == pytest.approx(st_good["loss_last"], rel=1e-4)
    a = {i.name: numpy_helper.to_array(i) for i in m_bad.graph.initializer}
    b = {i.name: numpy_helper.to_array(i) for i in m_good.graph.initializer}
    for k in ("w", "g", "b"):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6)
    assert not np.allclose(a["w"], numpy_helper.to_array(literal_batch_head(True).graph.initializer[0]))


def test_a_teacher_with_its_input_batch_fixed_at_1_runs_one_sample_at_a_time():
    x, _ = _data(5)
    m = literal_batch_head(False)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    out, per_sample = teacher_outputs(m, x)
    assert per_sample and out[0].shape == (5, 64, 6)
    np.testing.assert_allclose(out[0], teacher_outputs(literal_batch_head(False), x)[0][0], rtol=1e-6, atol=1e-6)
