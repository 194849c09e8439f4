"""`graphprune quantize`: the report, the written QDQ/fp16 model, and one-line errors
(exit 2, nothing written) for bad input."""
import subprocess
import sys

import numpy as np
import onnx
import pytest

from graphprune.cli import main
from graphprune.quant import graph_precision, precision_of
from test_quantize import data, small_cnn


@pytest.fixture
def files(tmp_path):
    onnx.save(small_cnn(), str(tmp_path / "m.onnx"))
    x = data(48)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(48) % 5)
    return tmp_path


def test_int8_mixed_precision_report_and_model(files, capsys):
    out = files / "q.onnx"
    rc = main(["quantize", str(files / "m.onnx"), "-o", str(out), "--data", str(files / "d.npz"), "--per-channel",
               "--exclude", "conv2", "--samples", "32"])
    text = capsys.readouterr().out
    assert rc == 0, text
    q = onnx.load(str(out))
    assert graph_precision(q) == precision_of(q) == {"conv1": "int8", "conv2": "fp32", "fc": "int8"}
    for needle in ("layers: 2 int8, 1 fp32", "48 samples, within tolerance 15.0%", "y: max abs error",
                   "top-1 agreement", "accuracy on the labelled check samples: fp32", "size: 5,908 -> ",
                   "energy (estimated): ", "energy (measured): ", f"wrote {out}"):
        assert needle in text, (needle, text)


def test_fp16_model(files, capsys):
    out = files / "h.onnx"
    assert main(["quantize", str(files / "m.onnx"), "-o", str(out), "--data", str(files / "d.npz"),
                 "--precision", "float16"]) == 0
    text = capsys.readouterr().out
    assert "layers: 3 fp16" in text and "size: 5,908 -> 2,954 bytes (2.00x smaller" in text
    assert set(graph_precision(onnx.load(str(out))).values()) == {"fp16"}


def test_outside_the_tolerance_nothing_is_written(files, capsys):
    out = files / "q.onnx"
    rc = main(["quantize", str(files / "m.onnx"), "-o", str(out), "--data", str(files / "d.npz"),
               "--tolerance", "0"])
    captured = capsys.readouterr()
    assert rc == 1 and not out.exists()
    assert "NOT within tolerance" in captured.out and "nothing written" in captured.err


@pytest.mark.parametrize("extra, message", [
    ([], "quantize needs --data"),
    (["--data", "{d}", "--precision", "int4"], "unknown --precision 'int4'; choose from int8, fp16"),
    (["--data", "{d}", "--exclude", "conv1,convx"], "no node named 'convx'"),
    (["--data", "{d}", "--precision", "fp16", "--per-channel"], "apply to --precision int8 only"),
    (["--data", "{d}", "--precision", "fp16", "--calibration", "percentile"], "apply to --precision int8 only"),
    (["--data", "{d}", "--calibration", "kl"], "--calibration: unknown calibration method 'kl'; choose from minmax"),
    (["--data", "{d}", "--calibration", "percentile=x"], "the calibration percentile must be a number in (0, 100]"),
    (["--data", "{bad}"], "the model expects ['N', 3, 8, 8]"),
    (["--data", "{d}", "--tolerance", "-1"], "--tolerance must be a non-negative number"),
    (["--data", "{d}", "--samples", "0"], "--samples must be positive"),
    (["--data", "{d}", "--seed", "-1"], "--seed must be in 0 .. 2^32-2"),
    (["--data", "{d}", "-o", "{model}"], "output path is the input model"),
    (["--data", "{labels}"], "label 7 is out of range for a model with 5 outputs"),
])
def test_bad_input_one_line_exit_2(files, extra, message, capsys):
    np.savez(files / "bad.npz", x=np.zeros((4, 3, 5, 5), np.float32))
    np.savez(files / "labels.npz", x=data(8), y=np.arange(8))
    subst = {"d": files / "d.npz", "bad": files / "bad.npz", "model": files / "m.onnx", "labels": files / "labels.npz"}
    args = [a.format(**subst) for a in extra]
    if "-o" not in args:
        args += ["-o", str(files / "out.onnx")]
    before = (files / "m.onnx").read_bytes()
    assert main(["quantize", str(files / "m.onnx"), *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("graphprune: error: "), lines
    assert not (files / "out.onnx").exists() and (files / "m.onnx").read_bytes() == before
    assert not [f for f in files.iterdir() if f.name.startswith(".out.onnx")]   # no temporary left behind


def test_bad_input_from_the_shell_is_one_line(files):
    p = subprocess.run([sys.executable, "-m", "graphprune", "quantize", str(files / "m.onnx"), "-o",
                        str(files / "out.onnx"), "--data", str(files / "d.npz"), "--exclude", "relu9"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.strip() == ("graphprune: error: no node named 'relu9' in the model "
                                                      "(did you mean 'relu2', 'relu1'?)")
    assert not (files / "out.onnx").exists()


def test_image_folder_data_is_resized_to_the_model_input(files, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (files / "imgs" / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(files / "imgs" / cls / f"{i}.png")
    out = files / "q.onnx"
    assert main(["quantize", str(files / "m.onnx"), "-o", str(out), "--data", str(files / "imgs")]) == 0
    text = capsys.readouterr().out
    assert "8 samples, within tolerance" in text and "accuracy on the labelled check samples" in text
    assert out.exists()
