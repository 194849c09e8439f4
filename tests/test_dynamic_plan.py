"""graphprune dynamic's choices before training: the branch point searched over the conv stages
(accuracy proxy + measured path latencies), the budget from a latency target (bisection over
measured probes, refused when unreachable), and their one-line errors."""
import numpy as np
import onnx
import pytest

import graphprune as gp
from graphprune import metadata
from graphprune.data import as_dataset
from graphprune.dynamic import probe
from graphprune.dynamic.branch_search import judge, pick, search_branch, stage_candidates, table
from graphprune.dynamic.build import DynamicOptions, build_dynamic
from graphprune.dynamic.export import with_threshold
from graphprune.dynamic.graph import split_model
from graphprune.errors import GraphpruneError
from graphprune.runtime import session
from test_dynamic import _FAST, _cnn, _data, _gp


def test_stage_candidates_are_the_ends_of_the_conv_stages():
    # p1: after conv 1 (its pooling); t2: after conv 2; r4: after the residual block (4 convs)
    assert stage_candidates(gp.load(_cnn())) == ["p1", "t2", "r4"]


def test_judge_counts_exits_topk_and_proxy_exactly():
    z = np.log(np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.2, 0.3, 0.5], [0.96, 0.01, 0.03]]))
    y = np.array([0, 1, 0, 1])
    orig = np.array([0, 1, 1, 1])
    r = judge(z, y, orig, k=2, threshold=0.8)
    # exits: rows 0 (right) and 3 (wrong; label 1 not in its top-2 either);
    # row 1: label in top-2, original right -> right;
    # row 2: label 0 not in top-2 -> wrong (and the original is wrong anyway)
    assert r == {"exit": 0.5, "exit_correct": 0.5, "branch_accuracy": 0.25, "topk_recall": 0.5,
                 "proxy_accuracy": 0.5}


def test_pick_rule():
    rows = [{"tensor": "a", "proxy_accuracy": 0.90, "avg_ms": 1.0, "gated_ms": 2.0},
            {"tensor": "b", "proxy_accuracy": 0.94, "avg_ms": 3.0, "gated_ms": 3.0},
            {"tensor": "c", "proxy_accuracy": 0.945, "avg_ms": 2.0, "gated_ms": 2.5},
            {"tensor": "d", "skipped": "no grid"}]
    assert pick(rows, 0.95, 0.01)[0]["tensor"] == "c"          # b and c within 1 pp: c is faster
    assert pick(rows, 0.95, 0.10)[0]["tensor"] == "a"          # all within 10 pp: a is fastest
    best, why = pick(rows, 0.99, 0.01)                         # none within: the most accurate
    assert best["tensor"] == "c" and "most accurate" in why
    with pytest.raises(GraphpruneError, match="no branch candidate could be measured"):
        pick([rows[-1]], 0.9, 0.01)


def test_search_picks_a_valid_candidate_and_reports_every_one():
    m = gp.load(_cnn())
    x, y = _data(m)
    o = DynamicOptions(k=2, threshold=0.5, latency_repeats=5, **_FAST)
    s = search_branch(m, as_dataset((x, y)), o)
    assert [r["tensor"] for r in s["rows"]] == ["p1", "t2", "r4"]
    assert s["branch"] in ("p1", "t2", "r4") and s["samples"] == {"fit": 72, "judged": 24}
    chosen = next(r for r in s["rows"] if r["tensor"] == s["branch"])
    assert chosen is pick(s["rows"], s["original_accuracy"], o.branch_max_drop)[0]
    for r in s["rows"]:
        assert 0 <= r["exit"] <= 1 and r["exit_ms"] > 0 and r["gated_ms"] > 0
        assert r["avg_ms"] == pytest.approx(r["exit"] * r["exit_ms"] + (1 - r["exit"]) * r["gated_ms"])
    assert split_model(m, s["branch"], 0.5).gates        # a tensor the build accepts
    text = table(s)
    assert text.count("\n") == len(s["rows"]) + 2 and f"* {s['branch']}" in text


def test_probe_has_the_delivered_models_shapes():
    """A probe runs both paths and gathers as many filters as the split says (its latency is the model's)."""
    m = gp.load(_cnn())
    s = split_model(m, "t2", 0.5)
    pm = probe.probe_model(m, s, 2)
    onnx.checker.check_model(pm, full_check=True)
    keeps = {t.name: int(onnx.numpy_helper.to_array(t)[0]) for t in pm.graph.initializer
             if t.name.endswith("/keep")}
    assert keeps == {"dyn/g0/keep": 4, "dyn/g1/keep": 3}
    x = np.zeros((1, 1, 8, 8), np.float32)
    for thr in (0.0, 2.0):
        assert session(with_threshold(pm, thr)).run(None, {"x": x})[0].shape == (1, 4)


def test_budget_bisection_on_a_known_latency_curve(monkeypatch):
    """With a latency that is exactly the total kept filters / 10 ms, the bisection finds the largest
    fraction that meets the target; a target above the whole model's gives 1.0."""
    m = gp.load(_cnn())
    monkeypatch.setattr(probe, "probe_paths_gated", lambda m_, s, *a: sum(g.keep for g in s.gates) / 10)
    r = probe.budget_for_latency(m, "t2", 2, None, target_ms=0.9)     # 14 filters in all (8 + 6)
    assert sum(g.keep for g in split_model(m, "t2", r["budget"]).gates) == 9 and r["probe_ms"] == 0.9
    assert sum(g.keep for g in split_model(m, "t2", min(1.0, r["budget"] + 1 / 32)).gates) > 9
    assert probe.budget_for_latency(m, "t2", 2, None, target_ms=1.4)["budget"] == 1.0
    with pytest.raises(GraphpruneError, match=r"latency target 0.150 ms is out of reach: .* takes 0.200 ms"):
        probe.budget_for_latency(m, "t2", 2, None, target_ms=0.15)


def test_unreachable_latency_target_is_refused_before_training():
    m = _cnn()
    x, y = _data(m, n=32)
    with pytest.raises(GraphpruneError, match="out of reach"):
        build_dynamic(m, (x, y), DynamicOptions(branch_at="t2", latency_budget_ms=1e-6, latency_repeats=3, **_FAST))


def test_latency_target_reported_against_the_measured_longest_path():
    m = _cnn()
    x, y = _data(m, n=32)
    r = build_dynamic(m, (x, y), DynamicOptions(branch_at="t2", k=2, latency_budget_ms=50.0, latency_repeats=3,
                                                **{**_FAST, "samples": 32, "epochs": 0}))
    lat = r.latency
    assert lat["budget"] == 1.0 and lat["target_ms"] == 50.0 and lat["met"] == (lat["measured_ms"] <= 50.0)
    assert metadata.get_json(r.model, "graphprune.dynamic")["latency"]["measured_ms"] == lat["measured_ms"]
    assert [g.keep for g in r.split.gates] == [8, 6]


@pytest.mark.parametrize("extra,needle", [
    (["--latency-budget-ms", "-1"], "--latency-budget-ms must be a positive number"),
    (["--latency-budget-fraction", "nan"], "--latency-budget-fraction must be a positive number"),
    (["--latency-budget-ms", "1", "--latency-budget-fraction", "0.5"], "not both"),
    (["--latency-budget-ms", "1", "--budget", "0.5"], "exclude each other"),
    (["--branch-max-drop", "2"], "--branch-max-drop is an accuracy drop in [0, 1]"),
    (["--latency-repeats", "0"], "--latency-repeats must be a positive integer"),
    (["--threads", "0"], "--threads must be a positive integer"),
    (["--max-subset-mib", "0"], "--max-subset-mib must be a positive number"),
    (["--branch-at", "t2", "--latency-budget-ms", "1e-6", "--latency-repeats", "2"], "out of reach")])
def test_cli_one_line_errors_of_the_new_options(tmp_path, capsys, extra, needle):
    m = _cnn()
    p = tmp_path / "m.onnx"
    onnx.save(m, str(p))
    x, y = _data(m, n=16)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    code, out, err = _gp(capsys, p, "--data", tmp_path / "d.npz", "-o", tmp_path / "o.onnx", "--no-progress",
                         *extra)
    assert code == 2 and err.startswith("graphprune: error: ") and needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "o.onnx").exists()


def test_cli_branch_auto_prints_the_candidates(tmp_path, capsys):
    m = _cnn()
    p = tmp_path / "m.onnx"
    onnx.save(m, str(p))
    x, y = _data(m, n=64)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    code, out, err = _gp(capsys, p, "--data", tmp_path / "d.npz", "-o", tmp_path / "o.onnx", "--k", "2",
                         "--samples", "64", "--importance-samples", "16", "--epochs", "0", "--batch-size", "16",
                         "--latency-repeats", "3", "--no-progress")
    assert code == 0, err
    assert "branch search (48 samples fitted, 16 judged" in out and "picked " in out
    meta = metadata.get_json(onnx.load(str(tmp_path / "o.onnx")), "graphprune.dynamic")
    assert meta["branch"] in ("p1", "t2", "r4") and meta["branch_search"]["branch"] == meta["branch"]
    assert f"branch at {meta['branch']}" in out


def test_subset_rank_is_a_bijection_on_sets():
    from itertools import combinations, permutations
    from graphprune.dynamic.subsets import subset_rank
    ranks = [subset_rank(c) for c in combinations(range(10), 3)]
    assert sorted(ranks) == list(range(120))
    assert {subset_rank(p) for p in permutations((7, 2, 5))} == {subset_rank((2, 5, 7))}


def _random_probe(k=2):
    """A gather-form probe with a random head and random tables, so that subsets differ."""
    from graphprune.dynamic.selection import integer_table
    m = gp.load(_cnn())
    s = split_model(m, "t2", 0.5)
    pm = probe.probe_model(m, s, k)
    rng = np.random.default_rng(3)
    for t in pm.graph.initializer:
        a = onnx.numpy_helper.to_array(t)
        if t.name.endswith("/table"):
            t.CopyFrom(onnx.numpy_helper.from_array(integer_table(rng.uniform(0, 1, a.shape), k), t.name))
        elif t.name in ("dyn/head/W", "dyn/head/B"):
            t.CopyFrom(onnx.numpy_helper.from_array(rng.standard_normal(a.shape).astype(np.float32), t.name))
    return m, s, pm


@pytest.mark.parametrize("k,subsets", [(2, 6), (1, 4), (3, 4), (4, 1)])
def test_subset_dispatch_equals_the_gather_form_on_every_input(k, subsets):
    """C(4, k) leaves: balanced and unbalanced If trees, and one leaf (no tree) when k = classes."""
    from graphprune.dynamic.subsets import specialise
    _, _, pm = _random_probe(k)
    sp = specialise(pm)
    onnx.checker.check_model(sp, full_check=True)
    assert metadata.get_json(sp, "graphprune.dynamic")["dispatch"]["subsets"] == subsets
    assert not any(t.name.endswith("/table") for t in sp.graph.initializer)          # no run-time selection left
    x = np.random.default_rng(4).standard_normal((40, 1, 8, 8)).astype(np.float32)
    a, b = session(with_threshold(pm, 2.0)), session(with_threshold(sp, 2.0))
    outs = [(a.run(None, {"x": x[i:i + 1]})[0], b.run(None, {"x": x[i:i + 1]})[0]) for i in range(len(x))]
    for u, v in outs:
        assert np.abs(u - v).max() <= 1e-5 * max(np.abs(u).max(), 1e-30)
    # the inputs reach several leaves: their branch scores' top-k sets differ
    zm = onnx.ModelProto()
    zm.CopyFrom(pm)
    zm.graph.output.append(onnx.helper.make_tensor_value_info("dyn/branch_logits", onnx.TensorProto.FLOAT, [1, 4]))
    zs = session(zm)
    sets = {tuple(sorted(np.argsort(-zs.run(None, {"x": x[i:i + 1]})[1][0])[:k])) for i in range(len(x))}
    assert len(sets) >= min(subsets, 2)


def test_subset_dispatch_size_limit():
    _, s, pm = _random_probe()
    from graphprune.dynamic.build import dispatch_form
    with pytest.raises(GraphpruneError, match="subset dispatch needs 6 copies"):
        dispatch_form(pm, DynamicOptions(dispatch="subsets", max_subset_mib=1e-6))
    kept = dispatch_form(pm, DynamicOptions(dispatch="auto", max_subset_mib=1e-6))
    d = metadata.get_json(kept, "graphprune.dynamic")["dispatch"]
    assert d["form"] == "gather" and "subset dispatch needs" in d["why"]
    assert any(t.name.endswith("/table") for t in kept.graph.initializer)
