"""Paired latency comparison of two models on this host's CPU (onnxruntime).

Two latencies measured minutes apart (or read from a cache filled on another day) differ
by the machine's load as much as by the models. Here both sessions live in one process
with the same thread settings and the same feeds; after a warm-up they are timed in
alternating runs (A B, B A, A B, ...), so slow drifts of the machine hit both alike, and
the speed-up is the median of the per-pair ratios, with its interquartile range and a
bootstrap confidence interval of that median.
"""
from __future__ import annotations

import time

import numpy as np
import onnx

from graphprune.errors import GraphpruneError
from graphprune.targets.inputs import random_inputs
from graphprune.targets.measure_local import default_threads, ort_session


def _timed(sess, feeds, number: int) -> float:
    t0 = time.perf_counter()
    for _ in range(number):
        sess.run(None, feeds)
    return (time.perf_counter() - t0) * 1e3 / number


def paired_ort(original: onnx.ModelProto, delivered: onnx.ModelProto, repeats: int = 30, warmup: int = 5,
               threads: int | None = None, seed: int = 0, number: int = 1,
               input_shapes: dict[str, list[int]] | None = None) -> dict:
    """Speed-up of `delivered` over `original` from `repeats` alternating timed pairs.

    One inference per timed sample by default (as graphprune.targets.measure_local.measure_ort):
    on a loaded machine a longer sample is more often cut by a preemption, which then
    dominates both medians; a short one mostly is not, and the median ratio ignores those
    that are."""
    if repeats < 1:
        raise GraphpruneError(f"repeats must be >= 1, got {repeats}")
    threads = threads or default_threads()
    sa, sb = ort_session(original, threads), ort_session(delivered, threads)
    feeds = random_inputs(original, seed, input_shapes=input_shapes)
    if [i.name for i in sa.get_inputs()] != [i.name for i in sb.get_inputs()]:
        raise GraphpruneError("paired timing: the two models take different inputs")
    for _ in range(max(1, warmup)):
        sa.run(None, feeds)
        sb.run(None, feeds)
    number = max(1, int(number))
    ta, tb = [], []
    for i in range(repeats):
        if i % 2 == 0:
            ta.append(_timed(sa, feeds, number))
            tb.append(_timed(sb, feeds, number))
        else:
            tb.append(_timed(sb, feeds, number))
            ta.append(_timed(sa, feeds, number))
    out = paired_stats(ta, tb, seed=seed)
    out.update(method="paired", method_text="alternating timed runs of both models in one process, same feeds",
               number=number, threads=threads)
    return out


def paired_stats(original_ms, delivered_ms, seed: int = 0, n_boot: int = 2000) -> dict:
    """Median per-pair ratio original/delivered (> 1: delivered is faster), its IQR, a 95 %
    bootstrap interval of the median ratio, and a verdict that only says 'faster' or
    'slower' when that interval excludes 1."""
    a, b = np.asarray(original_ms, float), np.asarray(delivered_ms, float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("paired_stats needs two equally long, non-empty series")
    ratio = a / b
    q25, q50, q75 = np.percentile(ratio, [25, 50, 75])
    rng = np.random.default_rng(seed)
    boots = np.median(ratio[rng.integers(0, ratio.size, size=(n_boot, ratio.size))], axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    verdict = "faster" if lo > 1 else "slower" if hi < 1 else "no clear difference"
    return {"pairs": int(ratio.size), "original_ms": float(np.median(a)), "delivered_ms": float(np.median(b)),
            "speedup": float(q50), "speedup_iqr": [float(q25), float(q75)], "speedup_ci95": [float(lo), float(hi)],
            "verdict": verdict}


def paired_tvm(original: onnx.ModelProto, delivered: onnx.ModelProto, target="x86", tune_trials: int = 0,
               tune_time=None, repeats: int = 30, warmup: int = 5, seed: int = 0, targets_file=None,
               input_shapes: dict[str, list[int]] | None = None) -> dict:
    """The same alternating protocol for TVM on this host: both models compiled (tuned schedules
    as in the search: the base's records, replayed onto the other), both VMs in this process, then
    `repeats` pairs of one timed sample each (the VM's time_evaluator, enough runs per sample for
    ~10 ms), order alternating. Why: compiled and timed back to back, the second model ran on a
    quieter host and the original was once reported 1.61x faster than itself."""
    import tvm
    from tvm import relax
    from graphprune.targets import compile_model
    from graphprune.targets.measure_local import tvm_threads
    if repeats < 1:
        raise GraphpruneError(f"repeats must be >= 1, got {repeats}")
    kw = dict(target=target, tune_trials=tune_trials, tune_time=tune_time, targets_file=targets_file,
              input_shapes=input_shapes)
    dev = tvm.cpu()
    timers = []
    for model in (original, delivered):
        compiled = compile_model(model, **kw)
        vm = relax.VirtualMachine(compiled.executable, dev)
        feeds = random_inputs(model, seed, input_shapes=compiled.input_shapes or None)
        vm.set_input("main", *[tvm.runtime.tensor(v, dev) for v in feeds.values()])
        vm.invoke_stateful("main")   # lazy init, page faults
        probe = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=max(1, warmup))("main")
        number = max(1, min(100, int(10e-3 / max(probe.median, 1e-6))))
        timers.append(vm.time_evaluator("invoke_stateful", dev, number=number, repeat=1, min_repeat_ms=0))
    ta, tb = [], []
    for i in range(repeats):
        first, second = (0, 1) if i % 2 == 0 else (1, 0)
        for k in (first, second):
            (ta if k == 0 else tb).append(timers[k]("main").results[0] * 1e3)
    out = paired_stats(ta, tb, seed=seed)
    out.update(method="paired", method_text="alternating timed runs of both TVM builds in one process",
               threads=tvm_threads())
    return out
