"""The teacher's outputs: the original model run once in onnxruntime over the training data.

Distillation compares the student (the pruned model being trained) with the original on
the same inputs at every step; the original never changes, so its outputs are computed
once, in onnxruntime (the reference runtime, the same numbers the original delivers), and
kept in memory keyed by (model hash, data hash, per-sample): recovering several front
members (--recovery-slack) or several pruning steps reuses them.

A model that merges the samples of a batch (graphprune.recovery.batching) is run one
sample at a time; a fixed input batch size is honoured (the last batch padded, the
padding's outputs dropped).
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import onnx

from graphprune.errors import GraphpruneError
from graphprune.recovery.batching import merges_samples

CACHE_ENTRIES = 4
_CACHE: "OrderedDict[tuple, list[np.ndarray]]" = OrderedDict()


def data_hash(x: np.ndarray) -> str:
    h = hashlib.sha1(str((x.shape, str(x.dtype))).encode())
    h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()


def model_hash(model: onnx.ModelProto) -> str:
    return hashlib.sha1(model.SerializeToString(deterministic=True)).hexdigest()


class OrtRunner:
    """One onnxruntime session of a single-input model: batch -> list of outputs, honouring
    a fixed input batch size."""

    def __init__(self, model: onnx.ModelProto):
        from graphprune.runtime import session
        self.sess = session(model)
        ins = self.sess.get_inputs()
        if len(ins) != 1:
            raise GraphpruneError(f"distillation needs a single-input model, this one has {len(ins)} inputs")
        self.name = ins[0].name
        d0 = ins[0].shape[0] if ins[0].shape else None
        self.fixed = d0 if isinstance(d0, int) and d0 > 0 else None

    def __call__(self, xb: np.ndarray) -> list[np.ndarray]:
        n = len(xb)
        if self.fixed and n != self.fixed:
            if n > self.fixed:
                raise GraphpruneError(f"the model's batch size is fixed at {self.fixed}")
            xb = np.concatenate([xb, np.repeat(xb[-1:], self.fixed - n, 0)])
        return [o[:n] if self.fixed else o for o in self.sess.run(None, {self.name: xb})]


def teacher_outputs(model: onnx.ModelProto, x: np.ndarray, batch_size: int = 64) -> tuple[list[np.ndarray], bool]:
    """(outputs over x, one array per graph output with the samples on axis 0; whether the model
    merges samples and was run one at a time). Cached in memory."""
    x = np.ascontiguousarray(x, np.float32)
    key = (model_hash(model), data_hash(x))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    run = OrtRunner(model)
    try:
        per_sample = run.fixed == 1 or merges_samples(run, x)
        bs = 1 if per_sample else (run.fixed or batch_size)
        parts = [run(x[i:i + bs]) for i in range(0, len(x), bs)]
    except GraphpruneError:
        raise
    except Exception as exc:
        raise GraphpruneError(f"the teacher (original model) cannot run on the training data: "
                              f"{str(exc).strip().splitlines()[0][:200]}") from None
    outs = [np.concatenate([p[k] for p in parts]).astype(np.float32) for k in range(len(parts[0]))]
    for k, o in enumerate(outs):
        if o.ndim == 0 or o.shape[0] != len(x):
            raise GraphpruneError(f"distillation: the original model's output {k} has shape {o.shape} over "
                                  f"{len(x)} samples; its first axis is not the batch")
    _CACHE[key] = (outs, per_sample)
    while len(_CACHE) > CACHE_ENTRIES:
        _CACHE.popitem(last=False)
    return outs, per_sample
