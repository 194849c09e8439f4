"""Timing tuning candidates on the devices registered under a tracker key.

The LocalBuilder here compiles each candidate for the target and links it into a .so with the
target's (cross) compiler (workers.export_so); MetaSchedule's RPCRunner uploads it through the
tracker, times it on a device and hands the time back to the search. One runner worker per device
under the key measures candidates in parallel; each candidate has a deadline (a hung device costs
one timeout, never a hung tuning run).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from graphprune.targets.registry import Target


@dataclass(frozen=True)
class RPCTuning:
    """Tune on the devices registered under `key` at the tracker `tracker` (HOST:PORT).

    timeout: seconds per candidate (wait for a device, upload, time); workers: candidates measured
    at once (default: one per device under the key); emulated: the devices are emulators, so the
    tuned schedules were chosen on emulated timings."""
    tracker: str
    key: str
    timeout: float = 60.0
    workers: int | None = None
    emulated: bool = False

    def where(self) -> str:
        return f"over RPC on key {self.key!r}" + (" (emulated device)" if self.emulated else "")


_RUNNER_CLASS = None


def _bounded_rpc_runner_class():
    """MetaSchedule's RPCRunner with a deadline per candidate.

    The stock RPCRunner submits every candidate to a PopenPoolExecutor without a timeout, so a
    device that stops answering mid-upload or mid-run blocks its worker, and the tuning run,
    forever. This subclass gives the pool the library's own per-call timeout: the popen worker
    answers TIMEOUT and is killed with its children, RPCRunnerFuture turns that into a failed
    candidate ("RPCRunner: Timeout, killed after N seconds") and tuning goes on. Arguments are
    allocated by workers.alloc_args. The stock sanity check is skipped: it only looks up function
    names in the worker, and we pass functions, not names."""
    global _RUNNER_CLASS
    if _RUNNER_CLASS is None:
        from tvm.ir.utils import derived_object
        from tvm.s_tir.meta_schedule.runner import RPCRunner
        from tvm.support.popen_pool import PopenPoolExecutor
        from graphprune.targets.tuning.workers import alloc_args

        @derived_object
        class BoundedRPCRunner(RPCRunner._cls):  # pylint: disable=protected-access
            def __init__(self, rpc_config, evaluator_config=None, max_workers: int = 1, timeout_sec: float = 60.0):
                super().__init__(rpc_config=rpc_config, evaluator_config=evaluator_config, max_workers=max_workers,
                                 f_alloc_argument=alloc_args)
                self.pool.shutdown()   # started no process yet (no sanity check)
                self.pool = PopenPoolExecutor(max_workers=max_workers, timeout=timeout_sec)

            def _sanity_check(self) -> None:
                pass
        _RUNNER_CLASS = BoundedRPCRunner
    return _RUNNER_CLASS


def rpc_runner(rpc: RPCTuning, workers: int):
    """A MetaSchedule runner that times candidates on the devices under rpc.key."""
    from tvm.s_tir.meta_schedule.runner import RPCConfig
    from graphprune.targets.measure_rpc import parse_address
    host, port = parse_address(rpc.tracker)
    config = RPCConfig(tracker_host=host, tracker_port=port, tracker_key=rpc.key,
                       session_timeout_sec=max(1, int(math.ceil(rpc.timeout))))
    return _bounded_rpc_runner_class()(config, max_workers=workers, timeout_sec=rpc.timeout)


def tuning_target(target: Target, rpc: RPCTuning | None):
    """The TVM target candidates are generated for. MetaSchedule needs num-cores on CPU targets
    (it sizes parallel loops with it); for a device it is the device's thread count, asked over
    RPC, unless the target's JSON states it."""
    if rpc is None or target.kind != "llvm" or "num-cores" in target.tvm:
        return target.tvm_target()
    from graphprune.targets.measure_rpc import device_num_threads
    return target.tvm_target(num_cores=device_num_threads(rpc.tracker, rpc.key, timeout=rpc.timeout))
