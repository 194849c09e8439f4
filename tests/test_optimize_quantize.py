"""`optimize --quantize`: the joint space decodes to precision maps, candidates are QDQ models that
onnxruntime runs close to fp32, size is bytes at precision, bad input fails before OUTDIR exists."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import graphprune as gp  # noqa: E402
from graphprune.cli import main  # noqa: E402
from graphprune.cost import model_size, projected_size  # noqa: E402
from graphprune.errors import GraphpruneError  # noqa: E402
from graphprune.quant import PRECISION_KEY, graph_precision, precision_of  # noqa: E402
from graphprune.quant.check import compare  # noqa: E402
from graphprune.search import objectives as obj  # noqa: E402
from graphprune.search import precision as prec  # noqa: E402
from graphprune.search.optimize import OptimizeOptions, run_optimize  # noqa: E402
from graphprune.search.space import build_space  # noqa: E402
from test_search_common import self_labelled_data, tiny_resnet, write_case  # noqa: E402

LAYERS = ["conv1", "conv2", "conv3", "conv4", "fc"]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tiny():
    x, y = self_labelled_data(tiny_resnet(0), 128)   # (it leaves extra outputs on the model it labels with)
    return gp.load(tiny_resnet(0)), x, y


def _space(model, mode):
    return prec.joint_space(build_space(gp.analyse(model), 4, 0.25), model, mode)


def test_mixed_parametrization_decodes_to_the_precision_map(tiny):
    model = tiny[0]
    space = _space(model, "mixed")
    groups = [a for a in space.axes if a.gid >= 0]
    assert [a.gid for a in space.axes if a.gid < 0] == [-1, -2, -3, -4, -5]
    assert space.layers == {-(i + 1): [n] for i, n in enumerate(LAYERS)}
    # below 0.5 on a precision coordinate is int8, from 0.5 fp32; group coordinates as before
    x = np.concatenate([np.full(len(groups), 0.99), [0.1, 0.9, 0.49, 0.5, 0.0]])
    cfg = space.decode(x)
    assert {g.gid: cfg[g.gid] for g in groups} == {g.gid: g.units for g in groups}
    assert prec.precision_map(cfg, space.layers) == {"conv1": "int8", "conv2": "fp32", "conv3": "int8",
                                                     "conv4": "fp32", "fc": "int8"}
    assert space.from_key(space.key(cfg)) == cfg and space.decode(space.encode(cfg)) == cfg
    # the original is every layer fp32; anything below full width on a precision axis snaps to int8
    assert set(prec.precision_map(space.full(), space.layers).values()) == {"fp32"}
    assert space.snap(-2, 0.75) == prec.INT8 and space.snap(-2, 1.0) == prec.FP32
    # a layer failing alone may be bounded to fp32 in mixed mode
    assert space.restrict({-3: 1}).axis(-3).choices == [1]
    assert space.to_json()["quantize"]["mode"] == "mixed"


def test_int8_mode_has_one_axis_that_only_quantizes(tiny):
    space = _space(tiny[0], "int8")
    (p,) = [a for a in space.axes if a.gid < 0]
    assert (p.gid, p.choices, space.layers) == (-1, [prec.INT8], {-1: LAYERS})
    assert set(prec.precision_map(space.decode(np.full(space.dims, 0.99)), space.layers).values()) == {"int8"}
    assert space.restrict({-1: 1}).axis(-1).choices == [prec.INT8]   # never bounded back to fp32
    assert set(prec.precision_map(space.full(), space.layers).values()) == {"fp32"}   # the original


def test_mixed_candidate_is_qdq_and_close_to_fp32_in_onnxruntime(tiny):
    model, x, y = tiny
    space = _space(model, "mixed")
    obj.init_worker(model.SerializeToString(), None, x, y)
    prec.configure(space.layers, x[:64], None)
    try:
        groups = [a.gid for a in space.axes if a.gid >= 0]
        cfg = {**{g: space.axis(g).choices[-2] for g in groups[:1]}, **{g: space.axis(g).units for g in groups[1:]},
               -1: prec.FP32, -2: prec.INT8, -3: prec.INT8, -4: prec.FP32, -5: prec.INT8}
        rec = prec.evaluate_job(cfg)
        q = onnx.load_from_string(rec["model"])
        fp32 = obj.prune_only(prec.split(cfg)[0])
    finally:
        prec.configure(None)
    want = {"conv1": "fp32", "conv2": "int8", "conv3": "int8", "conv4": "fp32", "fc": "int8"}
    assert graph_precision(q) == want == rec["precision"] and precision_of(q) == want
    assert rec["int8_layers"] == 3 and rec["energy_label"] == "estimated"
    onnx.checker.check_model(q)
    assert sum(n.op_type == "DequantizeLinear" for n in q.graph.node) >= 6
    # pruning kept: the candidate's first conv has the pruned width
    conv1 = next(n for n in q.graph.node if n.name == "conv1")
    assert next(t for t in q.graph.initializer if t.name == conv1.input[1]).dims[0] == cfg[groups[0]] < 16
    check = compare(fp32, q, {"x": x}, tolerance=0.1)
    assert check.passed, check.summary()
    assert check.outputs[0].top1_agreement >= 0.9
    # size objective: the deployed model's bytes at precision, about what the projection says
    assert rec["size_bytes"] == model_size(q).bytes < model_size(fp32).bytes
    int8 = {k: v for k, v in want.items() if v == "int8"}
    assert abs(rec["size_bytes"] - projected_size(fp32, int8)) <= 100
    assert rec["param_bytes"] == gp.count(fp32).param_bytes   # params: the fp32 count, as before


def test_size_objective_is_deployed_bytes():
    assert obj.parse_objectives("latency,size") == ["latency_ms", "size_bytes"]
    assert obj.parse_objectives("latency,params") == ["latency_ms", "param_bytes"]


def _opts(case, out, **kw):
    mp, dp = case
    base = dict(model=str(mp), data=str(dp), outdir=str(out), budget=3, repeats=5, channel_step=4, holdout=1,
                progress=False, max_error_increase=0.5, quantize="mixed", calibration_samples=32,
                sensitivity_ratios=(0.5,), uniform_ratios=(0.5,), objectives="latency,error,size,energy")
    base.update(kw)
    return OptimizeOptions(**base)


def test_optimize_mixed_writes_a_qdq_model_with_its_precision(tmp_path):
    case = write_case(tmp_path, n=128)
    out = tmp_path / "out"
    s = run_optimize(_opts(case, out), log=lambda m: None)
    assert s["objectives"] == ["latency_ms", "error", "size_bytes", "energy_uj"]
    best = onnx.load(str(out / "best.onnx"))
    meta = precision_of(best)
    assert meta == graph_precision(best) == s["quantize"]["delivered_precision"]
    assert s["chosen"]["size_bytes"] == model_size(best).bytes
    pj = json.loads((out / "pareto.json").read_text())
    assert pj["quantize"]["energy_label"] == "estimated" and "ESTIMATED" in pj["energy_note"]
    assert all(r["energy_label"] == "estimated" and r["energy_mj"] is None for r in pj["front"])
    report = (out / "report.md").read_text()
    assert "## Quantization (joint search)" in report and "(estimated)" in report
    # every quantizable layer was quantized alone in the sensitivity sweep
    assert {r["group"] for r in s["_measured"] if r.get("phase") == "sensitivity" and r["group"] < 0} == \
        {-1, -2, -3, -4, -5}


@pytest.mark.parametrize("kw, msg", [
    ({"quantize": "int4"}, "unknown --quantize 'int4'"),
    ({"backend": "tvm"}, "TVM 0.27 Relax computes QDQ graphs in float32"),
    ({"calibration_samples": 0}, "--calibration-samples must be an integer >= 1"),
    ({"calibration": "kl"}, "--calibration: unknown calibration method 'kl'"),
    ({"calibration": "percentile=101"}, "--calibration: the calibration percentile must be a number in (0, 100]"),
    ({"quantize": "off", "calibration": "percentile"}, "--calibration needs --quantize int8 or mixed"),
    ({"quantize": "fp16", "calibration": "percentile"}, "--calibration needs --quantize int8 or mixed"),
])
def test_bad_options_fail_before_outdir(tmp_path, kw, msg):
    case = write_case(tmp_path, n=32)
    with pytest.raises(GraphpruneError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        run_optimize(_opts(case, tmp_path / "out", **kw), log=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_target_without_int8_and_unusable_calibration_data(tmp_path):
    case = write_case(tmp_path, n=32)
    tf = tmp_path / "t.json"
    tf.write_text(json.dumps({"targets": {"fp32only": {"tvm": {"kind": "llvm"}, "precisions": ["fp32"]}}}))
    with pytest.raises(GraphpruneError, match="target 'fp32only' does not declare int8 support"):
        run_optimize(_opts(case, tmp_path / "o1", target="fp32only", targets_file=str(tf), stand_in="x86"),
                     log=lambda m: None)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"targets": {"b": {"tvm": {"kind": "llvm"}, "precisions": ["int3"]}}}))
    with pytest.raises(GraphpruneError, match="precisions: must be a non-empty list"):
        run_optimize(_opts(case, tmp_path / "o2", targets_file=str(bad)), log=lambda m: None)
    nan = tmp_path / "nan.npz"
    np.savez(nan, x=np.full((16, 1, 12, 12), np.nan, np.float32))
    with pytest.raises(GraphpruneError, match="nan.npz: x contains NaN"):
        run_optimize(_opts(case, tmp_path / "o3", train_data=str(nan)), log=lambda m: None)
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))


def test_already_quantized_model_is_refused(tmp_path):
    from graphprune.passes import QuantizeInt8Pass
    mp, dp = write_case(tmp_path, n=32)
    q = QuantizeInt8Pass(np.load(dp)["x"]).run(onnx.load(str(mp)))
    qp = tmp_path / "q.onnx"
    onnx.save(q, str(qp))
    with pytest.raises(GraphpruneError, match="already quantized"):
        run_optimize(_opts((qp, dp), tmp_path / "out"), log=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_cli_unknown_precision_is_one_line(tmp_path, capsys):
    mp, dp = write_case(tmp_path, n=32)
    rc = main(["optimize", str(mp), "--data", str(dp), "-o", str(tmp_path / "out"), "--quantize", "fp8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["graphprune: error: unknown --quantize 'fp8'; choose from off, int8, mixed, fp16"]
    assert not (tmp_path / "out").exists()
    assert PRECISION_KEY == "graphprune.precision"


@pytest.mark.slow   # torch fine-tuning: 20 s to minutes on a shared 2-core host
def test_recovery_fine_tunes_fp32_then_quantizes(tmp_path):
    case = write_case(tmp_path, n=128)
    out = tmp_path / "out"
    s = run_optimize(_opts(case, out, quantize="int8", epochs=0.5, finetune_steps=1, max_error_increase=0.9,
                           objectives="latency,error", budget=1, holdout=0, calibration_samples=16,
                           group_bounds="0:0.25:0.5"),   # every candidate prunes
                     log=lambda m: None)
    best = onnx.load(str(out / "best.onnx"))
    assert set(graph_precision(best).values()) == {"int8"} == set(precision_of(best).values())
    r = s["recovery"]   # the chosen candidate prunes something: fine-tuned in fp32, then quantized
    assert s["chosen"]["config"]["0"] <= 8 and s["chosen"]["int8_layers"] == 5
    assert {"fp32_accuracy_before", "fp32_accuracy_after"} <= set(r) and "then quantized" in r["text"]
    assert r["accuracy_before"] == pytest.approx(1 - s["chosen"]["error"])
    assert s["delivered"]["accuracy"] == pytest.approx(r["accuracy_after"])


def test_search_starts_from_the_all_int8_configurations(tiny):
    from types import SimpleNamespace

    from graphprune.search import joint
    from graphprune.search.optimizer import make_optimizer
    space = _space(tiny[0], "mixed").restrict({-1: 1})   # conv1 bounded to fp32 by its sensitivity
    uniform = {a.gid: (a.choices[0] if a.gid >= 0 else prec.INT8) for a in space.axes}
    st = SimpleNamespace(joint={"mode": "mixed"}, space=space,
                         u_recs=[{"config": {str(k): v for k, v in uniform.items()}}],
                         search=SimpleNamespace(opt=make_optimizer("DE", space.dims, 10, 1, 0)))
    joint.suggest(st)
    first, second = (space.decode(st.search.opt.ask().value) for _ in range(2))
    assert first == {**uniform, -1: prec.FP32}
    assert second == {**space.full(), -2: 0, -3: 0, -4: 0, -5: 0}   # quantize only; conv1 stays fp32


def test_opset_below_13_is_converted_before_per_channel_quantization(tiny):
    from graphprune.passes import QuantizeInt8Pass
    from graphprune.runtime import run
    old = tiny_resnet(0)
    old.opset_import[0].version = 11   # every op of the tiny model means the same at 11 (u2netp is opset 11)
    q = QuantizeInt8Pass(tiny[1][:32]).run(old)
    assert old.opset_import[0].version == 11   # the input is not modified
    assert q.opset_import[0].version == 13 and set(graph_precision(q).values()) == {"int8"}
    dq_axis = [a.i for n in q.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute if a.name == "axis"]
    assert dq_axis   # per-channel scales, which need opset 13
    assert run(q, {"x": tiny[1][:4]})[0].shape == (4, 4)


def test_bench_joint_sorts_candidates_into_the_three_fronts():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import bench_joint as bj
    space = {"groups": [{"id": 0, "units": 8}, {"id": -1, "units": 1}]}
    def rec(key, cfg, lat, size, err, int8):
        return {"key": key, "config": cfg, "latency_ms": lat, "size_bytes": size, "error": err, "int8_layers": int8}
    searches = {"prune": {"space": {"groups": space["groups"][:1]},
                          "_measured": [rec("8", {"0": 8}, 1.0, 400, 0.1, 0), rec("4", {"0": 4}, 0.6, 200, 0.2, 0)]},
                "joint_mixed": {"space": space, "_measured": [
                    rec("8-1", {"0": 8, "-1": 1}, 1.0, 400, 0.1, 0),      # the original: no family
                    rec("8-0", {"0": 8, "-1": 0}, 0.5, 100, 0.1, 1),      # quantize only
                    rec("4-0", {"0": 4, "-1": 0}, 0.3, 50, 0.3, 1)]}}     # joint
    fr = bj.front_points(searches)
    assert fr == {"prune only": [(1.0, 400, 90.0), (0.6, 200, 80.0)], "quantize only": [(0.5, 100, 90.0)],
                  "joint": [(0.3, 50, 70.0)]}
    pts = [(1.0, 4, 90.0), (0.6, 2, 80.0), (0.7, 3, 70.0), (0.5, 1, 80.0)]
    assert bj._front(pts, 0) == [(0.5, 1, 80.0), (1.0, 4, 90.0)]


def _measured(out: Path) -> dict:
    lines = (out / "journal.jsonl").read_text().splitlines()[1:]
    return {r["key"]: r for r in map(json.loads, lines) if r.get("type") == "measured"}


def test_workers_pool_quantizes_like_the_serial_run(tmp_path):
    """--workers 2 with --quantize int8: each worker builds the deployed candidates (its initializer
    configures the joint search, --quantize-exclude included), so the journal and the front equal the
    serial run's for the same seed (objectives without latency: nothing timed, nothing noisy). Budget 2:
    one search candidate; with more, a pool of 2 asks the optimizer two at a time, which changes
    its later proposals (as without --quantize; tests/test_optimize_cli.py)."""
    case = write_case(tmp_path, n=32)
    runs = {}
    for w in (1, 2):
        out = tmp_path / f"w{w}"
        s = run_optimize(_opts(case, out, quantize="int8", workers=w, budget=2, objectives="error,size",
                               calibration_samples=16, quantize_exclude=("fc",)), log=lambda m: None)
        runs[w] = (s, _measured(out))
    (s1, m1), (s2, m2) = runs[1], runs[2]
    assert s2["workers"] == 2 and len(m1) == 8 and {r["phase"] for r in m1.values()} == \
        {"baseline", "sensitivity", "holdout", "uniform", "search"}
    keys = ("phase", "error", "size_bytes", "energy_uj", "int8_layers", "macs", "precision")
    assert {k: [r[f] for f in keys] for k, r in m2.items()} == {k: [r[f] for f in keys] for k, r in m1.items()}
    assert [(r["key"], r["error"], r["size_bytes"]) for r in s2["front"]] == \
        [(r["key"], r["error"], r["size_bytes"]) for r in s1["front"]]
    assert s2["chosen"]["key"] == s1["chosen"]["key"]
    # the excluded layer stays fp32 in every quantized candidate (precision axis -1 at 0); the other four
    # are int8 (the sensitivity sweep prunes each group alone at fp32: key ending in -1)
    assert {k: r["int8_layers"] for k, r in m1.items()} == {k: 4 if k.endswith("-0") else 0 for k in m1}
    assert all(r["precision"]["fc"] == "fp32" for r in m1.values())
    assert graph_precision(onnx.load(str(tmp_path / "w2" / "best.onnx")))["fc"] == "fp32"


def test_quantize_exclude_gets_no_axis_and_bad_names_fail_before_outdir(tiny, tmp_path):
    space = prec.joint_space(build_space(gp.analyse(tiny[0]), 4, 0.25), tiny[0], "mixed", exclude=["conv1", "fc"])
    assert space.layers == {-1: ["conv2"], -2: ["conv3"], -3: ["conv4"]}
    case = write_case(tmp_path, n=32)
    with pytest.raises(GraphpruneError, match=r"no node named 'fcc' in the model \(did you mean 'fc'"):
        run_optimize(_opts(case, tmp_path / "o1", quantize_exclude=("fcc",)), log=lambda m: None)
    with pytest.raises(GraphpruneError, match="--quantize-exclude needs --quantize int8 or mixed"):
        run_optimize(_opts(case, tmp_path / "o2", quantize="off", quantize_exclude=("fc",)), log=lambda m: None)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_fp16_candidates_run_in_onnxruntime_within_tolerance(tiny):
    """--quantize fp16: a candidate is the pruned model through Float16Pass (fp32 inputs/outputs);
    onnxruntime CPU runs it within 1e-2 of the fp32 output range (fp16 keeps ~3 decimal digits)."""
    from graphprune.runtime import run
    model, x, _ = tiny
    space = _space(model, "fp16")
    assert [a.choices for a in space.axes if a.gid < 0] == [[prec.INT8]] and space.layers == {-1: LAYERS}
    try:
        prec.configure(space.layers, None, None, mode="fp16")
        cfg = {**space.full(), -1: 0}
        pmap = prec.precision_map(cfg, space.layers)
        assert pmap == {n: "fp16" for n in LAYERS}
        h = prec.quantize(model, pmap)
    finally:
        prec.configure(None)
    assert graph_precision(h) == pmap == precision_of(h)
    assert model_size(h).bytes == projected_size(model, pmap)
    onnx.checker.check_model(h)
    ref, got = run(model, {"x": x[:64]})[0], run(h, {"x": x[:64]})[0]
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-2 * np.abs(ref).max()
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.98


def test_optimize_fp16_needs_a_target_with_fp16(tmp_path):
    case = write_case(tmp_path, n=32)
    with pytest.raises(GraphpruneError, match=r"--quantize fp16: target 'x86' does not declare fp16 support"):
        run_optimize(_opts(case, tmp_path / "o1", quantize="fp16"), log=lambda m: None)
    assert not (tmp_path / "o1").exists()
    tf = tmp_path / "t.json"   # this host declared with fp16 kernels (a targets file overrides the built-in)
    tf.write_text(json.dumps({"targets": {"x86": {"tvm": {"kind": "llvm"}, "precisions": ["fp32", "fp16"]}}}))
    out = tmp_path / "o2"
    s = run_optimize(_opts(case, out, quantize="fp16", targets_file=str(tf), budget=2,
                           objectives="error,size"), log=lambda m: None)
    best = onnx.load(str(out / "best.onnx"))
    assert set(graph_precision(best).values()) == {"fp16"} and s["chosen"]["fp16_layers"] == 5
    assert s["chosen"]["size_bytes"] == model_size(best).bytes
    assert "fp16" in (out / "report.md").read_text()


def test_cli_quantize_exclude_is_split_and_checked(tmp_path, capsys):
    mp, dp = write_case(tmp_path, n=32)
    rc = main(["optimize", str(mp), "--data", str(dp), "-o", str(tmp_path / "out"), "--quantize", "int8",
               "--quantize-exclude", "conv1,fc", "--quantize-exclude", "fcc"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["graphprune: error: no node named 'fcc' in the model (did you mean 'fc'?)"]
    assert not (tmp_path / "out").exists()


def test_calibration_method_reaches_every_candidate(tmp_path):
    """--calibration percentile=99: the serial run and a --workers 2 pool quantize with it (same
    journal), and the delivered model and the report say which method calibrated it."""
    from graphprune.metadata import get_json
    from graphprune.quant.precision import PRECISION_KEY
    case = write_case(tmp_path, n=32)
    runs = {}
    for w in (1, 2):
        out = tmp_path / f"w{w}"
        s = run_optimize(_opts(case, out, quantize="int8", workers=w, budget=2, objectives="error,size",
                               calibration_samples=16, calibration="percentile=99"), log=lambda m: None)
        runs[w] = (s, _measured(out))
    keys = ("error", "size_bytes", "int8_layers")
    assert {k: [r[f] for f in keys] for k, r in runs[2][1].items()} == \
        {k: [r[f] for f in keys] for k, r in runs[1][1].items()}
    s = runs[2][0]
    assert "Percentile 99," in s["quantize"]["calibration"]
    best = onnx.load(str(tmp_path / "w2" / "best.onnx"))
    assert graph_precision(best) and get_json(best, PRECISION_KEY)["calibration"] == "Percentile 99"
