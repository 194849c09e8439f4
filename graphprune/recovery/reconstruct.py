"""Least-squares reconstruction: the convolutions that read pruned channels refitted to the original.

Why: a convolution that read the removed channels was trained with them; pruning leaves
its kernel as it was, minus the slices that read them, and what those channels carried is
simply lost. Its output can be rebuilt from the channels that are left: the convolution is
linear in its input, so the kernel that best reproduces the original output from the pruned
input is a least-squares problem, solved exactly on a few unlabelled samples in seconds,
without gradients (He et al. 2017, "Channel pruning for accelerating very deep neural
networks"; ThiNet). On rembg's u2netp, which has no BatchNorm and which no distillation
recipe could recover, four 64-channel stage groups cut to 56 channels score saliency 0.72 raw
and 0.98 refitted (tools/probe_reconstruct.py, docs/bench_unlabelled.md).

What is computed, exactly: for every Conv of the pruned model whose input has fewer channels
than the same-named Conv of the original (1-D or 2-D, group 1, explicit pads or VALID), the
kernel W' and bias b' (when the Conv has a bias) that minimise
    sum over sampled output positions || W' * T'(patch) + b' - Y(kept channels) ||^2
      + ridge * mean(diag(X^T X)) * ||W', b'||^2,
where T' is the Conv's input in the pruned model on the samples and Y the original Conv's
output on the same samples, restricted to the output channels the pruned Conv keeps.
Convolutions are processed in levels (graphprune.recovery.probe): each reads an input in
which every reconstruction upstream of it is already applied, which is what the deployed
model computes (all at once from the unreconstructed inputs is far worse: 0.48 instead of 0.98
in the same probe). The normal equations are accumulated in
float64 over at most `max_rows` output positions drawn evenly from the samples; a refit
replaces the kernel only when it lowers that Conv's squared error on those positions (never
worse than pruning alone). Grouped/depthwise Convs (a removed channel takes its whole
filter with it, the kept ones compute what they did), SAME padding and non-float32 kernels
are left as they are and listed in the report; kernels that are not initializers are left too. The input
models are never modified.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from graphprune.errors import GraphpruneError
from graphprune.recovery.probe import batches, levels, model_feeds, probe_model, tensor_types

MAX_ROWS = 8192    # output positions per Conv the normal equations are accumulated over (u2netp: 4096 and 16384 alike)
RIDGE = 1e-3       # relative to the mean diagonal of X^T X: keeps rarely-active channels' weights finite


@dataclass
class ReconstructReport:
    """Convolutions refitted, onnxruntime passes, samples, their relative squared error on the sampled
    positions before and after (each its output's own scale), and the ones left as they were."""
    layers: int = 0
    passes: int = 0
    samples: int = 0
    seconds: float = 0.0
    error_before: list = field(default_factory=list)
    error_after: list = field(default_factory=list)
    skipped: list = field(default_factory=list)

    @property
    def text(self) -> str:
        if not self.layers:
            return "reconstruction: no convolution reads pruned channels" + \
                (f" that can be refitted (skipped {', '.join(self.skipped)})" if self.skipped else "")
        txt = (f"reconstruction: {self.layers} convolution(s) refitted by least squares on {self.samples} "
               f"samples in {self.passes} level(s), {self.seconds:.1f} s; relative error of their outputs "
               f"median {np.median(self.error_before):.3g} -> {np.median(self.error_after):.3g}")
        return txt + (f"; skipped {', '.join(self.skipped)}" if self.skipped else "")

    def to_json(self) -> dict:
        return {"layers": self.layers, "passes": self.passes, "samples": self.samples, "seconds": self.seconds,
                "error_before": list(map(float, self.error_before)),
                "error_after": list(map(float, self.error_after)), "skipped": list(self.skipped)}


@dataclass
class _Target:
    node: onnx.NodeProto            # the Conv of the pruned model
    reference: str                  # its output's name in the original
    keep: np.ndarray                # bool per original output channel: kept by the pruned Conv
    pads: tuple                     # (begin..., end...) per spatial axis
    strides: tuple
    dilations: tuple


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _why_not(a: dict, weight: np.ndarray) -> str | None:
    if weight.dtype != np.float32:
        return f"{weight.dtype} kernel"
    if weight.ndim not in (3, 4):
        return f"{weight.ndim - 2}-D convolution"
    if int(a.get("group", 1)) != 1:
        return "grouped"
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID", "NOTSET", "VALID"):
        return "SAME padding"
    return None


def _targets(base: onnx.ModelProto, pruned: onnx.ModelProto, keep_of) -> tuple[list[_Target], list[str]]:
    """The pruned model's Convs that read fewer channels than the original's, and those skipped (why).
    Only those: the Convs downstream of them lost no input and keep their trained kernels."""
    init = {t.name: t for t in pruned.graph.initializer}
    base_init = {t.name: t for t in base.graph.initializer}
    originals = {n.name: n for n in base.graph.node if n.op_type == "Conv" and n.name}
    out, skipped = [], []
    for n in pruned.graph.node:
        o = originals.get(n.name)
        if n.op_type != "Conv" or o is None or o.input[1] not in base_init or n.input[1] not in init:
            continue
        w, w0 = numpy_helper.to_array(init[n.input[1]]), numpy_helper.to_array(base_init[o.input[1]])
        if w.shape[1] == w0.shape[1]:
            continue
        a = _attrs(n)
        why = _why_not(a, w)
        if why:
            skipped.append(f"{n.name} ({why})")
            continue
        k = w.ndim - 2
        pads = tuple(a.get("pads", [0] * 2 * k)) if a.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET") \
            else (0,) * 2 * k
        keep = keep_of(o.output[0], w0.shape[0])
        if keep is None or int(keep.sum()) != w.shape[0]:
            skipped.append(f"{n.name} (output channels not mapped)")
            continue
        out.append(_Target(n, o.output[0], keep, pads, tuple(a.get("strides", [1] * k)),
                           tuple(a.get("dilations", [1] * k))))
    return out, skipped


def _patches(t: np.ndarray, tgt: _Target, kshape, rows: np.ndarray, out_hw) -> np.ndarray:
    """The input patches of the sampled output positions `rows` (flat over [n, *out_hw]):
    [len(rows), C * prod(kshape)], ordered as the kernel flattens (C, then its spatial axes)."""
    k = len(kshape)
    if k == 1:   # 1-D as 2-D with a height of 1
        t, kshape, out_hw = t[:, :, None, :], (1,) + tuple(kshape), (1,) + tuple(out_hw)
        pads, strides, dil = (0, tgt.pads[0], 0, tgt.pads[1]), (1,) + tgt.strides, (1,) + tgt.dilations
    else:
        pads, strides, dil = tgt.pads, tgt.strides, tgt.dilations
    tp = np.pad(t, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    s, rest = np.divmod(rows, out_hw[0] * out_hw[1])
    y, x = np.divmod(rest, out_hw[1])
    cols = [tp[s, :, y * strides[0] + i * dil[0], x * strides[1] + j * dil[1]]
            for i in range(kshape[0]) for j in range(kshape[1])]
    return np.stack(cols, axis=2).reshape(len(rows), -1)


class _Normal:
    """X^T X, X^T Y and Y^T Y of one Conv, accumulated in float64 over batches."""

    def __init__(self):
        self.xx = self.xy = self.yy = None

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        x, y = x.astype(np.float64), y.astype(np.float64)
        xx, xy, yy = x.T @ x, x.T @ y, (y * y).sum(0)
        if self.xx is None:
            self.xx, self.xy, self.yy = xx, xy, yy
        else:
            self.xx += xx
            self.xy += xy
            self.yy += yy

    def error(self, w: np.ndarray) -> float:
        """sum ||X w - Y||^2 / sum ||Y||^2 (w: [features, out])."""
        sq = np.einsum("fo,fg,go->", w, self.xx, w) - 2 * np.einsum("fo,fo->", w, self.xy) + self.yy.sum()
        return float(max(sq, 0.0) / max(self.yy.sum(), 1e-30))

    def solve(self, ridge: float) -> np.ndarray:
        a = self.xx + ridge * max(float(np.mean(np.diag(self.xx))), 1e-30) * np.eye(len(self.xx))
        return np.linalg.solve(a, self.xy)


def _rows_for(n_batch: int, out_hw, per_batch: int, rng) -> np.ndarray:
    total = n_batch * int(np.prod(out_hw))
    return np.sort(rng.choice(total, min(per_batch, total), replace=False))


def _fit_level(level, base, cur, feeds, bs, fixed, max_rows, ridge, rng, rep, types) -> None:
    """Accumulate and solve the normal equations of one level's Convs; write their kernels into `cur`."""
    from graphprune.runtime import session
    init = {t.name: t for t in cur.graph.initializer}
    inputs = list(dict.fromkeys(t.node.input[0] for t in level))
    direct = {i for i in inputs if i in feeds}
    probe_in = [i for i in inputs if i not in direct]
    s_in = session(probe_model(cur, probe_in, types[1])) if probe_in else None
    s_ref = session(probe_model(base, [t.reference for t in level], types[0]))
    n = len(next(iter(feeds.values())))
    n_batches = max(1, n // bs if fixed else -(-n // bs))   # what `batches` yields
    kshape = {id(t): tuple(init[t.node.input[1]].dims[2:]) for t in level}
    normals = {id(t): _Normal() for t in level}
    for batch in batches(feeds, bs, fixed):
        got = dict(zip(probe_in, s_in.run(probe_in, batch))) if s_in else {}
        got.update({i: batch[i] for i in direct})
        refs = dict(zip([t.reference for t in level], s_ref.run([t.reference for t in level], batch)))
        for t in level:
            y = refs[t.reference][:, t.keep]
            out_hw = y.shape[2:]
            rows = _rows_for(len(y), out_hw, max(1, max_rows // n_batches), rng)
            x = _patches(np.asarray(got[t.node.input[0]], np.float32), t, kshape[id(t)], rows, out_hw)
            if len(t.node.input) > 2 and t.node.input[2]:
                x = np.concatenate([x, np.ones((len(x), 1), x.dtype)], 1)
            yr = y.reshape(len(y), y.shape[1], -1).transpose(0, 2, 1).reshape(-1, y.shape[1])[rows]
            normals[id(t)].add(x, yr)
    for t in level:
        _write(t, init, normals[id(t)], ridge, rep)


def _write(t: _Target, init, eq: _Normal, ridge: float, rep: ReconstructReport) -> None:
    w_name = t.node.input[1]
    b_name = t.node.input[2] if len(t.node.input) > 2 and t.node.input[2] else None
    w = numpy_helper.to_array(init[w_name])
    old = w.reshape(w.shape[0], -1).T.astype(np.float64)
    if b_name:
        old = np.concatenate([old, numpy_helper.to_array(init[b_name]).reshape(1, -1)], 0)
    new = eq.solve(ridge)
    before, after = eq.error(old), eq.error(new)
    if not (np.all(np.isfinite(new)) and after < before):
        rep.skipped.append(f"{t.node.name} (refit no better: {after:.3g} vs {before:.3g})")
        return
    init[w_name].CopyFrom(numpy_helper.from_array(new[:old.shape[0] - (1 if b_name else 0)].T.reshape(w.shape)
                                                  .astype(np.float32), w_name))
    if b_name:
        init[b_name].CopyFrom(numpy_helper.from_array(new[-1].astype(np.float32), b_name))
    rep.layers += 1
    rep.error_before.append(before)
    rep.error_after.append(after)


def _own_kernels(graph: onnx.GraphProto, targets: list[_Target]) -> None:
    """Give each target Conv kernel/bias initializers nothing else reads (copies where shared)."""
    uses: dict[str, int] = {}
    for n in graph.node:
        for name in n.input:
            uses[name] = uses.get(name, 0) + 1
    inits = {t.name: t for t in graph.initializer}
    for t in targets:
        for slot in range(1, min(3, len(t.node.input))):
            name = t.node.input[slot]
            if name and uses.get(name, 0) > 1:
                new = f"{t.node.name}_reconstructed_{slot}"
                graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[name]).copy(), new))
                uses[name] -= 1
                t.node.input[slot] = new


def reconstruct(original: onnx.ModelProto, plan, pruned: onnx.ModelProto, x, *, batch_size: int = 16,
                max_rows: int = MAX_ROWS, ridge: float = RIDGE, seed: int = 0, sequential: bool = True
                ) -> tuple[onnx.ModelProto, ReconstructReport]:
    """A copy of `pruned` (= graphprune.prune(original, plan)) whose Convs that read pruned channels
    are refitted by least squares to `original`'s outputs on `x` (an array, or {input: array});
    and a ReconstructReport. Neither model is modified. `sequential` False fits every Conv on the
    unrefitted pruned model's inputs in one pass (for comparison: tools/probe_reconstruct.py)."""
    from graphprune.plan_target import model_for_plan
    from graphprune.recovery.batching import merges_samples
    from graphprune.recovery.teacher import OrtRunner
    t0 = time.time()
    base = model_for_plan(original, plan)
    out = copy.deepcopy(pruned)
    an, keep_elems = plan.analysis, plan.keep_elems

    def keep_of(tensor, width):
        m = an.maps.get(tensor)
        return np.ones(width, bool) if m is None else keep_elems[m.elems]
    targets, skipped = _targets(base, out, keep_of)
    rep = ReconstructReport(skipped=skipped)
    if not targets:
        return out, rep
    feeds, fixed = model_feeds(base, x, "reconstruction")
    n = len(next(iter(feeds.values())))
    per_sample = fixed == 1 or (fixed is None and len(feeds) == 1 and n >= 2
                                and merges_samples(OrtRunner(base), next(iter(feeds.values()))))
    bs = 1 if per_sample else (fixed or max(1, min(int(batch_size), n)))
    if n < bs:
        raise GraphpruneError(f"reconstruction: the model's batch size is fixed at {bs}, only {n} samples given")
    rep.samples = n - n % bs if fixed else n
    _own_kernels(out.graph, targets)
    rng = np.random.default_rng(seed)
    types = (tensor_types(base), tensor_types(out))   # the graphs keep their tensors: inferred once
    try:
        for level in (levels(out.graph, [t.node for t in targets]) if sequential else [[t.node for t in targets]]):
            in_level = {id(nd) for nd in level}
            _fit_level([t for t in targets if id(t.node) in in_level], base, out, feeds, bs, bool(fixed),
                       max_rows, ridge, rng, rep, types)
            rep.passes += 1
    except GraphpruneError:
        raise
    except Exception as exc:
        raise GraphpruneError(f"reconstruction: the data does not run through the model: "
                              f"{str(exc).strip().splitlines()[0][:200]}") from None
    rep.seconds = time.time() - t0
    return out, rep
