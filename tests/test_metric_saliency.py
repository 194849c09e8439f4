"""graphprune.metrics.saliency (`--metric saliency`): exact MAE of min-max normalised maps, the
metric on a model through optimize's runner, non-finite candidates, and the one-line refusals."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from graphprune.errors import GraphpruneError  # noqa: E402
from graphprune.metrics import evaluate, get_metric, reference_outputs  # noqa: E402
from graphprune.metrics.saliency import SALIENCY, normalised_maps  # noqa: E402
from metric_models import images, segmenter  # noqa: E402


def _score(cand, ref):
    return SALIENCY.compare(SALIENCY.reduce([cand]), SALIENCY.reduce([ref]), None)


def test_maps_are_min_max_normalised_per_image_as_rembg_does():
    m = np.array([[[[2.0, 4.0], [6.0, 10.0]]], [[[5.0, 5.0], [5.0, 5.0]]]], np.float32)
    out = normalised_maps([m])[0]
    np.testing.assert_array_equal(out[0], [[0.0, 0.25], [0.5, 1.0]])
    np.testing.assert_array_equal(out[1], np.zeros((2, 2)))   # a constant map is 0, not NaN


def test_score_is_one_minus_the_mean_absolute_error_of_the_normalised_maps():
    ref = np.array([[[[0.0, 0.5], [0.5, 1.0]]], [[[0.0, 0.0], [0.0, 1.0]]]], np.float32)
    assert _score(ref, ref) == 1.0
    assert _score(ref * 3 + 1, ref) == 1.0            # the same map at another scale and offset
    cand = ref.copy()
    cand[0, 0, 0, 1] = 0.3                             # off by 0.2 on one of 4 pixels of image 0
    assert _score(cand, ref) == pytest.approx(1 - (0.2 / 4 + 0) / 2, abs=1e-7)


def test_a_non_finite_candidate_pixel_counts_as_the_largest_error():
    ref = np.array([[[[0.0, 0.5], [0.5, 1.0]]]], np.float32)
    cand = ref.copy()
    cand[0, 0, 1, 1] = np.nan
    # the finite pixels normalise to [0, 0.5, 0.5] / 0.5 -> 0, 1, 1: errors 0, 0.5, 0.5, and 1 for NaN
    assert _score(cand, ref) == pytest.approx(1 - 2.0 / 4, abs=1e-7)
    all_nan = np.full_like(ref, np.nan)
    assert _score(all_nan, ref) == 0.0


def test_on_a_model_identical_is_one_and_a_perturbed_model_scores_its_exact_mae():
    model = segmenter(classes=1, hw=16)
    x = images(8, 16)
    metric = get_metric("saliency", model, has_labels=False)
    ref = reference_outputs(model, x, metric)
    assert evaluate(model, x, metric, ref) == 1.0
    import onnxruntime as ort
    from onnx import numpy_helper
    worse = type(model)()
    worse.CopyFrom(model)
    w = next(i for i in worse.graph.initializer if i.name == "wm")
    arr = numpy_helper.to_array(w).copy()
    arr[:, 0] *= 0.5
    w.CopyFrom(numpy_helper.from_array(arr, "wm"))
    got = evaluate(worse, x, metric, ref)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {m.graph.input[0].name: x})[0]
    a, b = normalised_maps([run(worse)])[0], normalised_maps([run(model)])[0]
    assert got == pytest.approx(1 - np.abs(a.astype(np.float64) - b).reshape(8, -1).mean(1).mean(), abs=1e-6)
    assert got < 1.0


@pytest.mark.parametrize("shape", [(4, 3, 8, 8), (4, 10), (4, 1, 1, 8)])
def test_outputs_that_are_not_one_map_per_image_are_refused_in_one_line(shape):
    with pytest.raises(GraphpruneError, match=r"--metric saliency needs one saliency map") as e:
        SALIENCY.check([np.zeros(shape, np.float32)], ["out"], None)
    assert "\n" not in str(e.value)


def test_a_non_finite_original_is_refused():
    m = np.zeros((2, 1, 4, 4), np.float32)
    m[0, 0, 0, 0] = np.inf
    with pytest.raises(GraphpruneError, match="saliency"):
        SALIENCY.check([m], ["out"], None)
