"""Graph rewrite passes, one per module; each is model in, model out."""
from graphprune.passes.base import Pass, Pipeline
from graphprune.passes.float16 import Float16Pass
from graphprune.passes.normalize import NormalizePass
from graphprune.passes.prune_channels import PruneChannelsPass
from graphprune.passes.quantize_int8 import QuantizeInt8Pass
from graphprune.passes.zero_removed import ZeroRemovedChannelsPass

__all__ = ["Pass", "Pipeline", "NormalizePass", "PruneChannelsPass", "ZeroRemovedChannelsPass", "QuantizeInt8Pass",
           "Float16Pass"]
