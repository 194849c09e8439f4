"""`--data` and the importance options: every bad value is a one-line error (exit 2) before any scoring;
data without labels is scored against the model's own top-1 class (issue 10, issue 12 item 1)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from graphprune import metadata as md
from graphprune.cli import main
from graphprune.data import Dataset, load_data
from graphprune.errors import GraphpruneError
from graphprune.data import ImageOptions
from onnx_builders import model as build, out, x_input

torch.set_num_threads(1)
CLASSES = 4


def _model(input_name="x"):
    """Conv -> Relu -> GAP -> Gemm, fixed weights (seed 2: the top-1 class differs across the samples)."""
    rng = np.random.default_rng(2)

    def w(*shape):
        return (rng.standard_normal(shape) * 0.3).astype(np.float32)
    nodes = [helper.make_node("Conv", [input_name, "w1"], ["a"], "conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], "relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], "gap"),
             helper.make_node("Flatten", ["g"], ["f"], "flat"),
             helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], "fc", transB=1)]
    m = build(nodes, {"w1": w(6, 3, 3, 3), "w2": w(CLASSES, 6), "b2": w(CLASSES)}, [x_input(3, 8)], [out()])
    m.graph.input[0].name = input_name
    return m


@pytest.fixture()
def env(tmp_path):
    mpath = tmp_path / "m.onnx"
    onnx.save(_model(), mpath)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((8, 3, 8, 8)) + 3 * rng.standard_normal((8, 3, 1, 1))).astype(np.float32)
    y = np.arange(8) % CLASSES
    return tmp_path, mpath, x, y


def _run(tmp, mpath, *extra, x=None, y=None, npz=True, method="taylor"):
    args = ["importance", str(mpath), "--method", method, "--no-progress", "-o", str(tmp / "out.onnx")]
    if npz:
        p = tmp / "d.npz"
        np.savez(p, **{k: v for k, v in (("x", x), ("y", y)) if v is not None})
        args += ["--data", str(p)]
    return main(args + list(extra))


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("graphprune: error:"), err
    for word in words:
        assert word in err, err
    return err


BAD_DATA = {
    "string x": (lambda x, y: (np.full((8, 3, 8, 8), "a"), y), "real numbers"),
    "complex x": (lambda x, y: (x.astype(np.complex64), y), "real numbers"),
    "NaN in x": (lambda x, y: (np.where(x > 1, np.nan, x), y), "NaN"),
    "inf in x": (lambda x, y: (np.where(x > 1, np.inf, x), y), "infinity"),
    "x overflows float32": (lambda x, y: (x.astype(np.float64) * 1e300, y), "float32"),
    "string y": (lambda x, y: (x, np.array(["cat"] * 8)), "integers"),
    "label 1e20": (lambda x, y: (x, np.full(8, 1e20)), "not a class"),
    "label 1.5": (lambda x, y: (x, np.full(8, 1.5)), "integers"),
    "NaN label": (lambda x, y: (x, np.full(8, np.nan)), "NaN"),
    "negative label": (lambda x, y: (x, -y), ">= 0"),
    "label out of range": (lambda x, y: (x, y + CLASSES), "out of range"),
    "y length": (lambda x, y: (x, y[:3]), "matching x"),
    "empty": (lambda x, y: (x[:0], y[:0]), "empty"),
}


@pytest.mark.parametrize("case", list(BAD_DATA), ids=list(BAD_DATA))
def test_bad_data_is_a_one_line_error(env, capsys, case):
    tmp, mpath, x, y = env
    make, word = BAD_DATA[case]
    bx, by = make(x, y)
    assert _run(tmp, mpath, x=bx, y=by) == 2
    _one_line_error(capsys, word)
    assert not (tmp / "out.onnx").exists()


BAD_OPTIONS = {
    "n-steps -5": (["--n-steps", "-5"], "ig", "--n-steps"),
    "n-steps 0": (["--n-steps", "0"], "ig", "--n-steps"),          # was silently the default
    "n-steps huge": (["--n-steps", "100000000"], "conductance", "--n-steps"),
    "n-steps for taylor": (["--n-steps", "4"], "taylor", "applies to"),
    "seed -1": (["--seed", "-1"], "taylor", "--seed"),
    "seed 2^64": (["--seed", str(2 ** 64)], "taylor", "--seed"),
    "samples 0": (["--samples", "0"], "taylor", "--samples"),
    "batch 0": (["--batch-size", "0"], "taylor", "--batch-size"),
    "batch huge": (["--batch-size", "10000000"], "taylor", "--batch-size"),
    "mean with npz": (["--mean", "0.5"], "taylor", "image folders only"),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS), ids=list(BAD_OPTIONS))
def test_bad_options_are_one_line_errors(env, capsys, case):
    tmp, mpath, x, y = env
    extra, method, word = BAD_OPTIONS[case]
    assert _run(tmp, mpath, *extra, x=x, y=y, method=method) == 2
    _one_line_error(capsys, word)


@pytest.fixture()
def images(tmp_path):
    from PIL import Image
    root = tmp_path / "imgs"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (10, 12), (i * 60, 50, 200)).save(root / cls / f"{i}.png")
    return root


@pytest.mark.parametrize("extra,word", [(["--mean", "abc"], "--mean"), (["--mean", "0.1,0.2"], "1 or 3 values"),
                                        (["--std", "0"], "--std"), (["--std", "nan"], "finite"),
                                        (["--scale", "1/0"], "zero"), (["--size", "0"], "--size"),
                                        (["--size", "8", "8", "8"], "--size"),
                                        (["--size", "100000"], "available memory")])
def test_bad_image_options(env, images, capsys, extra, word):
    tmp, mpath, _, _ = env
    assert _run(tmp, mpath, "--data", str(images), *extra, npz=False) == 2
    _one_line_error(capsys, word)


def test_memory_is_estimated_before_decoding(images, monkeypatch):
    """--size 100000 is refused from the estimate (samples x C x H x W x 4 bytes), nothing decoded."""
    monkeypatch.setattr(ImageOptions, "decode", lambda *a: pytest.fail("decoded an image"))
    with pytest.raises(GraphpruneError, match=r"6 images of 3x100000x100000 would take 670\.6 GiB"):
        load_data(images, size=100000)


def test_nan_weights_are_refused_naming_the_initializer(env, capsys):
    tmp, mpath, x, y = env
    m = _model()
    w1 = next(t for t in m.graph.initializer if t.name == "w1")
    a = onnx.numpy_helper.to_array(w1).copy()
    a[0, 0, 0, 0] = np.nan
    w1.CopyFrom(onnx.numpy_helper.from_array(a, "w1"))
    onnx.save(m, mpath)
    for method in ("taylor", "l1"):
        assert _run(tmp, mpath, x=x, y=y, method=method) == 2
        _one_line_error(capsys, "'w1'", "NaN")


# ---------------------------------------------------------------- data without labels (issue 12 item 1)
def test_unlabelled_npz_targets_the_top1_class(env, capsys):
    """x only: scored against the model's prediction; the same as passing those predictions as labels."""
    from graphprune.bridge import to_torch
    from graphprune.importance import compute_importance
    tmp, mpath, x, y = env
    assert _run(tmp, mpath, x=x) == 0
    assert "top-1" in capsys.readouterr().err
    meta = md.read_importance(onnx.load(tmp / "out.onnx"))
    assert meta["parameters"]["target"].startswith("top-1")
    m = onnx.load(mpath)
    with torch.no_grad():
        pred = to_torch(m)(torch.from_numpy(x)).argmax(1).numpy()
    assert len(set(pred)) > 1  # the targets differ per sample
    labelled = compute_importance(m, Dataset(x, pred), "taylor", progress=False)
    for k, v in labelled.scores.items():
        np.testing.assert_allclose(meta["scores"][k], v, rtol=1e-6)


def test_npz_array_named_like_the_input(tmp_path, env, capsys):
    tmp, _, x, y = env
    mpath = tmp / "named.onnx"
    onnx.save(_model("images"), mpath)
    p = tmp / "named.npz"
    np.savez(p, images=x, y=y)
    assert main(["importance", str(mpath), "--data", str(p), "--method", "gradcam", "--no-progress",
                 "-o", str(tmp / "o.onnx")]) == 0
    np.savez(p, pictures=x)
    capsys.readouterr()
    assert main(["importance", str(mpath), "--data", str(p), "-o", str(tmp / "o.onnx")]) == 2
    _one_line_error(capsys, "'images'")


def test_flat_image_folder_and_default_size(env, tmp_path, capsys):
    """Images without class folders are unlabelled; --size defaults to the model's static 8x8 input."""
    from PIL import Image
    tmp, mpath, _, _ = env
    flat = tmp / "flat"
    flat.mkdir()
    for i in range(3):
        Image.new("RGB", (20, 16), (i * 60, 50, 200)).save(flat / f"{i}.jpg")
    ds = load_data(flat, size=8, require_labels=False)
    assert ds.x.shape == (3, 3, 8, 8) and ds.y is None
    with pytest.raises(GraphpruneError, match="no class subfolders"):
        load_data(flat, size=8)
    assert _run(tmp, mpath, "--data", str(flat), npz=False) == 0
    assert "top-1" in capsys.readouterr().err


def test_image_preprocessing_order(tmp_path):
    """scale, then channel order, then mean/std (in the model's channel order), then layout."""
    from PIL import Image
    (tmp_path / "c").mkdir()
    Image.new("RGB", (4, 2), (10, 20, 30)).save(tmp_path / "c" / "0.png")
    opts = ImageOptions.parse(size=(2, 4), mean="1,2,3", std="2", channel_order="bgr", layout="nhwc", scale="1/10")
    a = opts.decode(tmp_path / "c" / "0.png")
    assert a.shape == (2, 4, 3)
    np.testing.assert_allclose(a[0, 0], [(3 - 1) / 2, (2 - 2) / 2, (1 - 3) / 2], rtol=1e-6)
    ds = load_data(tmp_path, size=(2, 4), mean="0.5", std="0.25")
    assert ds.x.shape == (1, 3, 2, 4) and list(ds.y) == [0]
    np.testing.assert_allclose(ds.x[0, :, 0, 0], (np.array([10, 20, 30]) / 255 - 0.5) / 0.25, rtol=1e-5)


def test_image_subset_matches_dataset_subsample(images):
    """Decoding only the subset gives the same samples as loading all and subsampling (same seed)."""
    full = load_data(images, size=8).subsample(4, seed=3)
    part = load_data(images, size=8, samples=4, seed=3)
    np.testing.assert_array_equal(full.x, part.x)
    np.testing.assert_array_equal(full.y, part.y)
