"""Every architecture pattern, both PyTorch exporters: prune 30%, valid ONNX, same output
shapes, exact against the zeroed reference, and fewer MACs where channels can go."""
import numpy as np
import onnx
import pytest

import graphprune as gp
from graphprune.runtime import run

ARCHS = ["resnet", "resnext", "mobilenetv3", "densenet", "squeezenet", "shufflenet", "convnext", "vit", "encdec"]
# MAC ratio after/before at ratio 0.3 must be at most this (channel shuffle and the
# transformer's LayerNorm-coupled residual stream freeze part of the network)
MAX_MAC_RATIO = {"shufflenet": 0.95, "vit": 0.95, "convnext": 0.9}


@pytest.mark.parametrize("exporter", ["ts", "dynamo"])
@pytest.mark.parametrize("arch", ARCHS)
def test_prune_is_valid_exact_and_smaller(exported, arch, exporter):
    path = exported(arch, exporter)
    original = onnx.load(path)
    model = gp.load(path)
    an = gp.analyse(model)
    assert any(g.prunable for g in an.groups)
    plan = gp.choose(an, ratio=0.3)
    pruned = gp.prune(model, plan)
    onnx.checker.check_model(pruned, full_check=True)

    x = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    before = run(original, {original.graph.input[0].name: x})
    after = run(pruned, {pruned.graph.input[0].name: x})
    assert [a.shape for a in before] == [b.shape for b in after]

    report = gp.verify(model, plan, pruned)
    assert report.exact and report.passed, report.summary()
    assert report.max_rel_diff < 1e-4
    # every Conv output is compared (surviving channels), not only the graph outputs
    convs = {n.output[0] for n in pruned.graph.node if n.op_type == "Conv"}
    assert convs <= set(report.per_tensor), sorted(convs - set(report.per_tensor))[:3]

    c0, c1 = gp.count(model), gp.count(pruned)
    assert c1.macs / c0.macs <= MAX_MAC_RATIO.get(arch, 0.75)
    assert c1.params < c0.params


def test_conv_classifier_keeps_its_classes(exported):
    model = gp.load(exported("squeezenet", "ts"))
    an = gp.analyse(model)
    classifier = [g for g in an.groups if any("classifier" in m for m in g.members) and g.channels == 10]
    assert classifier and not classifier[0].prunable
    assert "graph output" in classifier[0].reason
    pruned = gp.prune(model, gp.choose(an, ratio=0.5))
    out = run(pruned, {"x": np.zeros((1, 3, 32, 32), np.float32)})[0]
    assert out.shape == (1, 10)


def test_grouped_conv_removes_whole_groups(exported):
    model = gp.load(exported("resnext", "ts"))
    an = gp.analyse(model)
    grouped = [g for g in an.groups if g.units != g.channels]
    assert grouped and grouped[0].units == 8 and grouped[0].channels == 32
    pruned = gp.prune(model, gp.choose(an, ratio=0.5))
    groups = [a.i for n in pruned.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
    assert 4 in groups


def test_layernorm_over_channels_is_frozen_unless_allowed(exported):
    model = gp.load(exported("convnext", "ts"))
    strict = gp.analyse(model)
    frozen = [g for g in strict.groups if not g.prunable and "pools over the channel axis" in g.reason]
    assert frozen
    loose = gp.analyse(model, allow_inexact=True)
    plan = gp.choose(loose, ratio=0.3)
    pruned = gp.prune(model, plan)
    report = gp.verify(model, plan, pruned)
    assert not report.exact and report.inexact and report.passed
    assert gp.count(pruned).macs < gp.count(gp.prune(model, gp.choose(strict, ratio=0.3))).macs


def test_round_to_gives_multiples(exported):
    model = gp.load(exported("resnet", "ts"))
    an = gp.analyse(model)
    plan = gp.choose(an, ratio=0.3, round_to=8)
    for g in an.groups:
        if g.prunable:
            assert plan.kept(g.id) % 8 == 0
    pruned = gp.prune(model, plan)
    report = gp.verify(model, plan, pruned)
    assert report.passed


def test_criteria_rank_differently_and_all_verify(exported):
    model = gp.load(exported("mobilenetv3", "ts"))
    an = gp.analyse(model)
    plans = {c: gp.choose(an, ratio=0.5, criterion=c) for c in ("l1", "l2", "bn", "random")}
    assert not np.array_equal(plans["l1"].keep_units, plans["random"].keep_units)
    for plan in plans.values():
        assert gp.verify(model, plan, gp.prune(model, plan)).passed
