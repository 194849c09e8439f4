"""Latency on this machine: onnxruntime (quick default) and the TVM Relax VM.

Both follow the same protocol: build once, warm up, time `repeats` runs, report
median and IQR. ORT is timed with time.perf_counter around session.run (it is
called inside the search loop, so it must stay cheap); TVM uses the VM's
time_evaluator, which times in C++ without Python overhead.
"""
from __future__ import annotations

import os

import numpy as np
import onnx

from graphprune.errors import GraphpruneError
from graphprune.targets.device_server import timed_runs  # the board-side module: stdlib only
from graphprune.targets.inputs import random_inputs
from graphprune.targets.result import LatencyResult, stats


def default_threads() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def check_threads(threads: int | None) -> int:
    """The thread count to time with: default_threads(), or `threads` when it is 1..4x the cores
    available (more only oversubscribes them; 100000 would hang creating the pool)."""
    if threads is None:
        return default_threads()
    cap = 4 * default_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise GraphpruneError(f"threads must be a positive integer (got {threads!r})")
    if threads > cap:
        raise GraphpruneError(f"threads {threads} is more than 4x the {default_threads()} cores available "
                              f"to this process (at most {cap})")
    return threads


def tvm_threads() -> int:
    """The TVM runtime's thread pool size on this host (TVM_NUM_THREADS, else its core count)."""
    import tvm
    return int(tvm.get_global_func("runtime.NumThreads")())


def ort_session(model: onnx.ModelProto, threads: int | None = None):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or default_threads()
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise GraphpruneError(f"onnxruntime cannot load this model: {msg}") from None


def measure_ort(model: onnx.ModelProto, target: str = "x86", repeats: int = 50, warmup: int = 5,
                threads: int | None = None, input_shapes: dict[str, list[int]] | None = None,
                note: str = "") -> LatencyResult:
    threads = check_threads(threads)
    feeds = random_inputs(model, input_shapes=input_shapes)
    sess = ort_session(model, threads)
    samples = timed_runs(sess, feeds, warmup, repeats)
    return stats(samples, backend="ort", target=target, tuned=False, tuning="onnxruntime (no TVM tuning)",
                 device="host", input_shapes={k: list(v.shape) for k, v in feeds.items()}, threads=threads, note=note)


def time_vm(vm, dev, feeds: list, repeats: int, warmup: int, number: int | None = None) -> list[float]:
    """Per-repeat ms from the VM's C++ time_evaluator; `number` runs averaged per repeat
    (auto: enough for ~10 ms per repeat, so tiny models are not timer-resolution bound)."""
    vm.set_input("main", *feeds)
    vm.invoke_stateful("main")  # first run: lazy init, page faults
    if number is None:
        probe = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=max(1, warmup))("main")
        number = max(1, min(100, int(10e-3 / max(probe.median, 1e-6))))
    res = vm.time_evaluator("invoke_stateful", dev, number=number, repeat=repeats, min_repeat_ms=0)("main")
    return [r * 1e3 for r in res.results]


def measure_tvm_local(compiled, model: onnx.ModelProto, repeats: int = 50, warmup: int = 5) -> LatencyResult:
    import tvm
    from tvm import relax
    tgt = compiled.target
    from graphprune.targets.registry import check_runs_here
    check_runs_here(tgt)
    dev = tvm.cpu()
    vm = relax.VirtualMachine(compiled.executable, dev)
    inputs = random_inputs(model, input_shapes=compiled.input_shapes or None)
    feeds = [tvm.runtime.tensor(v, dev) for v in inputs.values()]
    samples = time_vm(vm, dev, feeds, repeats, warmup)
    return stats(samples, backend="tvm", target=tgt.name, tuned=compiled.tuned, tuning=compiled.tuning,
                 device="host", input_shapes={k: list(v.shape) for k, v in inputs.items()}, threads=tvm_threads())


def run_tvm_local(compiled, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of the compiled model on the host (used to check TVM against onnxruntime)."""
    import tvm
    from tvm import relax
    dev = tvm.cpu()
    vm = relax.VirtualMachine(compiled.executable, dev)
    out = vm["main"](*[tvm.runtime.tensor(v, dev) for v in feeds.values()])
    if isinstance(out, tvm.runtime.Tensor):
        return [out.numpy()]
    return [o.numpy() for o in out]
