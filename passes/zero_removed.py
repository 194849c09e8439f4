"""ZeroRemovedChannelsPass: the reference model of the exactness check.

The original graph with the weights that *read* removed channels set to zero: the removed
channels then contribute nothing, so a correct pruning must compute the same outputs.
"""
from __future__ import annotations

import onnx

from graphprune.passes.base import Pass
from graphprune.passes.rewrite import apply_rules, export
from graphprune.selection import PruningPlan


class ZeroRemovedChannelsPass(Pass):
    name = "zero-removed-channels"

    def __init__(self, plan: PruningPlan):
        self.plan = plan

    def run(self, model: onnx.ModelProto) -> onnx.ModelProto:
        return export(apply_rules(model, self.plan, "zero"), model)
