"""Running a model over a data set in onnxruntime and reducing its outputs batch by batch.

One runner serves the reference (the original model, once per run) and every
candidate, so both go through the same batching, padding and reduction. Models exported
with a fixed batch (detectors and OCR models often fix it at 1) get batches of that size,
the last one padded with copies of its last sample and trimmed after the run. An output
without a batch axis (a batch-1 export that squeezed it) gets one added.

`x` is one array (the model's one input) or a dict of arrays named like the model's
inputs (multi-input models).
"""
from __future__ import annotations

import numpy as np
import onnx

from graphprune.errors import GraphpruneError
from graphprune.metrics.base import Metric, Outputs

BATCH = 256


def n_samples(x) -> int:
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


def _feeds(sess, x) -> dict[str, np.ndarray]:
    names = [i.name for i in sess.get_inputs()]
    if isinstance(x, dict):
        missing = [n for n in names if n not in x]
        if missing:
            raise GraphpruneError(f"the data has no array for model input(s) {', '.join(map(repr, missing))} "
                                  f"(it has {', '.join(map(repr, x))})")
        return {n: x[n] for n in names}
    if len(names) != 1:
        raise GraphpruneError(f"the model has {len(names)} inputs ({', '.join(map(repr, names))}): give a .npz "
                              "with one array per input, named like the inputs")
    return {names[0]: x}


def _fixed_batch(sess) -> int | None:
    d = sess.get_inputs()[0].shape[0] if sess.get_inputs()[0].shape else None
    return d if isinstance(d, int) and d > 0 else None


def _batch_outputs(sess, out_names, feeds, i: int, bs: int, n: int, fixed: bool) -> Outputs:
    real = min(bs, n - i)
    fb = {k: v[i:i + real] for k, v in feeds.items()}
    if fixed and real < bs:
        fb = {k: np.concatenate([v, np.repeat(v[-1:], bs - real, 0)]) for k, v in fb.items()}
    try:
        outs = sess.run(None, fb)
    except Exception as exc:
        raise GraphpruneError(f"the data does not fit the model: {str(exc).strip().splitlines()[0][:200]}") from None
    fed = len(next(iter(fb.values())))
    res = []
    for name, o in zip(out_names, outs):
        o = np.asarray(o)
        if o.ndim >= 1 and o.shape[0] == fed:
            res.append(o[:real])
        elif fed == 1:
            res.append(o[None])
        else:
            raise GraphpruneError(f"output {name!r} is {tuple(o.shape)} for a batch of {fed}: it has no batch axis")
    return res


def _nbytes(reduced: Outputs) -> int:
    total = 0
    for a in reduced:
        a = np.asarray(a)
        total += sum(np.asarray(e).nbytes for e in a) if a.dtype == object else a.nbytes
    return total


def run_reduced(model: onnx.ModelProto, x, metric: Metric, labels=None, threads: int = 0, batch: int = BATCH,
                check: bool = False) -> Outputs:
    """The model's outputs on all of `x`, reduced by `metric` batch by batch and concatenated.
    With `check`, the first raw batch goes through metric.check (the reference run) and the
    memory that the reduced outputs of two models will take is bounded before the rest runs."""
    from graphprune.data.dataset import check_memory
    from graphprune.runtime import session  # onnxruntime only when a model is run
    sess = session(model, threads)
    feeds = _feeds(sess, x)
    out_names = [o.name for o in sess.get_outputs()]
    n = n_samples(x)
    fb = _fixed_batch(sess)
    bs = fb or batch
    parts: list[Outputs] = []
    for i in range(0, n, bs):
        raw = _batch_outputs(sess, out_names, feeds, i, bs, n, fb is not None)
        if check and i == 0:
            metric.check(raw, out_names, labels)
        parts.append(metric.reduce(raw))
        if check and i == 0:
            check_memory(2 * _nbytes(parts[0]) * n // max(1, len(raw[0])),
                         f"the original and a candidate's outputs on {n} samples for --metric {metric.name}")
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def output_names(model: onnx.ModelProto) -> list[str]:
    return [o.name for o in model.graph.output]


def reference_outputs(model: onnx.ModelProto, x, metric: Metric, labels=None, threads: int = 0) -> Outputs:
    """The original model's reduced outputs: checked to fit the metric, computed once per run."""
    ref = run_reduced(model, x, metric, labels, threads, check=True)
    metric.check_reference(ref, labels)
    return ref


def evaluate(model: onnx.ModelProto, x, metric: Metric, ref: Outputs, labels=None, threads: int = 0) -> float:
    """The metric of `model` on `x` against the reference (finite float, higher is better)."""
    from graphprune.metrics.base import finite_score
    return finite_score(metric.compare(run_reduced(model, x, metric, labels, threads), ref, labels), metric.name)
