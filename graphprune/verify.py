"""The exactness check: pruned model vs. the original with removed channels zeroed."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from graphprune.errors import GraphpruneError
from graphprune.inputs import concrete_shapes, random_feeds
from graphprune.passes.zero_removed import ZeroRemovedChannelsPass
from graphprune.runtime import run
from graphprune.selection import PruningPlan

# float32 rounding through a deep network (summation order changes with channel counts;
# LayerNorm and Softmax amplify it) stays far below this; a wrong rewrite gives errors of
# the order of the outputs themselves.
ABSOLUTE_TOLERANCE = 1e-5
RELATIVE_TOLERANCE = 1e-3


@dataclass
class VerifyReport:
    max_abs_diff: float
    max_rel_diff: float          # max abs diff / max |reference output|
    exact: bool                  # the plan removes no channel of a channel-pooling op
    passed: bool                 # shapes equal and, for exact plans, diff within tolerance
    inexact: list[str] = field(default_factory=list)
    shapes_equal: bool = True

    def summary(self) -> str:
        s = f"max abs diff {self.max_abs_diff:.3g} (relative {self.max_rel_diff:.3g})"
        if not self.exact:
            return s + "; not exact by design: " + "; ".join(self.inexact)
        return s + ("; exact" if self.passed else "; FAILED")


def verify(model: onnx.ModelProto, plan: PruningPlan, pruned: onnx.ModelProto, *,
           input_shapes: dict[str, list[int]] | None = None, seed: int = 0) -> VerifyReport:
    """Compare `pruned` with the original model whose removed channels are zeroed."""
    reference = ZeroRemovedChannelsPass(plan).run(plan.analysis.model)
    shapes = concrete_shapes(model, input_shapes)
    feeds = random_feeds(model, shapes, seed)
    ref = run(reference, feeds)
    out = run(pruned, feeds)
    if len(ref) != len(out):
        raise GraphpruneError("pruned model has a different number of outputs")
    shapes_equal = all(a.shape == b.shape for a, b in zip(ref, out))
    diff, scale = 0.0, 0.0
    for a, b in zip(ref, out):
        if a.shape != b.shape or not np.issubdtype(a.dtype, np.number):
            continue
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        finite = np.isfinite(a64) & np.isfinite(b64)
        if a.size:
            diff = max(diff, float(np.abs(a64 - b64)[finite].max(initial=0.0)))
            scale = max(scale, float(np.abs(a64)[finite].max(initial=0.0)))
    rel = diff / scale if scale > 0 else diff
    inexact = plan.inexact()
    within = diff <= ABSOLUTE_TOLERANCE + RELATIVE_TOLERANCE * scale
    passed = shapes_equal and (bool(inexact) or within)
    return VerifyReport(diff, rel, not inexact, passed, inexact, shapes_equal)
