"""Accuracy, early-exit fraction and latency of a dynamic model, measured (never estimated).

* Average latency over data: every sample is run alone (batch 1) and timed one by one
  (the fastest of a few passes per sample, then the mean over samples), with the session
  options `graphprune bench` uses (graphprune.targets.measure_local:
  all graph optimisations, bench's thread count) and the same perf_counter loop as its
  onnxruntime timing; with TVM, each sample is one timed `invoke_stateful` of the
  compiled VM (its C++ timer), as bench times TVM.
* Longest-path latency: the gated path forced (the exit threshold set above 1, which no
  softmax reaches), timed the same way over the data and by `graphprune.targets.measure_latency`
  itself (bench's median on its random input: graphprune.dynamic.probe.path_ms); the gated path's shapes are static, so
  this is the slowest path for any input.
  The early-exit path alone (threshold 0) is timed the same way.
"""
from __future__ import annotations

import time

import numpy as np
import onnx
from onnx import TensorProto, helper


EXIT_TENSOR = "dyn/exit"


def _input_name(model: onnx.ModelProto) -> str:
    inits = {t.name for t in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in inits)


def with_exit_output(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy that also outputs the exit decision (bool scalar), to count exits; not for timing."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.output.append(helper.make_tensor_value_info(EXIT_TENSOR, TensorProto.BOOL, []))
    return out


def predictions(model: onnx.ModelProto, x: np.ndarray, dynamic: bool = True):
    """(scores (N, classes), exits (N,) bool or None) from onnxruntime, one sample at a time
    for a dynamic model (batch 1), in batches of 256 otherwise."""
    from graphprune.runtime import session
    name = _input_name(model)
    if not dynamic:
        sess = session(model)
        return np.concatenate([sess.run(None, {name: x[i:i + 256]})[0] for i in range(0, len(x), 256)]), None
    sess = session(with_exit_output(model))
    outs = [sess.run(None, {name: x[i:i + 1]}) for i in range(len(x))]
    return np.concatenate([o[0] for o in outs]), np.array([bool(o[1]) for o in outs])


def accuracy_and_exits(model: onnx.ModelProto, ds) -> tuple[float, float]:
    scores, exits = predictions(model, ds.x)
    return float((scores.argmax(1) == ds.y).mean()), float(exits.mean())


def per_class_accuracy(pred: np.ndarray, y: np.ndarray, classes: int) -> list[float]:
    return [float((pred[y == c] == c).mean()) if (y == c).any() else float("nan") for c in range(classes)]


def average_latency_ort(model: onnx.ModelProto, x: np.ndarray, warmup: int = 10, threads: int | None = None,
                        passes: int = 5) -> float:
    """Mean ms per sample over `x`, each sample run alone, bench's onnxruntime session and timing.

    Each sample is timed once per pass (`passes` passes over the data) and its fastest run
    kept: on a shared host a run is often preempted (medians of a few runs still were), and
    the fastest run of a fixed path is its cost without that. The mean is then over the
    samples, so a model whose paths differ in cost is averaged as the data uses them."""
    from graphprune.targets.measure_local import check_threads, ort_session
    sess = ort_session(model, check_threads(threads))
    name = _input_name(model)
    for i in range(min(warmup, len(x))):
        sess.run(None, {name: x[i:i + 1]})
    times = np.zeros((passes, len(x)))
    for p in range(passes):
        for i in range(len(x)):
            feed = {name: x[i:i + 1]}
            t0 = time.perf_counter()
            sess.run(None, feed)
            times[p, i] = time.perf_counter() - t0
    return float(times.min(axis=0).mean() * 1e3)


def average_latency_tvm(model: onnx.ModelProto, x: np.ndarray, target: str = "x86", warmup: int = 10,
                        passes: int = 5) -> float:
    """Mean ms per sample over `x` with the untuned TVM build, one timed VM call per sample and pass
    (fastest of the passes, mean over the samples, as average_latency_ort)."""
    import tvm
    from tvm import relax

    from graphprune.targets import compile_model
    compiled = compile_model(model, target)
    dev = tvm.cpu()
    vm = relax.VirtualMachine(compiled.executable, dev)
    feeds = [tvm.runtime.tensor(np.ascontiguousarray(x[i:i + 1]), dev) for i in range(len(x))]
    timer = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=1, min_repeat_ms=0)
    for i in range(min(warmup, len(x))):
        vm.set_input("main", feeds[i])
        vm.invoke_stateful("main")
    times = np.zeros((passes, len(x)))
    for p in range(passes):
        for i, f in enumerate(feeds):
            vm.set_input("main", f)
            times[p, i] = timer("main").mean
    return float(times.min(axis=0).mean() * 1e3)

