"""Targets as data: the built-in table, user target files, the `targets` command, cross-compiles."""
from __future__ import annotations

import json

import pytest

import graphprune.cli as cli
from graphprune.errors import GraphpruneError
from graphprune.targets import compile_model, get_target, list_targets

from _latency_models import tiny_cnn
from _latency_models import isolated_latency_env  # noqa: F401  (autouse fixture)

EM_X86_64, EM_AARCH64 = 62, 183



def elf_machine(path) -> int:
    head = open(path, "rb").read(20)
    assert head[:4] == b"\x7fELF", "not an ELF file"
    assert head[4] == 2, "not ELF64"
    return int.from_bytes(head[18:20], "little")


def test_builtin_targets_declare_everything():
    names = {t.name: t for t in list_targets()}
    for name in ("x86", "x86-avx2", "x86-avx512", "arm-a72", "arm-a53", "cuda"):
        assert name in names
        t = names[name]
        assert t.tvm["kind"] and t.rpc_key and t.channel_step >= 1 and t.power_w > 0
    assert names["arm-a72"].cc == "aarch64-linux-gnu-gcc"
    assert names["arm-a72"].tvm["mcpu"] == "cortex-a72" and "+neon" in names["arm-a72"].tvm["mattr"]
    assert names["cuda"].tvm["arch"].startswith("sm_")


@pytest.mark.parametrize("name", ["x86", "x86-avx2", "x86-avx512", "arm-a72", "arm-a53", "cuda"])
def test_every_builtin_is_a_valid_tvm_target(name):
    t = get_target(name).tvm_target()
    assert str(t.kind.name) == get_target(name).tvm["kind"]


def test_unknown_target_lists_known_names():
    with pytest.raises(GraphpruneError, match=r"unknown target 'nope' \(known: .*arm-a72"):
        get_target("nope")


def _user_file(tmp_path, name="myboard"):
    p = tmp_path / "my.json"
    p.write_text(json.dumps({"targets": {name: {
        "description": "my board", "tvm": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a55"},
        "cc": "aarch64-linux-gnu-gcc", "rpc_key": "mine", "channel_step": 4, "power_w": 3.5}}}))
    return p


def test_user_targets_file_env_and_config_dir(tmp_path, monkeypatch, capsys):
    p = _user_file(tmp_path)
    assert cli.main(["targets", "--targets-file", str(p)]) == 0
    assert "myboard" in capsys.readouterr().out
    assert cli.main(["targets"]) == 0
    assert "myboard" not in capsys.readouterr().out
    monkeypatch.setenv("GRAPHPRUNE_TARGETS", str(p))
    assert get_target("myboard").channel_step == 4
    monkeypatch.delenv("GRAPHPRUNE_TARGETS")
    cfg = tmp_path / "config" / "graphprune" / "targets"
    cfg.mkdir(parents=True)
    _user_file(cfg, "cfgboard").rename(cfg / "board.json")
    assert get_target("cfgboard").rpc_key == "mine"


def test_targets_json_output(capsys):
    assert cli.main(["targets", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["arm-a53"]["tvm"]["mcpu"] == "cortex-a53"


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"targets": {"b": {"cc": "gcc"}}}', "needs a 'tvm' object"),
    ('{"targets": {"b": {"tvm": {"mcpu": "x"}}}}', "has no 'kind'"),
])
def test_malformed_targets_file_is_one_line_exit_2(tmp_path, capsys, content, message):
    p = tmp_path / "bad.json"
    p.write_text(content)
    assert cli.main(["targets", "--targets-file", str(p)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_arm_a72_builds_a_real_aarch64_library(tmp_path):
    out = tmp_path / "m_arm.so"
    compile_model(tiny_cnn(), "arm-a72", output=out)
    assert elf_machine(out) == EM_AARCH64


def test_compile_cli_x86_and_user_arm_target(tmp_path, capsys):
    import onnx
    model = tmp_path / "m.onnx"
    onnx.save(tiny_cnn(), model)
    assert cli.main(["compile", str(model), "--target", "x86", "-o", str(tmp_path / "x.so")]) == 0
    assert elf_machine(tmp_path / "x.so") == EM_X86_64
    assert "untuned" in capsys.readouterr().out
    p = _user_file(tmp_path)
    assert cli.main(["compile", str(model), "--target", "myboard", "--targets-file", str(p),
                     "-o", str(tmp_path / "a.so")]) == 0
    assert elf_machine(tmp_path / "a.so") == EM_AARCH64


def test_cuda_compiles_to_cuda_source_without_a_gpu():
    c = compile_model(tiny_cnn(), "cuda")
    mods, stack = [], [c.executable.mod]
    while stack:
        m = stack.pop()
        mods.append(m)
        stack.extend(m.imports)
    cuda = [m for m in mods if m.kind == "cuda"]
    assert cuda, "no CUDA device module was generated"
    src = cuda[0].inspect_source("cuda")
    assert "__global__" in src


def _board(**fields) -> dict:
    spec = {"tvm": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a55"},
            "cc": "aarch64-linux-gnu-gcc", "channel_step": 8, "power_w": 3.0}
    spec.update(fields)
    return {"targets": {"b": spec}}


@pytest.mark.parametrize("content, message", [
    (json.dumps(_board(power_w=float("nan"))), "target 'b': power_w: must be a positive number"),
    (json.dumps(_board(power_w=-3)), "target 'b': power_w: must be a positive number"),
    (json.dumps(_board(power_w=0)), "target 'b': power_w: must be a positive number"),
    (json.dumps(_board(power_w="3 W")), "target 'b': power_w: must be a positive number"),
    (json.dumps(_board()).replace('"channel_step": 8', '"channel_step": 1e999'), "channel_step: must be a positive integer"),
    (json.dumps(_board(channel_step=2.5)), "channel_step: must be a positive integer"),
    (json.dumps(_board(channel_step=0)), "channel_step: must be a positive integer"),
    (json.dumps(_board(channel_step=-8)), "channel_step: must be a positive integer"),
    (json.dumps(_board(channel_step=True)), "channel_step: must be a positive integer"),
    (json.dumps(_board(chanel_step=8)), "unknown key 'chanel_step'"),
    (json.dumps(_board(cc=5)), "cc: must be a string"),
    (json.dumps(_board(host="llvm")), "host: must be an object"),
    (json.dumps({"targets": _board()["targets"], "target": {}}), "unknown top-level key 'target'"),
    (b'{"targets": {"b": {"description": "caf\xe9", "tvm": {"kind": "llvm"}}}}', "not UTF-8 text"),
    ("[1, 2]", "expected an object"),
    ("", "not valid JSON"),
])
def test_targets_file_field_errors_name_file_and_field(tmp_path, capsys, content, message):
    p = tmp_path / "bad.json"
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert cli.main(["targets", "--targets-file", str(p)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(p) in err, err
    assert err.startswith("graphprune: error: ") and err.count("\n") == 1


@pytest.mark.parametrize("tvm_dict, field", [
    ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a7222"}, "tvm.mcpu 'cortex-a7222'"),
    ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswel"}, "tvm.mcpu 'haswel'"),
    ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "cortex-a72"}, "tvm.mcpu 'cortex-a72'"),
])
def test_mistyped_mcpu_is_refused_not_compiled_generic(tmp_path, capsys, tvm_dict, field):
    """TVM only warns about an mcpu LLVM does not know and compiles generic code, which bench
    would then report as the target's latency."""
    import onnx
    model = tmp_path / "m.onnx"
    onnx.save(tiny_cnn(), model)
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"targets": {"typo": {"tvm": tvm_dict, "cc": "aarch64-linux-gnu-gcc"}}}))
    for argv in (["compile", str(model), "--target", "typo", "--targets-file", str(p), "-o", str(tmp_path / "x.so")],
                 ["bench", str(model), "--target", "typo", "--targets-file", str(p), "--backend", "tvm"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert field in err and "is not a CPU LLVM" in err and str(p) in err and err.count("\n") == 1, err
    assert not (tmp_path / "x.so").exists()
