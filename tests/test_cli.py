"""The CLI contract: one-line errors with exit 2, inputs untouched, atomic outputs."""
import hashlib
import json
import subprocess
import sys

import onnx
import pytest

import onnx_builders as ob


def gp(*args):
    r = subprocess.run([sys.executable, "-m", "graphprune", *map(str, args)], capture_output=True, text=True)
    return r.returncode, r.stdout, r.stderr


@pytest.fixture
def model_path(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(ob.paddle_style(), str(p))
    return p


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_prune_verify_writes_valid_model(model_path, tmp_path):
    digest = _sha(model_path)
    code, out, err = gp("prune", model_path, "-o", tmp_path / "o.onnx", "--ratio", "0.5", "--verify")
    assert code == 0, err
    assert "MACs" in out and "params" in out and "verify: " in out and "max abs diff" in out
    onnx.checker.check_model(onnx.load(str(tmp_path / "o.onnx")), full_check=True)
    assert _sha(model_path) == digest
    assert not list(tmp_path.glob(".*.tmp"))


def test_analyze_json_keys(model_path):
    code, out, _ = gp("analyze", model_path, "--json")
    groups = json.loads(out)
    assert code == 0 and groups
    assert {"id", "channels", "members", "prunable", "reason"} <= set(groups[0])
    code, out, _ = gp("analyze", model_path)
    assert code == 0 and out.splitlines()[0].startswith("group 0:")


def test_input_shape_sets_the_counted_resolution(tmp_path):
    dynamic = tmp_path / "dyn.onnx"
    onnx.save(ob.paddle_style(hw="H"), str(dynamic))
    code, small, _ = gp("prune", dynamic, "-o", tmp_path / "a.onnx", "--ratio", "0.5", "--input-shape", "x=1,3,8,8")
    code2, big, _ = gp("prune", dynamic, "-o", tmp_path / "b.onnx", "--ratio", "0.5",
                       "--input-shape", "x=1,3,16,16", "--verify")
    assert code == 0 and code2 == 0 and "verify: " in big and "tensors compared" in big
    macs = [int(line.split()[1].replace(",", "")) for text in (small, big) for line in text.splitlines()
            if line.startswith("MACs")]
    assert macs[1] == 4 * macs[0]


@pytest.mark.parametrize("case", ["missing", "not_onnx", "truncated", "no_conv", "ratio_high", "ratio_neg",
                                  "same_output", "bad_round", "bad_shape", "shape_mismatch"])
def test_bad_input_one_line_exit_2(case, model_path, tmp_path):
    target = model_path
    extra = ["--ratio", "0.3"]
    if case == "missing":
        target = tmp_path / "nope.onnx"
    elif case == "not_onnx":
        target = tmp_path / "text.onnx"
        target.write_text("hello, not a model\n")
    elif case == "truncated":
        target = tmp_path / "cut.onnx"
        target.write_bytes(model_path.read_bytes()[:200])
    elif case == "no_conv":
        target = tmp_path / "relu.onnx"
        onnx.save(ob.no_conv(), str(target))
    elif case == "ratio_high":
        extra = ["--ratio", "1.0"]
    elif case == "ratio_neg":
        extra = ["--ratio", "-0.1"]
    elif case == "bad_round":
        extra = ["--ratio", "0.3", "--round-to", "0"]
    elif case == "bad_shape":
        extra = ["--ratio", "0.3", "--input-shape", "x=1,3,a,8"]
    elif case == "shape_mismatch":
        extra = ["--ratio", "0.3", "--input-shape", "x=1,4,8,8"]
    out = target if case == "same_output" else tmp_path / "o.onnx"
    digest = _sha(target) if target.exists() else None
    code, stdout, err = gp("prune", target, "-o", out, *extra)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("graphprune: error:"), err
    assert "Traceback" not in err
    if digest:
        assert _sha(target) == digest
    if case != "same_output":
        assert not out.exists()
