"""The NHWC + weight-prepack tuning pipeline, the trial allocation and the tuning time budget.

Fast checks of the pieces (budget parsing, allocation, database and cache keys, the tuning
module's tasks, an ARM cross-compile through the new pipeline); the slow ones tune a tiny net for
real (a handful of trials, random search: see test_rpc_tuning.py for why), prune it, replay the
base onto the variant and compare with onnxruntime.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphprune.cli as cli
from graphprune.errors import GraphpruneError
from graphprune.targets import get_target, tune
from graphprune.targets.tuning import budget, pipeline, records

from _latency_models import tiny_cnn
from _latency_models import isolated_latency_env  # noqa: F401  (autouse fixture)


@pytest.mark.parametrize("text,secs", [("90s", 90.0), ("20m", 1200.0), ("1.5h", 5400.0), ("45", 45.0),
                                       (" 2 min ", 120.0), (7, 7.0), (0.5, 0.5), (None, None)])
def test_tune_time_parses_durations(text, secs):
    assert budget.parse_tune_time(text) == secs


@pytest.mark.parametrize("bad", ["-1", "abc", "0", "0s", "1e400", "20 parsecs", "", -3, 0, float("nan"), True])
def test_tune_time_refuses_nonsense(bad):
    with pytest.raises(GraphpruneError, match="must be a positive duration"):
        budget.parse_tune_time(bad)


@pytest.mark.parametrize("cmd", ["bench", "compile"])
@pytest.mark.parametrize("bad", ["-1", "abc", "0"])
def test_cli_tune_time_errors_are_one_line(cmd, bad, tmp_path, capsys):
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_cnn(), path)
    extra = ["-o", str(tmp_path / "x.so")] if cmd == "compile" else []
    assert cli.main([cmd, str(path), f"--tune-time={bad}", "--no-progress"] + extra) == 2
    err = capsys.readouterr().err
    assert err == f"graphprune: error: --tune-time must be a positive duration such as 90s, 20m or 1h (got {bad!r})\n"
    assert not (tmp_path / "x.so").exists()


def test_allocation_concentrates_on_heavy_tasks():
    loads = [40.0, 40.0, 10.0] + [0.01] * 7            # two heavy convs, one medium, seven trivial tasks
    per_iter, caps = budget.allocate(512, loads)
    assert per_iter == 17 and len(caps) == 10             # 512 // (3 * 10): the warm-up takes a third
    assert caps[:3] == [455, 455, 114]                    # twice each task's FLOP share (1024 * 40 / 90.07)
    assert caps[3:] == [per_iter] * 7                     # trivial tasks: their first round only
    # small budgets still give every task one round within the budget
    per_iter, caps = budget.allocate(8, [5.0, 1.0, 1.0])
    assert per_iter == 2 and per_iter * 3 <= 8 and min(caps) >= per_iter
    assert budget.allocate(4, [1.0, 1.0, 1.0])[0] == 1
    # a time-only budget: rounds of MAX_PER_ROUND, caps never the limit
    per_iter, caps = budget.allocate(budget.TIME_ONLY_TRIALS, loads)
    assert per_iter == budget.MAX_PER_ROUND and min(caps) >= per_iter


@pytest.mark.parametrize("old,extent,new", [
    ([2, 1, 2, 16], 56, [7, 1, 1, 8]),      # was [2, 1, 2, 14]: a 14-lane vector
    ([1, 2, 2, 16], 120, [15, 1, 1, 8]),    # was [2, 2, 2, 15]
    ([4, 1, 1, 16], 24, [3, 1, 1, 8]),      # was [2, 1, 1, 12]
    ([1, 4, 2, 16], 248, [31, 1, 1, 8]),
    ([1, 1, 2, 16], 48, [3, 1, 1, 16]),
    ([2, 2, 4, 16], 240, [15, 1, 1, 16]),
    ([1, 2, 2, 16], 64, [1, 2, 2, 16]),     # the base's own extent: its own decision
    ([3, 5, 7], 105, [3, 5, 7]),            # factors that are not powers of two: any divisor
    ([1, 6, 4], 36, [3, 3, 4]),
])
def test_replay_refit_keeps_power_of_two_factors(old, extent, new):
    from graphprune.targets.tuning.replay import refit
    got = refit(old, extent)
    assert got == new and int(np.prod(got)) == extent


def test_database_folder_and_cache_key_name_the_pipeline(monkeypatch):
    x86 = get_target("x86")
    now = records.database_dir(x86)
    assert now.name.startswith("x86-") and now.parent.name == "tuning"
    import hashlib
    old = hashlib.sha256(json.dumps(x86.tvm_dict(), sort_keys=True).encode()).hexdigest()[:10]
    assert now.name != f"x86-{old}"                       # the NCHW pipeline's records are not read
    monkeypatch.setenv(pipeline.ENV, pipeline.LEGACY)   # the old pipeline, for comparisons only
    assert records.database_dir(x86) != now
    monkeypatch.setenv(pipeline.ENV, "nchw16c")
    with pytest.raises(GraphpruneError, match=r"GRAPHPRUNE_TVM_PIPELINE must be nhwc-ohwi-prepack-1 or nchw-legacy"):
        records.database_dir(x86)
    monkeypatch.delenv(pipeline.ENV)
    from graphprune.targets import _tvm_key
    from graphprune.targets.onnx_converters import FRONTEND
    assert _tvm_key("tvm", 8, None) == {"pipeline": pipeline.PIPELINE, "tune_time_s": None, "frontend": FRONTEND}
    assert _tvm_key("tvm", 0, 60.0)["tune_time_s"] == 60.0
    assert _tvm_key("tvm", 0, None) == {"frontend": FRONTEND} and _tvm_key("ort", 8, None) == {}
    # records made with TVM's own Clip converter (another frontend) live in another folder
    monkeypatch.setenv("GRAPHPRUNE_TVM_FRONTEND", "tvm")   # TVM's own converters: the folders from before them
    before = hashlib.sha256(json.dumps({**x86.tvm_dict(), "graphprune_pipeline": pipeline.PIPELINE},
                                       sort_keys=True).encode()).hexdigest()[:10]
    assert records.database_dir(x86).name == f"x86-{before}" != now.name
    assert _tvm_key("tvm", 0, None) == {} and "frontend" not in _tvm_key("tvm", 8, None)
    monkeypatch.setenv("GRAPHPRUNE_TVM_FRONTEND", "tvm2")
    with pytest.raises(GraphpruneError, match=r"GRAPHPRUNE_TVM_FRONTEND must be clip-maxmin-2 or tvm"):
        records.database_dir(x86)


def test_tuning_module_has_nhwc_convs_with_layout_free_weights():
    from graphprune.targets.compile import import_onnx
    x86 = get_target("x86")
    fused = pipeline.tuning_module(import_onnx(tiny_cnn()), x86.tvm_target())
    tasks = tune._tasks(fused, x86.tvm_target())
    assert sorted(t.task_name for t in tasks) == ["fused_conv2d1_add_relu1", "fused_conv2d_add_relu1",
                                                  "fused_matmul_add11"]
    for t in tasks:
        text = t.dispatched[0].script(show_meta=False)
        assert '"layout_free_buffers": [1, 2]' in text, t.task_name
        if "conv" in t.task_name:
            assert 'T.sblock("conv2d_nhwc")' in text
    loads = budget.task_loads(tasks)
    assert loads[[t.task_name for t in tasks].index("fused_matmul_add11")] < min(
        ld for t, ld in zip(tasks, loads) if "conv" in t.task_name)


def test_legacy_pipeline_keeps_nchw_for_comparisons(monkeypatch):
    from graphprune.targets.compile import import_onnx
    monkeypatch.setenv(pipeline.ENV, pipeline.LEGACY)
    x86 = get_target("x86")
    tasks = tune._tasks(pipeline.tuning_module(import_onnx(tiny_cnn()), x86.tvm_target()), x86.tvm_target())
    texts = [t.dispatched[0].script(show_meta=False) for t in tasks if "conv" in t.task_name]
    assert len(texts) == 2 and all('T.sblock("conv2d_nchw")' in t and "layout_free_buffers" not in t for t in texts)
    assert budget.allocate_legacy(512, 16) == (64, [32] * 16)   # one round per task: the old behaviour


def test_arm_cross_compile_goes_through_the_prepack_pipeline(tmp_path):
    """arm-a72 through the new pipeline (an empty database: every task keeps its default
    schedule), linked by the cross compiler into an aarch64 shared library."""
    import shutil
    from tvm.s_tir import meta_schedule as ms
    from graphprune.targets.compile import compile_relax, export_library, import_onnx
    arm = get_target("arm-a72")
    if shutil.which(arm.cc) is None:
        pytest.skip(f"{arm.cc} not installed")
    c = compile_relax(import_onnx(tiny_cnn()), arm, database=ms.database.MemoryDatabase(), tuning="empty")
    so = export_library(c, tmp_path / "tiny_arm.so")
    head = so.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183   # EM_AARCH64


@pytest.fixture
def quick_search(monkeypatch):
    monkeypatch.setattr(tune, "SEARCH", ("replay-trace", "random"))


def _ort(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


@pytest.mark.slow
def test_time_budget_tunes_then_pruned_variant_replays(quick_search, capsys):
    """A 1 s budget with 64 trials: one round (of the heaviest task, a conv), then tuning stops; the
    other conv replays its trace, the matmul (no same-kind donor) stays untuned; the base and a
    pruned variant (replayed, not tuned) compute what onnxruntime computes."""
    from graphprune.targets import compile_model
    from graphprune.targets.inputs import random_inputs
    from graphprune.targets.measure_local import run_tvm_local
    base, variant = tiny_cnn(channels=16), tiny_cnn(channels=12)
    c = compile_model(base, "x86", tune_trials=64, tune_time="1s", progress=True)
    per_iter = budget.allocate(64, [1.0] * 3)[0]
    assert per_iter == 16
    assert c.tuning.startswith(f"tuned {per_iter} trials over 3 conv/matmul tasks"), c.tuning
    assert "stopped by the 1 s time limit" in c.tuning
    assert c.tuning.endswith("1 tasks with exact tuned records, 1 replayed from base traces, 1 left untuned"), c.tuning
    assert f"tuning: {per_iter}/64 trials" in capsys.readouterr().err
    run = json.loads((records.database_dir(get_target("x86")) / "base" / "tuning_runs.jsonl").read_text())
    assert run["pipeline"] == pipeline.PIPELINE and run["time_limit_s"] == 1.0 and run["trials"] == per_iter
    for model, compiled in ((base, c), (variant, compile_model(variant, "x86", tune_trials=64))):
        feeds = random_inputs(model, seed=4)
        np.testing.assert_allclose(run_tvm_local(compiled, feeds)[0], _ort(model, feeds), rtol=1e-4, atol=1e-5)
    v = compile_model(variant, "x86", tune_trials=64)
    assert v.tuning.startswith("0 tasks with exact tuned records, 2 replayed from base traces, 1 left untuned"), v.tuning
