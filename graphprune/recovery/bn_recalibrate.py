"""Batch-norm recalibration: the running statistics of a (pruned) model recomputed on data.

Why: a BatchNormalization normalises with the mean/variance its input had on the training
data. Pruning channels upstream changes that input, so the stored statistics are stale
and the pruned model is judged (and delivered) worse than it is. Recomputing them needs
no labels and no gradients: run the model, read each BN's input, average.

What is computed, exactly: for every top-level BatchNormalization (spatial, inference
mode), the population mean and (biased) variance of its input over N and every axis
after the channel axis, over all the calibration samples, with every BN upstream of it
already recalibrated. That is what the deployed model then sees. BNs are processed in
levels: level k holds the BNs with k BNs upstream on their longest path; one onnxruntime
pass over the samples per level, each pass running only the nodes the level's BN inputs
depend on. A model with BN folded into its convolutions (most exports in eval mode) has
no BN: a no-op that says so.

A mean/var initializer shared with anything else (exporters deduplicate equal tensors:
a zero mean and a zero bias become one) is never overwritten: the BN gets its own copy.
The input model is never modified.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from graphprune.errors import GraphpruneError
from graphprune.recovery.probe import batches, levels, model_feeds, probe_model


@dataclass
class BNReport:
    """What recalibration did: BNs recalibrated, onnxruntime passes, samples, and what was skipped."""
    layers: int = 0
    passes: int = 0
    samples: int = 0
    seconds: float = 0.0
    skipped: list = field(default_factory=list)

    @property
    def text(self) -> str:
        if not self.layers:
            return "BN recalibration: no BatchNormalization to recalibrate (folded into the convolutions?)" + \
                (f"; skipped {', '.join(self.skipped)}" if self.skipped else "")
        txt = (f"BN recalibration: {self.layers} BatchNormalization(s) recomputed on {self.samples} samples "
               f"in {self.passes} onnxruntime pass(es), {self.seconds:.2f} s")
        return txt + (f"; skipped {', '.join(self.skipped)}" if self.skipped else "")

    def to_json(self) -> dict:
        return {"layers": self.layers, "passes": self.passes, "samples": self.samples,
                "seconds": self.seconds, "skipped": list(self.skipped)}


def _targets(graph: onnx.GraphProto) -> tuple[list[onnx.NodeProto], list[str]]:
    """The BNs that can be recalibrated, and the names of those that cannot (with why)."""
    out, skipped = [], []
    for n in graph.node:
        if n.op_type != "BatchNormalization" or n.domain not in ("", "ai.onnx"):
            continue
        a = {at.name: onnx.helper.get_attribute_value(at) for at in n.attribute}
        if a.get("training_mode", 0):
            skipped.append(f"{n.name} (training_mode)")
        elif not a.get("spatial", 1):
            skipped.append(f"{n.name} (spatial=0)")
        elif len(n.input) < 5:
            skipped.append(f"{n.name} (no mean/var inputs)")
        else:
            out.append(n)
    return out, skipped


def _constant_array(node: onnx.NodeProto) -> np.ndarray | None:
    a = {at.name: at for at in node.attribute}
    if "value" in a:
        return numpy_helper.to_array(a["value"].t)
    if "value_floats" in a:
        return np.array(list(a["value_floats"].floats), np.float32)
    return None


def _own_stats(graph: onnx.GraphProto, bns: list[onnx.NodeProto]) -> None:
    """Give every target BN mean/var initializers no other tensor use reads (copies where shared)."""
    inits = {t.name: t for t in graph.initializer}
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    uses: dict[str, int] = {}
    for n in graph.node:
        for name in n.input:
            uses[name] = uses.get(name, 0) + 1
    public = {v.name for v in graph.input} | {v.name for v in graph.output}
    taken = set(inits) | {o for n in graph.node for o in n.output} | public
    identity = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}
    for bn in bns:
        for slot, what in ((3, "running_mean"), (4, "running_var")):
            name = bn.input[slot]
            if name in inits and uses.get(name, 0) == 1 and name not in public:
                continue
            while name in identity and name not in inits and name not in consts:   # exporters' Identity aliases
                name = identity[name]
            if name in inits:
                arr = numpy_helper.to_array(inits[name])
            elif name in consts and _constant_array(consts[name]) is not None:
                arr = _constant_array(consts[name])
            else:
                raise GraphpruneError(f"BN recalibration: {bn.name}'s {what} ({name}) is not a constant")
            new, k = f"{bn.name or bn.output[0]}_{what}", 1
            while new in taken:
                k += 1
                new = f"{bn.name or bn.output[0]}_{what}_{k}"
            taken.add(new)
            graph.initializer.append(numpy_helper.from_array(np.array(arr, copy=True), new))
            uses[bn.input[slot]] -= 1
            bn.input[slot] = new


def _accumulate(sess, feeds, bs, fixed, tensors, direct) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-channel (mean, population variance) of every tensor in `tensors` over all batches."""
    sums: dict[str, list] = {}
    names = [t for t in tensors if t not in direct]
    for batch in batches(feeds, bs, fixed):
        outs = dict(zip(names, sess.run(names, batch))) if names else {}
        outs.update({t: batch[t] for t in tensors if t in direct})
        for t in tensors:
            a = np.asarray(outs[t], np.float64)
            if a.ndim < 2:
                raise GraphpruneError(f"BN recalibration: input {t} of a BatchNormalization has rank {a.ndim}")
            axes = (0,) + tuple(range(2, a.ndim))
            acc = sums.setdefault(t, [0, 0.0, 0.0])
            acc[0] += a.size // a.shape[1]
            acc[1] = acc[1] + a.sum(axes)
            acc[2] = acc[2] + (a * a).sum(axes)
    out = {}
    for t, (n, s, ss) in sums.items():
        mean = s / n
        out[t] = (mean, np.maximum(ss / n - mean * mean, 0.0))
    return out


def recalibrate_bn(model: onnx.ModelProto, x, batch_size: int = 64,
                   max_samples: int | None = None) -> tuple[onnx.ModelProto, BNReport]:
    """A copy of `model` whose BatchNormalization statistics are those of its inputs on `x`
    (an array for a single-input model, else {input name: array}); and a BNReport. Uses
    the first `max_samples` samples (all when None)."""
    from graphprune.runtime import session
    t0 = time.time()
    out = copy.deepcopy(model)
    bns, skipped = _targets(out.graph)
    rep = BNReport(skipped=skipped)
    if not bns:
        return out, rep
    feeds, fixed = model_feeds(out, x, "BN recalibration")
    if max_samples is not None:
        feeds = {k: v[:max_samples] for k, v in feeds.items()}
    n = len(next(iter(feeds.values())))
    bs = fixed or max(1, min(int(batch_size), n))
    if n < bs:
        raise GraphpruneError(f"BN recalibration: the model's batch size is fixed at {bs}, only {n} samples given")
    rep.samples = n - n % bs if fixed else n
    _own_stats(out.graph, bns)
    inits = {t.name: t for t in out.graph.initializer}
    for level in levels(out.graph, bns):
        tensors = list(dict.fromkeys(b.input[0] for b in level))
        direct = {t for t in tensors if t in feeds}
        probe = [t for t in tensors if t not in direct]
        sess = session(probe_model(out, probe)) if probe else None
        try:
            stats = _accumulate(sess, feeds, bs, bool(fixed), tensors, direct)
        except GraphpruneError:
            raise
        except Exception as exc:
            raise GraphpruneError(f"BN recalibration: the data does not run through the model: "
                                  f"{str(exc).strip().splitlines()[0][:200]}") from None
        for b in level:
            mean, var = stats[b.input[0]]
            for slot, arr in ((3, mean), (4, var)):
                old = inits[b.input[slot]]
                dtype = numpy_helper.to_array(old).dtype
                old.CopyFrom(numpy_helper.from_array(arr.astype(dtype).reshape(numpy_helper.to_array(old).shape),
                                                     old.name))
        rep.passes += 1
    rep.layers = len(bns)
    rep.seconds = time.time() - t0
    return out, rep
