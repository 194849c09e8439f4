"""The CLI contract: one-line errors with exit 2, inputs untouched, atomic outputs."""
import hashlib
import os
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


# ---------------------------------------------------------------- outputs that must be refused (issue 10)

def _spelled(tmp_path, model_path, spelling):
    if spelling == "symlink":
        os.symlink(model_path, tmp_path / "link.onnx")
        return tmp_path / "link.onnx"
    if spelling == "hard_link":
        os.link(model_path, tmp_path / "hard.onnx")
        return tmp_path / "hard.onnx"
    if spelling == "dotdot":
        return f"{tmp_path}/nowhere/../{model_path.name}"
    if spelling == "relative":
        return os.path.relpath(model_path)
    return model_path


@pytest.mark.parametrize("spelling", ["same", "symlink", "hard_link", "dotdot", "relative"])
def test_compile_refuses_to_replace_its_input(spelling, model_path, tmp_path):
    out = _spelled(tmp_path, model_path, spelling)
    digest = _sha(model_path)
    code, _, err = gp("compile", model_path, "-o", out)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "input model" in err, err
    assert _sha(model_path) == digest
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("how", ["trailing_slash", "under_a_file", "existing_dir"])
def test_prune_refuses_an_output_that_cannot_be_a_file(how, model_path, tmp_path):
    (tmp_path / "d").mkdir()
    out = {"trailing_slash": f"{tmp_path}/foo/", "under_a_file": f"{model_path}/x.onnx",
           "existing_dir": f"{tmp_path}/d"}[how]
    code, _, err = gp("prune", model_path, "-o", out, "--ratio", "0.3")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "error" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "m.onnx"]
    assert not list((tmp_path / "d").iterdir())


def test_compiled_library_gets_the_umask(model_path, tmp_path):
    r = subprocess.run(["sh", "-c", 'umask 027 && exec "$0" -m graphprune compile "$1" -o "$2"', sys.executable,
                        str(model_path), str(tmp_path / "m.so")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    mode = os.stat(tmp_path / "m.so").st_mode & 0o777
    assert mode in (0o750, 0o640), oct(mode)  # 0o777 or 0o666 & ~umask, never mkstemp's 0o600


# ---------------------------------------------------------------- start-up: nothing heavy to build the parser

def test_building_the_parser_imports_nothing_heavy():
    code = ("import sys, graphprune.cli; graphprune.cli.build_parser(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'tvm', 'captum', 'onnxruntime', "
            "'onnx', 'onnx_graphsurgeon', 'scipy', 'nevergrad'}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_importance_help_names_every_method():
    from graphprune.importance import METHODS
    code, out, _ = gp("importance", "--help")
    assert code == 0
    text = " ".join(out.split())
    assert all(m in text for m in METHODS), text


def test_channel_components_match_scipy():
    """analysis._components replaced scipy's connected_components (0.3 s of import): same labels."""
    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from graphprune.analysis import _components

    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 300))
        e = int(rng.integers(0, 2 * n))
        a, b = rng.integers(0, n, e), rng.integers(0, n, e)
        ref = connected_components(coo_matrix((np.ones(e, np.int8), (a, b)), shape=(n, n)), directed=False)[1]
        assert np.array_equal(_components(n, a, b), ref)
