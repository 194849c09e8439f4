"""MetaSchedule tuning of a base model and replay onto a pruned variant (slow: real tuning)."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from graphprune.targets import compile_model, measure_latency
from graphprune.targets.inputs import random_inputs
from graphprune.targets.measure_local import run_tvm_local

from _latency_models import tiny_cnn

pytestmark = pytest.mark.slow


def _check_exact(model, compiled):
    feeds = random_inputs(model, seed=2)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(run_tvm_local(compiled, feeds)[0], ref, rtol=1e-4, atol=1e-5)


def test_tune_base_then_replay_variant(monkeypatch, tmp_path):
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path))
    base, variant = tiny_cnn(channels=16), tiny_cnn(channels=12)  # the variant's first conv lost 4 filters
    c = compile_model(base, "x86", tune_trials=8)
    assert c.tuned and c.tuning.startswith("tuned 8 trials")
    _check_exact(base, c)
    v = compile_model(variant, "x86", tune_trials=8)
    assert v.tuned and "replayed from base traces" in v.tuning and not v.tuning.startswith("tuned")
    assert "left untuned" not in v.tuning
    _check_exact(variant, v)
    # every tuned PrimFunc carries the scheduled mark after the database is applied
    r = measure_latency(variant, backend="tvm", tune_trials=8, repeats=5)
    assert r.tuned and "replayed" in r.tuning
