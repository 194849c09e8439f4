"""The benchmark tools' shared pieces: uniform L1 judged by a metric (no labels), the synthetic images."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import graphprune as gp  # noqa: E402
from metric_models import images, segmenter  # noqa: E402


def test_uniform_l1_with_a_metric_stops_past_the_bound():
    from bench_optimize import uniform_l1
    from graphprune.metrics import get_metric, reference_outputs
    from graphprune.metrics.runner import evaluate
    model = segmenter(classes=3)
    an = gp.analyse(model)
    x = images(8)
    metric = get_metric("segmentation", model, has_labels=False)
    ref = reference_outputs(model, x, metric)
    seen = []

    def error_fn(m):
        seen.append(m)
        return 1.0 - evaluate(m, x, metric, ref)
    rows = uniform_l1(model, an, None, None, 1, error_fn=error_fn, ratios=[0.25, 0.5, 0.75], stop_error=-1.0,
                      label="segmentation")
    # stop_error below any error: the sweep stops after its first ratio
    assert [r["ratio"] for r in rows] == [0.25] and len(seen) == 1
    pruned = gp.prune(model, gp.choose(an, ratio=0.25, criterion="l1", round_to=1))
    assert rows[0]["error"] == pytest.approx(1.0 - evaluate(pruned, x, metric, ref), abs=0)
    assert rows[0]["config"] == gp.choose(an, ratio=0.25, criterion="l1", round_to=1).config()
    full = uniform_l1(model, an, None, None, 1, error_fn=error_fn, ratios=[0.25, 0.5])
    assert [r["ratio"] for r in full] == [0.25, 0.5]


def test_uniform_l1_default_is_top1_error_on_labels():
    from bench_optimize import uniform_l1
    from graphprune.search import objectives as obj
    model = segmenter(classes=3)
    an = gp.analyse(model)
    x = images(8)
    y = np.zeros(8, np.int64)
    rows = uniform_l1(model, an, x, y, 1)
    assert [r["ratio"] for r in rows] == [round(float(r), 2) for r in np.arange(0.05, 0.951, 0.05)]
    plan = gp.choose(an, ratio=0.5, criterion="l1", round_to=1)
    assert rows[9]["error"] == obj.error_rate(gp.prune(model, plan), x, y)


@pytest.mark.parametrize("kind,size", [("text", 64), ("scene", 48), ("slider", 64)])
def test_synthetic_images_are_deterministic_rgb(tmp_path, kind, size):
    from _synthetic_images import write_folder
    a = write_folder(tmp_path / "a", kind, 3, size, seed=7)
    b = write_folder(tmp_path / "b", kind, 3, size, seed=7)
    from PIL import Image
    for pa, pb in zip(sorted(a.glob("*.png")), sorted(b.glob("*.png"))):
        ia, ib = np.asarray(Image.open(pa)), np.asarray(Image.open(pb))
        assert ia.shape == (size, size, 3) and ia.dtype == np.uint8
        assert np.array_equal(ia, ib)
    first = [np.asarray(Image.open(p)) for p in sorted(a.glob("*.png"))]
    assert not np.array_equal(first[0], first[1])   # different images, not one repeated
