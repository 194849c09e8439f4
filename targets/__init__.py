"""Targets and latency measurement: the Python API behind `graphprune targets|compile|bench`.

    from graphprune.targets import list_targets, measure_latency
    r = measure_latency("model.onnx", target="x86", backend="ort")   # quick, host CPU
    r = measure_latency(m, target="arm-a72", backend="tvm", rpc_tracker="10.0.0.2:9190",
                        rpc_key="rasp4", tune_trials=64)   # tuned on the boards under rasp4, timed there

Modules, one job each: registry (targets as JSON data), compile (ONNX -> Relax
-> .so), tune (MetaSchedule database per target, replay onto pruned shapes),
measure_local (ORT / TVM VM on this host), measure_rpc (tracker devices),
measure_rpc_ort (onnxruntime on tracker devices), device_server (the board side of that),
cache (on-disk results), localrpc (a throw-away local tracker + servers).

Importing this package imports no onnx, onnxruntime or TVM (they load on first use): a board
with graphprune installed without its dependencies can run `graphprune device-server`.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from graphprune.errors import GraphpruneError
from graphprune.targets.registry import Target, get_target, list_targets, load_targets
from graphprune.targets.result import LatencyResult

if TYPE_CHECKING:
    import onnx

__all__ = ["Target", "LatencyResult", "list_targets", "get_target", "load_targets", "compile_model",
           "measure_latency", "tune_base"]


def _as_model(model) -> onnx.ModelProto:
    import onnx
    if isinstance(model, onnx.ModelProto):
        return model
    from graphprune.modelio import read_model
    return read_model(model)


def _rpc_tuning(target: Target, rpc_tracker, rpc_key, timeout: float, emulated: bool = False):
    """Where tuning times candidates: None (this CPU) or the devices under the key at the tracker."""
    if not rpc_tracker:
        return None
    from graphprune.targets.measure_rpc import parse_address
    from graphprune.targets.tune import RPCTuning
    parse_address(rpc_tracker)
    return RPCTuning(tracker=rpc_tracker, key=rpc_key or target.rpc_key, timeout=timeout, emulated=emulated)


def _check_timeout(timeout) -> None:
    import math
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
        raise GraphpruneError(f"timeout must be a positive number of seconds (got {timeout!r})")


def _tune_time(tune_time) -> float | None:
    """Seconds of a tuning time budget (number or text such as '20m'), checked before any work."""
    from graphprune.targets.tuning.budget import parse_tune_time
    return parse_tune_time(tune_time)


def compile_model(model, target="x86", tune_trials: int = 0, output=None, targets_file=None,
                  rpc_tracker: str | None = None, rpc_key: str | None = None, timeout: float = 60.0,
                  input_shapes: dict[str, list[int]] | None = None, tune_time=None, progress: bool = False):
    """Compile an ONNX model (path or ModelProto) for a target; optionally export the .so to `output`.
    With rpc_tracker (and rpc_key, default the target's), tuning times its candidates on those devices.
    input_shapes pins dynamic dims (default: batch 1, others 64); the library accepts only those.
    tune_time (seconds, or '90s', '20m', '1h') bounds tuning in time too; progress: a progress bar."""
    from graphprune.targets.compile import compile_model as _compile
    _check_timeout(timeout)
    tune_time = _tune_time(tune_time)
    extra = [targets_file] if targets_file else None
    tgt = get_target(target, extra)
    return _compile(_as_model(model), tgt, tune_trials=tune_trials, output=output,
                    rpc=_rpc_tuning(tgt, rpc_tracker, rpc_key, timeout), input_shapes=input_shapes,
                    tune_time=tune_time, progress=progress)


def tune_base(model, target="x86", trials: int = 64, work_dir=None, rpc_tracker: str | None = None,
              rpc_key: str | None = None, timeout: float = 60.0, emulated: bool = False,
              input_shapes: dict[str, list[int]] | None = None, tune_time=None, progress: bool = False) -> str:
    """Tune a base architecture once per target (conv/matmul tasks only); pruned variants replay it.
    With rpc_tracker, candidates are timed on the devices under rpc_key (default the target's).
    tune_time (seconds, or '20m') bounds it in time too. Returns a description of the tuning."""
    from graphprune.targets.compile import import_onnx
    from graphprune.targets.tune import tune_module
    _check_timeout(timeout)
    tgt = get_target(target)
    tune_time = _tune_time(tune_time)
    return tune_module(import_onnx(_as_model(model), input_shapes), tgt, trials, work_dir=work_dir,
                       rpc=_rpc_tuning(tgt, rpc_tracker, rpc_key, timeout, emulated), tune_time=tune_time,
                       progress=progress)


def _ort_note(tgt: Target) -> str:
    """onnxruntime times this host whatever the target is called: a target other than the host's
    own (mcpu 'native') is accepted only when this CPU has all its instruction sets, and the
    result says the name is only the one requested."""
    if tgt.tvm.get("mcpu") == "native":
        return ""
    from graphprune.targets.hostcpu import cpu_model_name
    from graphprune.targets.registry import check_runs_here
    check_runs_here(tgt)
    return (f"target {tgt.name} as requested only: onnxruntime timed this host's CPU ({cpu_model_name()}) "
            f"with its own kernels, not code built for {tgt.name} (use --backend tvm for that)")


def _checked(m, tgt: Target, backend: str, rpc_tracker, repeats, threads, timeout, input_shapes):
    """Validate the measurement request; returns (pinned input shapes, threads for ort).
    onnxruntime over RPC: the device checks the thread count against its own cores."""
    from graphprune.targets.measure_local import check_threads
    from graphprune.targets.prepare import pinned_shapes
    if backend not in ("ort", "tvm"):
        raise GraphpruneError(f"unknown backend {backend!r} (use ort or tvm)")
    if backend == "ort" and not rpc_tracker and not tgt.runs_on_host:
        raise GraphpruneError(f"the ort backend measures this host's CPU only unless given an RPC tracker; for target "
                              f"{tgt.name!r} use --backend tvm, or --rpc-tracker with devices running "
                              "`graphprune device-server`")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise GraphpruneError(f"repeats must be a positive integer (got {repeats!r})")
    _check_timeout(timeout)
    if backend == "ort" and rpc_tracker:
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise GraphpruneError(f"threads must be a positive integer (got {threads!r})")
    else:
        threads = check_threads(threads) if backend == "ort" else None
    if rpc_tracker:
        from graphprune.targets.measure_rpc import parse_address
        parse_address(rpc_tracker)
    return pinned_shapes(m, input_shapes), threads


def _tvm_key(backend: str, tune_trials: int, tune_time: float | None) -> dict:
    """Extra cache-key fields for TVM timings: the ONNX converters the import used (targets/
    onnx_converters.py: a build made with TVM's own Clip converter is another program), and for
    tuned builds the compile pipeline (timings of builds made by another pipeline, such as the
    NCHW one before tuning/pipeline.py, are not reused) and the tuning time budget."""
    if backend != "tvm":
        return {}
    from graphprune.targets.onnx_converters import key_fields
    ours = key_fields("frontend")
    if not (tune_trials or tune_time):
        return ours
    from graphprune.targets.tuning.pipeline import active
    return {"pipeline": active(), "tune_time_s": tune_time, **ours}


def _cached(key: str) -> LatencyResult | None:
    """The cached result, or None for a miss: a missing, half-written, or malformed entry (valid
    JSON of another shape) is measured again and overwritten, never a crash."""
    from graphprune.targets import cache as _cache
    hit = _cache.get(key)
    if hit is None:
        return None
    try:
        r = LatencyResult.from_dict(hit)
    except (ValueError, TypeError):
        return None
    r.cached = True
    return r


def measure_latency(model, target="x86", backend: str = "ort", rpc_tracker: str | None = None,
                    rpc_key: str | None = None, tune_trials: int = 0, repeats: int = 50, warmup: int = 5,
                    threads: int | None = None, cache: bool = True, timeout: float = 60.0,
                    emulated: bool = False, targets_file=None,
                    input_shapes: dict[str, list[int]] | None = None, tune_time=None,
                    progress: bool = False) -> LatencyResult:
    """Median latency of one inference at batch 1, cached on disk by (graph hash, target, backend,
    tuning state and pipeline, device, repeats, threads, input shapes). input_shapes pins inputs
    with dynamic dims (default: batch 1, others 64; graphprune.inputs.concrete_shapes). tune_time
    bounds the base's tuning in time as well as trials (tvm backend); progress: a progress bar.

    backend "ort" with rpc_tracker times the model with the onnxruntime of a device under the
    key (it must run `graphprune device-server`); threads None is then that device's cores."""
    from graphprune.targets import cache as _cache
    m = _as_model(model)
    tgt = get_target(target, [targets_file] if targets_file else None)
    shapes, threads = _checked(m, tgt, backend, rpc_tracker, repeats, threads, timeout, input_shapes)
    tune_time = _tune_time(tune_time) if backend == "tvm" else None
    note = _ort_note(tgt) if backend == "ort" and not rpc_tracker else ""
    rpc_key = (rpc_key or tgt.rpc_key) if rpc_tracker else rpc_key
    key = None
    if cache:
        key = _cache.entry_key(_cache.graph_hash(m), target=tgt.name, tvm=tgt.tvm, backend=backend,
                               tune_trials=tune_trials if backend == "tvm" else 0, **_tvm_key(backend, tune_trials, tune_time),
                               device=f"rpc:{rpc_key}@{rpc_tracker}" if rpc_tracker else "host",
                               repeats=repeats, threads=threads, input_shapes=shapes)
        hit = _cached(key)
        if hit is not None:
            return hit
    if backend == "ort":
        result = _measure_ort(m, tgt, rpc_tracker, rpc_key, repeats, warmup, threads, timeout, emulated, shapes,
                              note)
    else:
        result = _measure_tvm(m, tgt, rpc_tracker, rpc_key, tune_trials, repeats, warmup, timeout, emulated, shapes,
                              tune_time, progress)
    if key is not None:
        _cache.put(key, result.to_dict())
    return result


def _measure_ort(m, tgt: Target, rpc_tracker, rpc_key, repeats, warmup, threads, timeout, emulated, shapes, note):
    if rpc_tracker:
        from graphprune.targets.measure_rpc_ort import measure_ort_rpc
        return measure_ort_rpc(m, rpc_tracker, rpc_key, target=tgt.name, repeats=repeats, warmup=warmup,
                               threads=threads, timeout=timeout, emulated=emulated, input_shapes=shapes)
    from graphprune.targets.measure_local import measure_ort
    return measure_ort(m, tgt.name, repeats=repeats, warmup=warmup, threads=threads, input_shapes=shapes,
                       note=note)


# TVM's ONNX importer, build and library export are not thread-safe (two imports at once in one
# process fail; two export_library calls at once abort the process): measurements from several
# threads (a device farm timing candidates at once) compile and export one at a time, and time on
# their devices in parallel while the next one compiles. Re-entrant: compile_model may export.
TVM_LOCK = threading.RLock()


def _measure_tvm(m, tgt: Target, rpc_tracker, rpc_key, tune_trials, repeats, warmup, timeout, emulated, shapes,
                 tune_time=None, progress: bool = False):
    from graphprune.targets.compile import compile_model as _compile
    with TVM_LOCK:
        compiled = _compile(m, tgt, tune_trials=tune_trials, input_shapes=shapes,  # tuning runs where it is measured
                            rpc=_rpc_tuning(tgt, rpc_tracker, rpc_key, timeout, emulated), tune_time=tune_time,
                            progress=progress)
    if rpc_tracker:
        from graphprune.targets.measure_rpc import measure_rpc
        return measure_rpc(compiled, m, rpc_tracker, rpc_key, repeats=repeats, warmup=warmup,
                           timeout=timeout, emulated=emulated)
    from graphprune.targets.measure_local import measure_tvm_local
    return measure_tvm_local(compiled, m, repeats=repeats, warmup=warmup)
