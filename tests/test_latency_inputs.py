"""What bench/compile time and report: the input shapes (one rule with prune/count), the thread
count, honest labels for x86 variants on the ort backend, and a cache that survives bad entries."""
from __future__ import annotations

import json

import onnx
import pytest

import graphprune.cli as cli
from graphprune.inputs import DEFAULT_DYNAMIC_DIM
from graphprune.targets import cache as lcache
from graphprune.targets import measure_latency
from graphprune.targets.measure_local import default_threads

from _latency_models import tiny_cnn, yolo_like
from _latency_models import isolated_latency_env  # noqa: F401  (autouse fixture)

D = DEFAULT_DYNAMIC_DIM


@pytest.fixture
def yolo_path(tmp_path):
    p = tmp_path / "yolo.onnx"
    onnx.save(yolo_like(), p)
    return p


def test_dynamic_dims_follow_the_one_rule_and_are_reported(yolo_path, capsys):
    """Symbolic H/W were timed at 1x1; they take the rule of prune/count (batch 1, others 64)."""
    assert cli.main(["bench", str(yolo_path), "--repeats", "3", "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["input_shapes"] == {"x": [1, 3, D, D]}
    assert obj["threads"] == default_threads()
    assert cli.main(["bench", str(yolo_path), "--repeats", "3"]) == 0
    out = capsys.readouterr().out
    assert f"input x=1x3x{D}x{D}" in out and f"threads {default_threads()}" in out


def test_input_shape_override_is_timed_and_keyed_separately(yolo_path, capsys):
    a = measure_latency(yolo_path, repeats=3, input_shapes={"x": [1, 3, 96, 128]})
    assert a.input_shapes == {"x": [1, 3, 96, 128]} and not a.cached
    b = measure_latency(yolo_path, repeats=3)   # default shape: another cache entry
    assert b.input_shapes == {"x": [1, 3, D, D]} and not b.cached
    assert measure_latency(yolo_path, repeats=3, input_shapes={"x": [1, 3, 96, 128]}).cached
    assert cli.main(["bench", str(yolo_path), "--repeats", "3", "--input-shape", "x=1,3,32,48", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["input_shapes"] == {"x": [1, 3, 32, 48]}


@pytest.mark.parametrize("argv, message", [
    (["bench", "{y}", "--input-shape", "z=1,3,8,8"], "the model has no input 'z'"),
    (["bench", "{y}", "--input-shape", "x=1,3,8"], "does not fit the model's input shape"),
    (["bench", "{y}", "--input-shape", "x=1,3,a,8"], "expected NAME=D,D,..."),
    (["compile", "{y}", "--input-shape", "x=1,4,8,8", "-o", "{t}/y.so"], "does not fit"),
    (["bench", "{y}", "--threads", "-2"], "--threads must be a positive integer"),
    (["bench", "{y}", "--threads", "0"], "--threads must be a positive integer"),
    (["bench", "{y}", "--threads", "100000"], "more than 4x the"),
    (["bench", "{y}", "--repeats", "0"], "--repeats must be >= 1"),
    (["bench", "{y}", "--repeats", "-3"], "--repeats must be >= 1"),
    (["bench", "{y}", "--timeout", "0"], "--timeout must be a positive number"),
    (["bench", "{y}", "--timeout", "nan"], "--timeout must be a positive number"),
    (["compile", "{y}", "--timeout", "-1", "-o", "{t}/y.so"], "--timeout must be a positive number"),
    (["bench", "{y}", "--backend", "tvm", "--threads", "1"], "TVM_NUM_THREADS"),
])
def test_bad_numbers_are_one_line_exit_2(argv, message, yolo_path, tmp_path, capsys):
    assert cli.main([a.format(y=yolo_path, t=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.startswith("graphprune: error: ") and err.count("\n") == 1


def test_api_bounds_threads_repeats_timeout():
    from graphprune.errors import GraphpruneError
    m = tiny_cnn()
    for kw, msg in [({"threads": -1}, "positive integer"), ({"threads": 4 * default_threads() + 1}, "more than 4x"),
                    ({"repeats": 0}, "repeats"), ({"timeout": 0.0}, "timeout")]:
        with pytest.raises(GraphpruneError, match=msg):
            measure_latency(m, **kw)
    assert measure_latency(m, repeats=2, threads=1).threads == 1


@pytest.mark.parametrize("garbage", ['{"foo": 1}', "[1, 2]", '"text"', "null",
                                     '{"median_ms": "fast", "spread_ms": 0, "repeats": 3}', b"\xff\xfe\x00garbage"])
def test_malformed_cache_entry_is_a_miss_and_is_overwritten(garbage, tmp_path, capsys):
    p = tmp_path / "tiny.onnx"
    onnx.save(tiny_cnn(), p)
    assert cli.main(["bench", str(p), "--repeats", "3", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    entries = list((lcache.cache_dir() / "latency").rglob("*.json"))
    assert len(entries) == 1
    entries[0].write_bytes(garbage if isinstance(garbage, bytes) else garbage.encode())
    assert cli.main(["bench", str(p), "--repeats", "3", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["cached"] is False and again["repeats"] == 3 and again["median_ms"] > 0
    assert set(again) == set(first)
    assert cli.main(["bench", str(p), "--repeats", "3", "--json"]) == 0   # the entry was rewritten
    assert json.loads(capsys.readouterr().out)["cached"] is True


def _fake_cpuinfo(monkeypatch, tmp_path, flags: str, model: str = "Test CPU 9000"):
    from graphprune.targets import hostcpu
    f = tmp_path / "cpuinfo"
    f.write_text(f"processor\t: 0\nmodel name\t: {model}\nflags\t\t: {flags}\n\n")
    monkeypatch.setattr(hostcpu, "CPUINFO", f)


BASE_X86 = "fpu sse sse2 pni ssse3 sse4_1 sse4_2 popcnt aes avx f16c fma bmi1 bmi2 avx2"
SPR = (BASE_X86 + " avx512f avx512dq avx512cd avx512bw avx512vl avx512ifma avx512vbmi avx512_vbmi2 avx512_vnni "
       "avx512_bitalg avx512_vpopcntdq avx512_bf16 avx512_fp16 avx_vnni amx_bf16 amx_tile amx_int8 sha_ni "
       "gfni vaes vpclmulqdq")


def _spr_target(tmp_path):
    p = tmp_path / "spr.json"
    p.write_text(json.dumps({"targets": {"spr": {"tvm": {"kind": "llvm", "mtriple": "x86_64-linux-gnu",
                                                         "mcpu": "sapphirerapids"}}}}))
    from graphprune.targets import get_target
    return get_target("spr", [p])


def test_host_features_come_from_proc_cpuinfo(monkeypatch, tmp_path):
    """A CPU whose kernel flags list AMX runs AMX code, whatever LLVM's CPU-name table says."""
    from graphprune.errors import GraphpruneError
    from graphprune.targets.registry import check_runs_here
    spr = _spr_target(tmp_path)
    _fake_cpuinfo(monkeypatch, tmp_path, SPR)
    check_runs_here(spr)   # no error: every feature sapphirerapids code uses is listed
    _fake_cpuinfo(monkeypatch, tmp_path, SPR.replace(" amx_tile", "").replace(" amx_int8", ""))
    with pytest.raises(GraphpruneError, match="lacks .*amx-int8"):
        check_runs_here(spr)


def test_ort_on_an_x86_variant_is_labelled_as_this_host(tmp_path, monkeypatch, capsys):
    """onnxruntime times this CPU; the target name is only what was requested, and a host
    without the target's instruction sets is refused."""
    p = tmp_path / "tiny.onnx"
    onnx.save(tiny_cnn(), p)
    _fake_cpuinfo(monkeypatch, tmp_path, BASE_X86, model="Test CPU 9000")
    assert cli.main(["bench", str(p), "--target", "x86-avx2", "--repeats", "3"]) == 0
    out = capsys.readouterr().out
    assert "target x86-avx2 as requested only" in out and "this host's CPU (Test CPU 9000)" in out
    assert cli.main(["bench", str(p), "--target", "x86", "--repeats", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["note"] == ""
    _fake_cpuinfo(monkeypatch, tmp_path, BASE_X86.replace(" avx2", "").replace(" fma", ""))
    assert cli.main(["bench", str(p), "--target", "x86-avx2", "--repeats", "3"]) == 2
    assert "uses CPU features this host lacks (avx2" in capsys.readouterr().err
