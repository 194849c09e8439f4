"""Graph rewrite passes, one per module; each is model in, model out."""
from graphprune.passes.base import Pass, Pipeline
from graphprune.passes.normalize import NormalizePass
from graphprune.passes.prune_channels import PruneChannelsPass
from graphprune.passes.zero_removed import ZeroRemovedChannelsPass

__all__ = ["Pass", "Pipeline", "NormalizePass", "PruneChannelsPass", "ZeroRemovedChannelsPass"]
