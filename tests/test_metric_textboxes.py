"""graphprune.metrics.textboxes (`--metric text-boxes`): DB post-processing on hand-made maps (exact
boxes), the box matching and F1, the metric on models, and the one-line refusals."""
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
from graphprune.metrics import evaluate, get_metric, reference_outputs  # noqa: E402
from graphprune.metrics.textboxes import box_f1, matched, text_boxes  # noqa: E402
from metric_models import images, segmenter, text_images, text_map  # noqa: E402
from test_search_common import tiny_resnet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_db_post_processing_on_a_hand_made_map():
    p = np.zeros((24, 48), np.float32)
    p[5:10, 10:30] = 0.9        # a text line: 5 x 20 px
    p[15:20, 2:8] = 0.35        # above THRESH 0.3, but its box score 0.35 x 25/36 < 0.5: dropped
    p[20, 30:40] = 0.9          # one pixel high (two after dilation): shorter side < 3, dropped
    boxes = text_boxes(p)
    assert boxes.shape == (1, 5)
    # dilation (2x2, as cv2's default anchor) grows the mask one pixel down and right: 6 x 21
    h, w = 6, 21
    d = h * w * 1.6 / (2 * (h + w))
    np.testing.assert_allclose(boxes[0], [10 - d, 5 - d, 31 + d, 11 + d, 0.9 * 100 / 126], rtol=1e-6)


def test_words_one_pixel_apart_merge_through_the_dilation_and_nan_counts_as_background():
    p = np.zeros((20, 24), np.float32)
    p[2:8, 2:10] = 1.0
    p[2:8, 11:20] = 1.0         # one empty column between: the 2x2 dilation closes it, one text line
    p[15, 15] = np.nan
    boxes = text_boxes(p)
    h, w = 7, 19
    d = h * w * 1.6 / (2 * (h + w))
    assert boxes.shape == (1, 5)
    np.testing.assert_allclose(boxes[0], [2 - d, 2 - d, 21 + d, 9 + d, 102 / 133], rtol=1e-6)


def test_matching_is_one_to_one_at_iou_05_and_f1_is_pooled():
    ref = np.array([[0, 0, 10, 10, 1.0], [20, 0, 30, 10, 1.0]])
    cand = np.array([[0, 0, 10, 9, 0.9],      # IoU 0.9 with ref 0
                     [1, 0, 10, 10, 0.8],     # IoU 0.9 with ref 0 too: ref 0 is taken, no match
                     [20, 0, 40, 10, 0.7]])   # IoU 0.5 with ref 1: a match (>=)
    assert matched(cand, ref) == 2
    assert matched(cand[:2], ref) == 1
    # image 1: 3 candidate boxes, 2 matches; image 2: none found of 1: F1 = 2 * 2 / (3 + 3)
    assert box_f1([cand, np.zeros((0, 5))], [ref, ref[:1]]) == pytest.approx(4 / 6)
    assert box_f1([ref, ref[:1]], [ref, ref[:1]]) == 1.0
    assert box_f1([np.zeros((0, 5))], [ref]) == 0.0


def test_an_original_without_any_box_is_refused():
    with pytest.raises(GraphpruneError, match="finds no text box"):
        box_f1([np.zeros((0, 5))], [np.zeros((0, 5))])


def test_text_boxes_metric_on_a_small_text_detector():
    """Two bright lines per image: the original finds both (1.0 against itself); L1 pruning of 25 %
    keeps every box (1.0), 50 % dims the map below the box threshold: no box, F1 exactly 0."""
    m, x = text_map(), text_images(6)
    tb = get_metric("text-boxes", m, has_labels=False)
    ref = reference_outputs(m, x, tb)
    assert [len(b) for b in ref[0]] == [2] * 6
    assert evaluate(m, x, tb, ref) == 1.0
    an = gp.analyse(m)
    scores = {}
    for ratio in (0.25, 0.5):
        p = gp.prune(an.model, gp.choose(an, ratio=ratio, criterion="l1"))
        a = ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        scores[ratio] = evaluate(p, x, tb, ref)
        assert scores[ratio] == box_f1([text_boxes(o[0]) for o in a], list(ref[0]))
    assert scores == {0.25: 1.0, 0.5: 0.0}


@pytest.mark.parametrize("model,x", [(lambda: tiny_resnet(0), np.zeros((2, 1, 12, 12), np.float32)),
                                     (lambda: segmenter(3), images(2))])
def test_outputs_that_are_not_a_text_map_are_refused_in_one_line(model, x):
    m = model()
    with pytest.raises(GraphpruneError, match=r"needs a text probability map \(N, 1, H, W\)") as e:
        reference_outputs(m, x, get_metric("text-boxes", m, has_labels=False))
    assert "\n" not in str(e.value)


def test_text_boxes_on_pp_ocrv4_det_finds_the_rendered_words():
    """rapidocr's PP-OCRv4 det on two words rendered with PIL: one box per word, around it; 1.0 vs itself."""
    from PIL import Image, ImageDraw, ImageFont
    p = ROOT / ".cache" / "models" / "rapidocr" / "ch_PP-OCRv4_det_infer.onnx"
    if not p.exists():
        pytest.skip("rapidocr model not in .cache/models")
    font = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    if not os.path.exists(font):
        pytest.skip("DejaVu fonts not installed")
    img = Image.new("RGB", (224, 224), (235, 235, 235))
    draw = ImageDraw.Draw(img)
    f = ImageFont.truetype(font, 28)
    draw.text((20, 40), "Hello", fill=(20, 20, 20), font=f)
    draw.text((20, 140), "2026", fill=(20, 20, 20), font=f)
    x = ((np.asarray(img, np.float32)[..., ::-1] / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225])
    x = x.transpose(2, 0, 1)[None].astype(np.float32)
    m = gp.load(str(p))
    tb = get_metric("text-boxes", m, has_labels=False)
    ref = reference_outputs(m, x, tb)
    boxes = ref[0][0]
    assert len(boxes) == 2
    top, bottom = sorted(boxes, key=lambda b: b[1])
    assert top[1] < 45 < top[3] < 100 and bottom[1] < 145 < bottom[3] < 200
    assert tb.compare(ref, ref, None) == 1.0
