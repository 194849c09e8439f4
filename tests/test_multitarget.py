"""Several targets in one optimize run: x86 timed by onnxruntime and x86 timed by TVM, one
search each, quality computed once and shared, one front and one chosen model per target, and
a report comparing the channels each keeps."""
from __future__ import annotations

import json
import os
from pathlib import Path

import onnx
import pytest

import graphprune.cli as cli
from graphprune.errors import GraphpruneError
from graphprune.search.multitarget import split_targets
from graphprune.search.optimize import OptimizeOptions

from _latency_models import isolated_latency_env  # noqa: F401  (autouse fixture)
from test_search_common import write_case


def test_target_lists_align():
    o = OptimizeOptions(model="m", data="d", outdir="o", target="x86,arm-a72,x86", backend="ort,tvm,tvm",
                        rpc_tracker=",10.0.0.2:9190,", rpc_key="rasp4")
    runs = split_targets(o)
    assert [(r.name, r.target, r.backend, r.rpc_tracker, r.rpc_key) for r in runs] == [
        ("x86-ort", "x86", "ort", None, "rasp4"), ("arm-a72", "arm-a72", "tvm", "10.0.0.2:9190", "rasp4"),
        ("x86-tvm", "x86", "tvm", None, "rasp4")]
    for kw, msg in [({"backend": "ort,tvm"}, "--backend has 2 entries for 3 targets"),
                    ({"backend": "ort,onnx,tvm"}, "unknown backend 'onnx' for target 'arm-a72'"),
                    ({"target": "x86,x86,arm-a72", "backend": "ort,ort,tvm"}, "'x86' with backend 'ort' is given twice"),
                    ({"target": "x86,,arm-a72"}, "an empty target name")]:
        with pytest.raises(GraphpruneError, match=msg):
            split_targets(OptimizeOptions(**{**dict(model="m", data="d", outdir="o", target="x86,arm-a72,x86",
                                                    backend="ort"), **kw}))


def test_bad_target_list_is_one_line_before_anything(tmp_path, capsys, monkeypatch):
    """A target without a device among several: refused before any target is searched."""
    mp, dp = write_case(tmp_path, n=32)
    monkeypatch.setattr(cli, "COMMANDS", ["graphprune.cli.optimize_commands"])
    assert cli.main(["optimize", str(mp), "--data", str(dp), "-o", str(tmp_path / "out"), "--target", "x86,arm-a72",
                     "--backend", "ort,tvm", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "target 'arm-a72' has no reachable device" in err
    assert not (tmp_path / "out").exists()


def _run(tmp_path, capsys, monkeypatch, targets, backends, extra=()):
    mp, dp = write_case(tmp_path, n=48)
    out = tmp_path / "out"
    monkeypatch.setattr(cli, "COMMANDS", ["graphprune.cli.optimize_commands"])
    assert cli.main(["optimize", str(mp), "--data", str(dp), "-o", str(out), "--target", targets, "--backend",
                     backends, "--budget", "2", "--repeats", "3", "--channel-step", "8", "--holdout", "0",
                     "--sensitivity-ratios", "0.5", "--max-error-increase", "0.4", "--threads", "1",
                     "--no-progress", "--json", *extra]) == 0
    return out, json.loads(capsys.readouterr().out)


def _journal(path):
    return [json.loads(ln) for ln in path.read_text().splitlines()[1:]]


def _check(out, s, names, backends):
    """A front, a chosen model and a journal per target; the second target's search reused every
    quality result the first computed for the same configuration (bit for bit); the report compares."""
    assert list(s["targets"]) == names
    for name, backend in zip(names, backends):
        pj = json.loads((out / name / "pareto.json").read_text())
        assert pj["latency"]["backend"] == backend and pj["front"]
        assert {r["latency_backend"] for r in _journal(out / name / "journal.jsonl")} == {backend}
        assert onnx.load(out / name / "best.onnx").graph.node
        assert s["targets"][name]["front"] == [f["key"] for f in pj["front"]]
    first = {r["key"]: r for r in _journal(out / names[0] / "journal.jsonl")}
    second = _journal(out / names[1] / "journal.jsonl")
    shared = [r for r in second if r.get("quality_shared")]
    assert len(shared) == s["targets"][names[1]]["quality_shared"]
    assert {r["key"] for r in shared} == {r["key"] for r in second} & set(first)   # every overlap shared
    assert len(shared) >= 5   # the original, the sweep (3 groups), the uniform baselines
    for r in shared:
        f = first[r["key"]]
        assert (r["error"], r["macs"], r["param_bytes"]) == (f["error"], f["macs"], f["param_bytes"])
    store = [json.loads(ln) for ln in (out / "quality.jsonl").read_text().splitlines()]
    assert store[0]["type"] == "header" and len({r["key"] for r in store[1:]}) == len(store) - 1
    assert {r["key"] for r in store[1:]} == set(first) | {r["key"] for r in second}
    report = (out / "report.md").read_text()
    assert "## Units kept per channel group" in report and f"| {' | '.join(names)} | differs |" in report
    for g in s["groups"]:
        assert f"| {g} (of " in report


def test_two_targets_share_quality(tmp_path, capsys, monkeypatch):
    """x86 and arm-a72 (timed on its explicit x86 stand-in): two searches, quality shared."""
    out, s = _run(tmp_path, capsys, monkeypatch, "x86,arm-a72", "ort", ["--stand-in", "x86"])
    _check(out, s, ["x86", "arm-a72"], ["ort", "ort"])
    assert "STAND-IN" in s["targets"]["arm-a72"]["latency_label"]


@pytest.mark.slow
def test_ort_and_tvm_targets_in_one_run(tmp_path, capsys, monkeypatch):
    """x86 by onnxruntime and x86 by TVM (about 40 s: a TVM build per candidate)."""
    out, s = _run(tmp_path, capsys, monkeypatch, "x86,x86", "ort,tvm")
    _check(out, s, ["x86-ort", "x86-tvm"], ["ort", "tvm"])


QEMU_ROOT = Path(os.environ.get("GRAPHPRUNE_QEMU_ROOT", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                                / "graphprune/qemu-aarch64"))


@pytest.mark.slow
@pytest.mark.skipif(not (QEMU_ROOT / "site/onnxruntime").is_dir(),
                    reason="no emulated aarch64 root: run tools/qemu_arm_rpc.sh setup first (with onnxruntime)")
def test_x86_and_emulated_arm_a72_in_one_run(tmp_path, capsys, monkeypatch):
    """x86 on this host and arm-a72 on the emulated aarch64 board's own onnxruntime (a device-server
    under qemu-user, as tests/test_device_server_qemu.py starts it): one front per target."""
    from graphprune.targets.localrpc import LocalRPCCluster
    script = Path(__file__).resolve().parents[1] / "targets" / "device_server.py"
    with LocalRPCCluster(key="rasp4-qemu-mt", n_servers=0, start_timeout=300) as c:
        c.add_device_server(script=str(script), python=str(QEMU_ROOT / "bin/python"))
        c.wait_for(1)
        out, s = _run(tmp_path, capsys, monkeypatch, "x86,arm-a72", "ort",
                      ["--rpc-tracker", f",{c.address}", "--rpc-key", ",rasp4-qemu-mt", "--timeout", "300"])
    _check(out, s, ["x86", "arm-a72"], ["ort", "ort"])
    recs = _journal(out / "arm-a72" / "journal.jsonl")
    assert all(r["latency_device"].startswith("rpc:rasp4-qemu-mt@") for r in recs)


def test_report_names_the_units_each_target_keeps(tmp_path):
    """Where two targets' choices differ, the report lists which units one keeps and the other
    drops; the criterion ranks the same way for both, so the smaller choice is a subset."""
    from graphprune.search.multitarget import TargetRun, compare, kept_units, report_lines
    mp, _ = write_case(tmp_path, n=8)
    runs = [TargetRun("x86", "x86", "ort", None, None), TargetRun("arm-a72", "arm-a72", "ort", "h:1", "k")]

    def summary(cfg):
        return {"chosen": {"key": "-".join(map(str, cfg.values())), "config": {str(g): v for g, v in cfg.items()},
                           "latency_ms": 1.0, "error": 0.1}, "baseline": {"latency_ms": 2.0, "error": 0.0},
                "front": [], "latency_label": "l", "final": None, "_measured": [],
                "space": {"groups": [{"id": 0, "units": 16}, {"id": 1, "units": 32}, {"id": 2, "units": 24}]}}
    s = compare(runs, {"x86": summary({0: 16, 1: 8, 2: 24}), "arm-a72": summary({0: 16, 1: 16, 2: 8})}, {})
    s["kept_units"] = kept_units(OptimizeOptions(model=str(mp), data="d", outdir="o"), s)
    assert sorted(s["kept_units"]) == ["1", "2"]   # group 0 is the same on both
    k1 = s["kept_units"]["1"]
    assert len(k1["x86"]) == 8 and len(k1["arm-a72"]) == 16 and set(k1["x86"]) < set(k1["arm-a72"])
    text = "\n".join(report_lines(s))
    assert "| 1 (of 32) | 8 (25 %) | 16 (50 %) | yes |" in text and "| 0 (of 16) | 16 (100 %) | 16 (100 %) |  |" in text
    dropped = sorted(set(k1["arm-a72"]) - set(k1["x86"]))
    assert f"- group 1, x86 keeps 8; drops what another keeps: {', '.join(map(str, dropped))}" in text
    assert "- group 1, arm-a72 keeps 16; drops what another keeps: nothing" in text


def test_quality_store_reads_back_what_a_kill_left(tmp_path):
    """The shared store: results read back; a last line cut by a kill dropped (computed again), a
    complete last line without its newline kept; a store for other inputs refused in one line."""
    from graphprune.search.quality_store import QualityStore
    head = {"model_sha": "a", "data": "b", "criterion": "l1", "metric": "accuracy", "input_shapes": None,
            "bn_recalibrate": None}
    path = tmp_path / "q.jsonl"
    q = QualityStore(path, head)
    q.put("8-8", {"error": 0.25, "macs": 10, "params": 3, "param_bytes": 12, "model": b"not stored"})
    q.put("8-8", {"error": 0.5})   # first result wins: one line per configuration
    q.close()
    with open(path, "a") as f:
        f.write('{"key":"4-8","error":0.5,"macs":5,"params":2,"param_bytes":8}')   # no newline
    q = QualityStore(path, head)
    assert q.get("8-8") == {"error": 0.25, "macs": 10, "params": 3, "param_bytes": 12} and q.get("4-8")["macs"] == 5
    q.close()
    with open(path, "a") as f:
        f.write('{"key":"4-4","err')   # torn by a kill
    q = QualityStore(path, head)
    assert q.get("4-4") is None and q.hits == 0
    q.put("4-4", {"error": 0.75, "macs": 2, "params": 1, "param_bytes": 4})
    q.close()
    assert [json.loads(ln)["key"] for ln in path.read_text().splitlines()[1:]] == ["8-8", "4-8", "4-4"]
    with pytest.raises(GraphpruneError, match=r"written for other inputs \(data differ\)"):
        QualityStore(path, {**head, "data": "c"})
