"""`graphprune optimize` without labels: metrics, image folders, multi-input .npz, the default -o, bad input."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.dirname(__file__))

from graphprune.cli import main  # noqa: E402
from graphprune.search.objectives import error_rate  # noqa: E402
from metric_models import images, segmenter, yolo_head  # noqa: E402
from test_search_common import self_labelled_data, tiny_resnet  # noqa: E402

FAST = ["--repeats", "5", "--channel-step", "2", "--no-progress", "--holdout", "2", "--budget", "6",
        "--sensitivity-ratios", "0.5"]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path / "cache"))


def _cli(args, capsys):
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out.strip().splitlines(), cap.err.strip().splitlines()


def _save(model, path):
    onnx.save(model, path)
    return path


def _image_folder(root: Path, n: int, hw: int = 16, classes: int = 0, seed: int = 0) -> Path:
    from PIL import Image
    rng = np.random.default_rng(seed)
    for i in range(n):
        d = root / f"c{i % classes}" if classes else root
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (hw, hw, 3), dtype=np.uint8)).save(d / f"im{i:03d}.png")
    return root


def test_unlabelled_classifier_defaults_to_agreement_and_every_output_says_so(tmp_path, capsys):
    m = tiny_resnet(0)
    mp = _save(m, tmp_path / "tiny.onnx")
    x, y = self_labelled_data(m, 64)
    np.savez(tmp_path / "x.npz", x=x)
    out = tmp_path / "o"
    rc, lines, err = _cli(["optimize", mp, "--data", tmp_path / "x.npz", "-o", out] + FAST, capsys)
    assert rc == 0, err
    pj = json.loads((out / "pareto.json").read_text())
    assert pj["metric"]["name"] == "agreement" and pj["metric"]["reference"] == "the original model's outputs"
    assert pj["metric"]["default"] and pj["data"]["labelled"] is False
    assert pj["baseline"]["error"] == 0.0 and pj["baseline"]["agreement"] == 1.0
    # the labels are the original's own top-1 classes, so agreement = accuracy on them, candidate by candidate
    from graphprune.search.objectives import build, init_worker
    init_worker(m.SerializeToString(), None, x, y)
    for r in pj["front"]:
        assert r["error"] == pytest.approx(error_rate(build({int(k): v for k, v in r["config"].items()}), x, y),
                                           abs=1e-12)
    assert lines[0] == "metric: agreement against the original model's outputs (the default for a classifier " \
                       "output (N, classes) without labels)"
    assert "original agreement 100.00 %" in lines[1]
    report = (out / "report.md").read_text()
    assert "quality metric: **agreement** against the original model's outputs" in report
    assert "| configuration | agreement % |" in report
    best = onnx.load(out / "best.onnx")
    assert json.loads(next(p.value for p in best.metadata_props if p.key == "graphprune.optimize"))["metric"][
        "name"] == "agreement"


def test_yolo_style_detector_on_a_flat_image_folder_with_the_default_outdir(tmp_path, capsys, monkeypatch):
    mp = _save(yolo_head(2, "v8"), tmp_path / "yolo.onnx")
    data = _image_folder(tmp_path / "imgs", 10)
    monkeypatch.chdir(tmp_path)
    rc, lines, err = _cli(["optimize", mp, "--data", data, "--metric", "detection", "--mean", "0.5",
                           "--std", "0.25"] + FAST, capsys)
    assert rc == 0, err
    out = tmp_path / "yolo_optimized"
    pj = json.loads((out / "pareto.json").read_text())
    assert pj["metric"]["name"] == "detection" and not pj["metric"]["default"]
    assert pj["baseline"]["error"] == 0.0 and pj["data"]["samples"] == 10
    assert all(0.0 <= r["detection"] <= 1.0 for r in pj["front"]) and (out / "best.onnx").exists()
    assert lines[-1] == "wrote yolo_optimized/best.onnx, pareto.json, pareto.png, report.md"


def test_segmenter_without_labels_defaults_to_fidelity_or_takes_segmentation(tmp_path, capsys):
    mp = _save(segmenter(3), tmp_path / "seg.onnx")
    np.savez(tmp_path / "x.npz", x=images(12))
    for metric, out in ((None, tmp_path / "o1"), ("segmentation", tmp_path / "o2")):
        rc, _, err = _cli(["optimize", mp, "--data", tmp_path / "x.npz", "-o", out]
                          + (["--metric", metric] if metric else []) + FAST, capsys)
        assert rc == 0, err
        pj = json.loads((out / "pareto.json").read_text())
        assert pj["metric"]["name"] == (metric or "fidelity") and pj["baseline"]["error"] == 0.0


def _two_input_model() -> onnx.ModelProto:
    """y = conv2(relu(conv1(x))) * s: an image and a per-sample gain, fed by name."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((2, 8, 1, 1)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
             helper.make_node("Mul", ["c2", "s"], ["y"], name="gain")]
    g = helper.make_graph(nodes, "two_inputs",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8]),
                           helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 1, 1, 1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 8, 8])], [w1, w2])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    return m


def test_a_two_input_model_takes_one_array_per_input_by_name(tmp_path, capsys):
    mp = _save(_two_input_model(), tmp_path / "two.onnx")
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "two.npz", s=rng.random((12, 1, 1, 1)).astype(np.float32) + 0.5,
             x=rng.standard_normal((12, 3, 8, 8)).astype(np.float32))
    out = tmp_path / "o"
    rc, _, err = _cli(["optimize", mp, "--data", tmp_path / "two.npz", "-o", out] + FAST, capsys)
    assert rc == 0, err
    pj = json.loads((out / "pareto.json").read_text())
    assert pj["metric"]["name"] == "fidelity" and pj["baseline"]["fidelity"] == 1.0
    np.savez(tmp_path / "one.npz", x=rng.standard_normal((12, 3, 8, 8)).astype(np.float32))
    rc, _, err = _cli(["optimize", mp, "--data", tmp_path / "one.npz", "-o", tmp_path / "o2"] + FAST, capsys)
    assert rc == 2 and len(err) == 1 and "no array named 's'" in err[0]


USER_MODULE = '''
def raises(cand, ref, labels):
    raise RuntimeError("boom")
def word(cand, ref, labels):
    return "good"
def mean_abs(cand, ref, labels):
    import numpy as np
    return 1.0 - float(np.mean(np.abs(cand[0] - ref[0])))
'''


def test_bad_input_is_one_line_exit_2_and_creates_nothing(tmp_path, capsys, monkeypatch):
    (tmp_path / "umetric_mod.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    clf = _save(tiny_resnet(0), tmp_path / "clf.onnx")
    yolo = _save(yolo_head(2, "v8"), tmp_path / "yolo.onnx")
    x, _ = self_labelled_data(tiny_resnet(0), 16)
    np.savez(tmp_path / "x.npz", x=x)
    imgs = _image_folder(tmp_path / "imgs", 4)
    (tmp_path / "empty").mkdir()
    out = tmp_path / "never"
    cases = [
        ([yolo, "--data", imgs, "--size", "20"],
         "data x has shape (4, 3, 20, 20), model input 'x' expects ['N', 3, 16, 16] (axis 2: 20 vs 16)"),
        ([yolo, "--data", imgs, "--layout", "nhwc"], "image folders give 1 or 3 channels; the model input has 16"),
        ([yolo, "--data", tmp_path / "empty"], "no images found"),
        ([clf, "--data", tmp_path / "x.npz", "--metric", "detection"], "needs a YOLO-style head"),
        ([yolo, "--data", imgs, "--metric", "segmentation"], "needs per-pixel scores"),
        ([clf, "--data", tmp_path / "x.npz", "--metric", "umetric_mod:raises"], "raised RuntimeError: boom"),
        ([clf, "--data", tmp_path / "x.npz", "--metric", "umetric_mod:word"], "returned str, not a number"),
        ([clf, "--data", tmp_path / "x.npz", "--metric", "accuracy"],
         "needs labels and the data has none (a .npz with 'y' or an image folder with one subfolder per class); "
         "without labels use agreement (classifiers), fidelity, detection, segmentation, text-boxes, saliency or "
         "package.module:function"),
        ([clf, "--data", tmp_path / "x.npz", "--metric", "bleu"], "unknown --metric 'bleu'"),
        ([clf, "--data", tmp_path / "x.npz", "--epochs", "1", "--distill-weight", "2"], "--distill-weight"),
        ([clf, "--data", tmp_path / "x.npz", "--size", "12"], "--size applies to image folders only"),
    ]
    for args, msg in cases:
        rc, _, err = _cli(["optimize", *args, "-o", out] + FAST, capsys)
        assert rc == 2 and len(err) == 1 and err[0].startswith("graphprune: error: ") and msg in err[0], (args, err)
        assert not out.exists(), args


def test_a_user_metric_drives_the_search(tmp_path, capsys, monkeypatch):
    (tmp_path / "umetric_mod2.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    mp = _save(segmenter(1), tmp_path / "sal.onnx")
    np.savez(tmp_path / "x.npz", x=images(8))
    out = tmp_path / "o"
    rc, lines, err = _cli(["optimize", mp, "--data", tmp_path / "x.npz", "-o", out,
                           "--metric", "umetric_mod2:mean_abs", "--max-error-increase", "0.05"] + FAST, capsys)
    assert rc == 0, err
    pj = json.loads((out / "pareto.json").read_text())
    assert pj["metric"]["name"] == "umetric_mod2:mean_abs" and pj["baseline"]["metric"] == 1.0
    assert pj["chosen"]["error"] <= 0.05 + 1e-12
    assert "original umetric_mod2:mean_abs 1.0000" in lines[1]


def test_a_labelled_image_folder_defaults_to_accuracy_on_its_samples_subset(tmp_path, capsys):
    """Class subfolders are labels (sorted names); a 1-channel 12x12 model input gives grayscale 12x12
    images by default; --samples decodes only the subset."""
    mp = _save(tiny_resnet(0), tmp_path / "clf.onnx")
    data = _image_folder(tmp_path / "imgs", 20, hw=20, classes=4)
    out = tmp_path / "o"
    rc, lines, err = _cli(["optimize", mp, "--data", data, "-o", out, "--samples", "12"] + FAST, capsys)
    assert rc == 0, err
    pj = json.loads((out / "pareto.json").read_text())
    assert pj["metric"]["name"] == "accuracy" and pj["metric"]["reference"] == "labels"
    assert pj["data"]["samples"] == 12 and pj["data"]["labelled"] is True
    from graphprune.data import ImageOptions, load_image_folder
    d = load_image_folder(data, ImageOptions.parse(size=12, channels=1), samples=12, seed=0)
    assert pj["baseline"]["accuracy"] == pytest.approx(1 - error_rate(tiny_resnet(0), d.x, d.y), abs=1e-12)
    assert lines[0] == "metric: accuracy against labels (the default: the data has labels)"


def _dynamic_hw_classifier():
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    init = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
            for n, s in (("w1", (8, 3, 3, 3)), ("w2", (8, 8, 3, 3)), ("fc", (4, 8)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ar"]),
             helper.make_node("Conv", ["ar", "w2"], ["b"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["b"], ["br"]),
             helper.make_node("GlobalAveragePool", ["br"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_dynamic_inputs_are_timed_at_the_data_shape_or_input_shape(tmp_path, monkeypatch):
    """A model with dynamic H/W is timed at the data's H/W (batch 1), not at the one rule's 64;
    --input-shape overrides it; the shape is in pareto.json."""
    import json
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path / "cache"))
    src = _save(_dynamic_hw_classifier(), tmp_path / "dyn.onnx")
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(1).standard_normal((12, 3, 20, 24)).astype(np.float32))
    for extra, want in (([], [1, 3, 20, 24]), (["--input-shape", "x=1,3,32,32"], [1, 3, 32, 32])):
        out = tmp_path / f"out{len(extra)}"
        rc = main(["optimize", str(src), "--data", str(tmp_path / "x.npz"), "-o", str(out), *extra] + FAST)
        assert rc == 0
        latency = json.loads((out / "pareto.json").read_text())["latency"]
        assert latency["input_shapes"] == {"x": want}, latency
