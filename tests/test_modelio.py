"""graphprune.modelio: inputs are never overwritten, outputs are whole, with the user's umask,
and OS failures are one-line GraphpruneErrors naming the path."""
import errno
import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnx_builders as ob
import graphprune as gp
from graphprune import modelio
from graphprune.errors import GraphpruneError


def _sha(p):
    return hashlib.sha256(open(p, "rb").read()).hexdigest()


@pytest.fixture
def model_path(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(ob.paddle_style(), str(p))
    return p


# ---------------------------------------------------------------- output = input, every spelling

def _spellings(tmp_path, model_path):
    (tmp_path / "sub").mkdir()
    os.symlink(model_path, tmp_path / "link.onnx")
    os.link(model_path, tmp_path / "hard.onnx")
    return {
        "same": str(model_path),
        "dotdot": str(tmp_path / "sub" / ".." / "m.onnx"),
        "dotdot_missing_dir": str(tmp_path / "nonexistent" / ".." / "m.onnx"),
        "relative": os.path.relpath(model_path),
        "symlink_to_input": str(tmp_path / "link.onnx"),
        "hard_link": str(tmp_path / "hard.onnx"),
    }


@pytest.mark.parametrize("spelling", ["same", "dotdot", "dotdot_missing_dir", "relative", "symlink_to_input",
                                      "hard_link"])
def test_refuses_every_spelling_of_the_input(spelling, tmp_path, model_path):
    out = _spellings(tmp_path, model_path)[spelling]
    digest = _sha(model_path)
    with pytest.raises(GraphpruneError, match="input model"):
        modelio.write_model(ob.no_conv(), out, source=model_path)
    assert _sha(model_path) == digest


def test_refuses_when_the_input_is_a_symlink_to_the_output(tmp_path, model_path):
    link = tmp_path / "in.onnx"
    os.symlink(model_path, link)
    with pytest.raises(GraphpruneError, match="input model"):
        modelio.refuse_overwriting_input(model_path, link)


def test_works_before_the_output_folder_exists(tmp_path, model_path):
    # optimize checks OUTDIR/best.onnx before OUTDIR exists
    modelio.refuse_overwriting_input(tmp_path / "new" / "best.onnx", model_path)
    with pytest.raises(GraphpruneError, match="input model"):
        modelio.refuse_overwriting_input(tmp_path / "new" / ".." / "m.onnx", model_path)


# ---------------------------------------------------------------- paths that cannot name a file

@pytest.mark.parametrize("how", ["trailing_slash", "existing_dir", "under_a_file", "empty"])
def test_refuses_output_paths_that_are_not_files(how, tmp_path, model_path):
    (tmp_path / "d").mkdir()
    out = {"trailing_slash": str(tmp_path / "foo") + os.sep, "existing_dir": str(tmp_path / "d"),
           "under_a_file": str(model_path / "x.onnx"), "empty": ""}[how]
    with pytest.raises(GraphpruneError):
        modelio.write_model(ob.paddle_style(), out, source=model_path)
    assert not (tmp_path / "foo").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "m.onnx"]


# ---------------------------------------------------------------- umask

@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_outputs_get_the_umask(mask, tmp_path):
    old = os.umask(mask)
    try:
        out = modelio.write_model(ob.paddle_style(), tmp_path / "o.onnx")
        with modelio.atomic_path(tmp_path / "tool") as tmp:  # a writer that makes an executable (a linker)
            with open(tmp, "w") as f:
                f.write("#!/bin/sh\n")
            os.chmod(tmp, 0o700)
    finally:
        os.umask(old)
    assert os.stat(out).st_mode & 0o777 == 0o666 & ~mask
    assert os.stat(tmp_path / "tool").st_mode & 0o777 == 0o777 & ~mask


# ---------------------------------------------------------------- OS failures: one line, the path, the reason

@pytest.mark.parametrize("err", [errno.EROFS, errno.ENOSPC, errno.EACCES])
def test_os_errors_while_writing_become_graphprune_errors(err, tmp_path, monkeypatch):
    def fail(*a, **k):
        raise OSError(err, os.strerror(err), str(a[1]))  # (model, path)
    monkeypatch.setattr(onnx, "save_model", fail)  # the disk fills up / goes read-only mid-write
    with pytest.raises(GraphpruneError) as e:
        modelio.write_model(ob.paddle_style(), tmp_path / "o.onnx")
    assert str(tmp_path / "o.onnx") in str(e.value) and os.strerror(err) in str(e.value)
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []  # no temporary file left


@pytest.mark.parametrize("where", ["mkstemp", "replace", "mkdir"])
def test_read_only_folder(where, tmp_path, monkeypatch):
    def fail(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(a[0]) if a else None)
    target = {"mkstemp": (modelio.tempfile, "mkstemp"), "replace": (modelio.os, "replace"),
              "mkdir": (modelio.Path, "mkdir")}[where]
    monkeypatch.setattr(*target, fail)
    with pytest.raises(GraphpruneError, match="Read-only file system"):
        modelio.write_model(ob.paddle_style(), tmp_path / "new" / "o.onnx")
    assert not (tmp_path / "new" / "o.onnx").exists()


def test_cli_main_turns_an_escaped_os_error_into_one_line(monkeypatch, capsys, model_path):
    from graphprune.cli import main, prune_commands

    def handler(args):
        raise PermissionError(errno.EACCES, "Permission denied", "/some/where/file.bin")
    monkeypatch.setattr(prune_commands, "prune", handler)
    code = main(["prune", str(model_path), "-o", "x.onnx", "--ratio", "0.3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ["graphprune: error: /some/where/file.bin: Permission denied"]


# ---------------------------------------------------------------- load(bytes)

def test_load_accepts_serialized_bytes(model_path):
    data = model_path.read_bytes()
    a, b = gp.load(data), gp.load(str(model_path))
    assert a.SerializeToString() == b.SerializeToString()
    assert gp.load(bytearray(data)).SerializeToString() == a.SerializeToString()


@pytest.mark.parametrize("bad", [b"\x08\x07\x12garbage\xff\xff", b"", b"hello, not a model\n", 12, None, [1, 2]])
def test_load_refuses_what_it_cannot_read(bad, model_path):
    if bad == b"\x08\x07\x12garbage\xff\xff":
        bad = model_path.read_bytes()[:200]  # truncated
    with pytest.raises(GraphpruneError):
        gp.load(bad)


# ---------------------------------------------------------------- models with external data

def _big(seed):
    """paddle_style with weights large enough (> onnx's 1 KiB size_threshold) to go external."""
    m = ob.paddle_style()
    rng = np.random.default_rng(seed)
    for t in m.graph.initializer:
        a = numpy_helper.to_array(t)
        t.CopyFrom(numpy_helper.from_array(rng.standard_normal(a.shape).astype(a.dtype), t.name))
    m.graph.initializer.append(numpy_helper.from_array(rng.standard_normal(4096).astype(np.float32), "unused_big"))
    return m


def _weights(path):
    m = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def _same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture
def lowered(monkeypatch):
    monkeypatch.setattr(modelio, "_EXTERNAL_DATA_THRESHOLD", 1000)


def test_external_write_never_touches_the_inputs_data_file(tmp_path, lowered):
    # the input x.onnx keeps its weights in "y.onnx.data", the name the old writer gave y.onnx's data
    src = tmp_path / "x.onnx"
    onnx.save(_big(0), str(src), save_as_external_data=True, location="y.onnx.data")
    digest = _sha(tmp_path / "y.onnx.data")
    modelio.write_model(_big(1), tmp_path / "y.onnx", source=src)
    assert _sha(tmp_path / "y.onnx.data") == digest
    assert _same(_weights(src), {t.name: numpy_helper.to_array(t) for t in _big(0).graph.initializer})
    assert _same(_weights(tmp_path / "y.onnx"), {t.name: numpy_helper.to_array(t) for t in _big(1).graph.initializer})


def test_refuses_an_output_that_is_the_inputs_data_file(tmp_path, lowered):
    src = tmp_path / "x.onnx"
    onnx.save(_big(0), str(src), save_as_external_data=True, location="w.bin")
    digest = _sha(tmp_path / "w.bin")
    with pytest.raises(GraphpruneError, match="external data"):
        modelio.write_model(_big(1), tmp_path / "sub" / ".." / "w.bin", source=src)
    assert _sha(tmp_path / "w.bin") == digest


def test_external_write_keeps_the_callers_model_and_replaces_the_old_pair(tmp_path, lowered):
    m = _big(1)
    before = m.SerializeToString()
    out = tmp_path / "o.onnx"
    modelio.write_model(_big(0), out)
    first = sorted(p.name for p in tmp_path.iterdir())
    modelio.write_model(m, out)
    assert m.SerializeToString() == before  # onnx.save_model would have moved the weights out of it
    assert _same(_weights(out), {t.name: numpy_helper.to_array(t) for t in m.graph.initializer})
    second = sorted(p.name for p in tmp_path.iterdir())
    assert len(first) == len(second) == 2 and first != second  # the old data file went with the old model


_CRASH = textwrap.dedent("""
    import os, sys, onnx
    sys.path.insert(0, {tests!r})
    from graphprune import modelio
    from test_modelio import _big
    modelio._EXTERNAL_DATA_THRESHOLD = 1000
    real = os.replace
    def crash(a, b):
        if {after}:
            real(a, b)
        os._exit(3)  # the process dies: no cleanup runs
    os.replace = crash
    modelio.write_model(_big(1), {out!r})
""")


@pytest.mark.parametrize("after", [False, True], ids=["crash_before_model_rename", "crash_after_model_rename"])
def test_a_crash_leaves_the_old_or_the_new_pair(after, tmp_path):
    out = tmp_path / "o.onnx"
    old = {t.name: numpy_helper.to_array(t) for t in _big(0).graph.initializer}
    new = {t.name: numpy_helper.to_array(t) for t in _big(1).graph.initializer}
    # the old pair, as a previous run wrote it
    script = _CRASH.format(tests=os.path.dirname(__file__), after=after, out=str(out))
    subprocess.run([sys.executable, "-c", script.replace("_big(1)", "_big(0)").replace("os.replace = crash", "")],
                   check=True)
    assert _same(_weights(out), old)
    r = subprocess.run([sys.executable, "-c", script])
    assert r.returncode == 3
    assert _same(_weights(out), new if after else old)
