"""tools/bench_macs_vs_latency.py's pieces: the MobileNetV2-style network, per-layer MACs by kind, the summary."""
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import graphprune as gp  # noqa: E402


@pytest.fixture(scope="module")
def mnv2(tmp_path_factory):
    import _mobilenet_fmnist as mf
    import torch
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mnv2") / "m.onnx"
    mf.export(mf.net(), path, 32)
    return onnx.load(path)


def test_network_is_depthwise_and_per_kind_macs_add_up(mnv2):
    from bench_macs_vs_latency import kind_of, node_macs
    onnx.checker.check_model(mnv2)
    convs = [n for n in mnv2.graph.node if n.op_type == "Conv"]
    groups = {n.name: next((a.i for a in n.attribute if a.name == "group"), 1) for n in convs}
    dw = [n for n in groups if kind_of(n) == "dw"]
    assert len(dw) == 7 and all(groups[n] > 1 for n in dw)            # one depthwise conv per block
    assert all(groups[n] == 1 for n in groups if kind_of(n) != "dw")
    assert any(n.op_type == "BatchNormalization" for n in mnv2.graph.node)
    macs = node_macs(mnv2)
    assert sum(macs.values()) == gp.count(mnv2).macs
    # the first block's depthwise conv: 16 channels at 16x16 (32 input, stride-2 stem), 3x3 each
    first_dw = next(n for n in dw if "blocks.0/" in n)
    assert macs[first_dw] == 16 * 16 * 16 * 9
    assert {kind_of(n) for n in macs} == {"stem", "expand", "dw", "project", "head", "fc"}


def _seed(seed, sp, macs):
    return {"seed": seed, "speedup": dict(zip("abc", sp)), "ratio_a_over_c": sp[0] / sp[2],
            "ratio_a_over_b": sp[0] / sp[1], "macs": {"original": 100, **dict(zip("abc", macs))},
            "accuracy_final": {"original": 0.9, "a": 0.895, "b": 0.9, "c": 0.891},
            "a_config": "8-16", "c_config": "8-8", "b_ratio": None if seed == 2 else 0.1,
            "importance_method": "lrp", "max_drop": 0.01, "recovery_slack": 0.08, "recovery_tries": 2,
            "finetune_steps": 2, "epochs": 1.0, "train_samples": 100, "validation_samples": 50, "budget": 32,
            "latency_label": "x86", "latency_ms_rounds": {"a": [1.0, 1.0]}, "matched": {"a": True}}


def test_summary_spread_and_ratios():
    from bench_macs_vs_latency import markdown, summarise
    ps = [_seed(0, (1.5, 1.0, 1.2), (50, 90, 40)), _seed(1, (1.6, 1.1, 1.6), (50, 90, 40)),
          _seed(2, (1.4, 1.0, 1.0), (50, 100, 40))]
    s = summarise(ps)
    assert s["a_over_c"] == pytest.approx([1.25, 1.0, 1.4])
    assert s["a_over_b_mean_sd"] == pytest.approx([np.mean([1.5, 1.6 / 1.1, 1.4]), np.std([1.5, 1.6 / 1.1, 1.4], ddof=1)])
    kinds = {"stem": 10, "dw": 20}
    res = {"per_seed": ps, "summary": s, "model_desc": "m", "threads": 1, "final_repeats": 10, "lr": 0.01,
           "importance_samples": 8, "host": "h", "load_start": "1", "load_end": "2", "wall_s": 60, "train_wall_s": 1,
           "command": "c", "sweep": [{"name": "original", "ratio": 0.0, "round_to": 1, "macs": 100, "latency_ms": 2.0},
                                     {"name": "uniform 0.5", "ratio": 0.5, "round_to": 8, "macs": 50, "latency_ms": 1.6}],
           "breakdown": {k: {"macs": kinds, "us": {"stem": 3.0, "dw": 9.0, "other": 1.0}} for k in ("original", "a", "c")}}
    md = markdown(res)
    assert "| (a) XAI (lrp) + measured latency | 1.40 / 1.50 / 1.60x |" in md
    assert "| (c) XAI (lrp) + MACs | 1.00 / 1.20 / 1.60x |" in md
    assert "**(a)/(c)** (measured latency over MACs as the objective): 1.00 / 1.25 / 1.40" in md
    assert "| 2 | 8-16 | 89.50 | 1.40x | none (unpruned) |" in md
    assert "| dw | 0.000 | 66.7 | 9.0 | 69.2 |" in md                   # 20 of 30 MACs, 9 of 13 us
    assert "| uniform 0.5 | 8 | 0.000 | 2.00x | 1.600 | 1.25x |" in md
