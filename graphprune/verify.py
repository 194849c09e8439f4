"""The exactness check: the pruned model against the original with removed channels zeroed.

Why it compares every intermediate tensor, each at its own scale: outputs alone prove
little. Outputs of random-weight networks can vanish (torchvision's mobilenet_v2 gives
values around 1e-11), so any absolute tolerance passes a wrong model, and one graph output
can hide a wrong branch that happens not to reach it on this input. So both models expose
every intermediate tensor as an output; for each tensor present in both, the reference's
surviving channels (sliced along the tensor's channel axis with the plan's mask) are
compared with the pruned tensor, relative to the magnitude of the terms that produced it
(see `term_scale`). NaN/Inf are a failure unless they match exactly. Tensors whose channel
mapping is unknown are skipped and counted in the report, never silently.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx

from graphprune.errors import GraphpruneError
from graphprune.inputs import check_run_memory, checked_shapes, concrete_shapes, random_feeds
from graphprune.passes.zero_removed import ZeroRemovedChannelsPass
from graphprune.runtime import session
from graphprune.selection import PruningPlan
from graphprune.verify_scale import term_scale

# float32 rounding through a network (summation order changes with channel counts) gives
# relative differences around 1e-6 per tensor at its own scale (at most 6e-6 over the
# coverage zoo, docs/coverage.md); a wrong rewrite gives
# differences of the order of the values themselves. float16 keeps 11 bits.
RELATIVE_TOLERANCE = {np.dtype(np.float16): 5e-2}
DEFAULT_RELATIVE_TOLERANCE = 1e-4


@dataclass
class VerifyReport:
    max_abs_diff: float          # largest absolute difference over the compared tensors
    max_rel_diff: float          # worst per-tensor relative difference (each at its own scale)
    exact: bool                  # the plan removes no channel of a channel-pooling op
    passed: bool                 # shapes equal, non-finite values matched, exact plans within tolerance
    inexact: list[str] = field(default_factory=list)
    shapes_equal: bool = True
    tensors_compared: int = 0
    tensors_skipped: int = 0     # float tensors in both models whose channel mapping is unknown
    worst_tensor: str = ""
    failed: list[str] = field(default_factory=list)      # tensors beyond tolerance or non-finite mismatch
    per_tensor: dict[str, float] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)     # reason -> count

    def summary(self) -> str:
        skipped = "; ".join(f"{n} {r}" for r, n in self.skipped.items())
        s = (f"{self.tensors_compared} tensors compared, each at its own scale"
             f"{f' ({self.tensors_skipped} skipped: {skipped})' if self.tensors_skipped else ''}; "
             f"worst relative diff {self.max_rel_diff:.3g}"
             f"{f' ({self.worst_tensor})' if self.worst_tensor else ''}, max abs diff {self.max_abs_diff:.3g}")
        if not self.shapes_equal:
            return s + "; FAILED: output shapes differ"
        if self.failed and (not self.inexact or not self.passed):
            return s + f"; FAILED: {len(self.failed)} tensors differ (first: {self.failed[0]})"
        if self.inexact:
            return s + "; not exact by design: " + "; ".join(self.inexact)
        return s + "; exact"


def verify(model: onnx.ModelProto, plan: PruningPlan, pruned: onnx.ModelProto, *,
           input_shapes: dict[str, list[int]] | None = None, seed: int = 0) -> VerifyReport:
    """Compare `pruned` with `model` (its own weights) whose removed channels are zeroed."""
    from graphprune.plan_target import model_for_plan

    base = model_for_plan(model, plan)
    input_shapes = checked_shapes(base, input_shapes)
    shapes = concrete_shapes(base, input_shapes)
    check_run_memory(base, shapes, copies=2, what="verify (which keeps every tensor of both models)")
    reference = ZeroRemovedChannelsPass(plan).run(base)
    feeds = random_feeds(base, shapes, seed)
    ref, ref_outputs = _run_all(reference, feeds, "the zeroed reference")
    out, out_outputs = _run_all(pruned, feeds, "the pruned model")
    if ref_outputs != out_outputs:
        raise GraphpruneError(f"the pruned model's outputs {out_outputs} are not the original's {ref_outputs}")
    shapes_equal = all(getattr(ref.get(o), "shape", None) == getattr(out.get(o), "shape", None) for o in ref_outputs)
    report = VerifyReport(0.0, 0.0, not plan.inexact(), False, plan.inexact(), shapes_equal)
    ctx = _Context(plan, base, ref, feeds)
    for node in base.graph.node:  # scales in topological order: each recursion is one level deep
        for o in node.output:
            if o in ref:
                ctx.scale(o)
    for name in ref:
        if name in out:
            _check_tensor(ctx, report, name, out[name], name in ref_outputs)
        else:
            report.skipped["not in the pruned model"] += 1
            report.tensors_skipped += 1
    nonfinite = any("NaN/Inf" in f for f in report.failed)
    report.passed = shapes_equal and not nonfinite and (bool(report.inexact) or not report.failed)
    return report


def _run_all(model: onnx.ModelProto, feeds: dict[str, np.ndarray], what: str
             ) -> tuple[dict[str, np.ndarray], list[str]]:
    """Every top-level tensor of `model` on `feeds` (the model is extended and restored in place)."""
    outputs = [o.name for o in model.graph.output]
    known = set(outputs) | set(feeds)
    extra = list(dict.fromkeys(o for n in model.graph.node for o in n.output if o and o not in known))
    n = len(model.graph.output)
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(e) for e in extra)
    try:
        sess = session(model)
    except GraphpruneError as exc:
        raise GraphpruneError(f"verify: {what}: {exc}") from None
    finally:
        del model.graph.output[n:]
    names = [o.name for o in sess.get_outputs()]
    try:
        values = sess.run(None, feeds)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:400]
        raise GraphpruneError(f"verify: onnxruntime failed to run {what}: {first}") from None
    return {k: v for k, v in zip(names, values) if isinstance(v, np.ndarray)}, outputs


class _Context:
    """What the per-tensor check reads: channel masks, the reference's values, weights."""

    def __init__(self, plan: PruningPlan, base: onnx.ModelProto, ref: dict, feeds: dict):
        self.plan, self.ref = plan, ref
        self.values = {**feeds}
        self.inits = {t.name: t for t in base.graph.initializer}
        self.producer = {o: nd for nd in base.graph.node for o in nd.output}
        self._kept_max: dict[str, float] = {}
        self._scale: dict[str, float] = {}

    def kept(self, name: str, a: np.ndarray) -> np.ndarray | None:
        """The reference tensor's surviving channels; None when its mapping is unknown."""
        m = self.plan.analysis.maps.get(name)
        if m is None:
            return a
        if a.ndim <= m.axis or a.shape[m.axis] != len(m.elems):
            return None
        mask = self.plan.keep_elems[m.elems]
        return a if mask.all() else np.compress(mask, a, axis=m.axis)

    def kept_max(self, name: str) -> float:
        """max |value| of a tensor's surviving channels (weights and inputs: all of them)."""
        if name not in self._kept_max:
            a = self.ref.get(name, self.values.get(name))
            if a is None and name in self.inits:
                from graphprune.arrays import view
                a = view(self.inits[name])
            k = self.kept(name, a) if name in self.ref else a
            self._kept_max[name] = _finite_max(k) if k is not None else 0.0
        return self._kept_max[name]

    def scale(self, name: str) -> float:
        """The magnitude of the terms that produced a tensor (see graphprune.verify_scale)."""
        if name not in self._scale:
            self._scale[name] = self.kept_max(name)  # provisional: cuts cycles
            self._scale[name] = term_scale(self, name, self.kept_max(name))
        return self._scale[name]


def _finite_max(a: np.ndarray | None) -> float:
    if a is None or a.size == 0 or a.dtype.kind not in "fc":
        return float(np.abs(a).max()) if a is not None and a.size and a.dtype.kind in "iu" else 0.0
    x = np.abs(a[np.isfinite(a)]) if not np.isfinite(a).all() else np.abs(a)
    return float(x.max()) if x.size else 0.0


def _check_tensor(ctx: _Context, report: VerifyReport, name: str, b: np.ndarray, is_output: bool) -> None:
    a = ctx.ref[name]
    if b.dtype != a.dtype:  # a rewrite never changes a type
        report.tensors_compared += 1
        report.failed.append(f"{name}: type {b.dtype}, expected {a.dtype}")
        return
    if a.dtype.kind != "f":  # integer shape computations legitimately change; outputs may not
        if is_output:
            report.tensors_compared += 1
            if not (a.shape == b.shape and np.array_equal(a, b)):
                report.failed.append(f"{name}: {a.dtype} output differs")
        else:
            report.skipped["not floating point"] += 1
            report.tensors_skipped += 1
        return
    k = ctx.kept(name, a)
    if k is None or k.shape != b.shape:
        if is_output:
            report.failed.append(f"{name}: shape {b.shape}, expected {None if k is None else k.shape}")
            return
        why = "channel mapping unknown" if k is None or name not in ctx.plan.analysis.maps else \
            "shape not explained by its channel map"
        report.skipped[why] += 1
        report.tensors_skipped += 1
        return
    report.tensors_compared += 1
    fa, fb = np.isfinite(k), np.isfinite(b)
    if not (np.array_equal(fa, fb) and np.array_equal(k[~fa], b[~fb], equal_nan=True)):
        report.failed.append(f"{name}: NaN/Inf differ")
        report.per_tensor[name] = float("inf")
        report.max_rel_diff, report.worst_tensor = float("inf"), name
        return
    diff = float(np.abs(k[fa].astype(np.float64) - b[fb].astype(np.float64)).max(initial=0.0))
    scale = ctx.scale(name)
    rel = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
    report.per_tensor[name] = rel
    report.max_abs_diff = max(report.max_abs_diff, diff)
    if rel > report.max_rel_diff or not report.worst_tensor:
        report.max_rel_diff, report.worst_tensor = max(rel, report.max_rel_diff), name
    if rel > RELATIVE_TOLERANCE.get(a.dtype, DEFAULT_RELATIVE_TOLERANCE):
        report.failed.append(f"{name}: relative diff {rel:.3g}")
