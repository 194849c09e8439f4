"""Where candidate evaluations run: anything with concurrent.futures' `submit` -> Future.

`make_executor(workers)` gives an in-process serial executor for 1 worker and a
process pool otherwise. A cluster executor (dask.distributed's Client, an MPI
pool, ...) can be passed to `run_optimize(executor=...)` instead: the jobs are
module-level functions of picklable arguments. Only error evaluation and graph
rewriting run on the executor; latency is measured afterwards, one candidate at a
time, in the calling process, so parallel jobs never share the cores being timed.

Pool workers die with their parent: a `kill -9` of optimize must not leave N idle
workers holding the model and the data (~150 MB each). On Linux the kernel sends them
SIGKILL when the parent dies (prctl PR_SET_PDEATHSIG); elsewhere, and as a second line,
a daemon thread in each worker exits it once its parent pid changes (reparenting).
"""
from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor

_PR_SET_PDEATHSIG = 1


class SerialExecutor:
    """Runs each job at submit time in this process (no pickling, exceptions in the Future)."""

    def __init__(self, initializer=None, initargs=()):
        if initializer is not None:
            initializer(*initargs)

    def submit(self, fn, *args, **kwargs) -> Future:
        f: Future = Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - delivered through the Future like a pool does
            f.set_exception(exc)
        return f

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()


def make_executor(workers: int, initializer=None, initargs=()):
    if workers < 1:
        from graphprune.errors import GraphpruneError
        raise GraphpruneError(f"--workers must be >= 1, got {workers}")
    if workers == 1:
        return SerialExecutor(initializer, initargs)
    import multiprocessing as mp
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                               initializer=_worker_start, initargs=(os.getpid(), initializer, tuple(initargs)))


def _worker_start(parent_pid: int, initializer, initargs) -> None:
    """Pool worker initializer: tie this process's life to the parent's, then the real initializer."""
    tie_to_parent(parent_pid)
    if initializer is not None:
        initializer(*initargs)


def tie_to_parent(parent_pid: int, poll_s: float = 0.5) -> None:
    """Exit this process when `parent_pid` dies: PR_SET_PDEATHSIG (Linux), and a watchdog thread
    polling os.getppid() everywhere (it also covers a parent that died before prctl ran)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass   # the watchdog below still applies
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch():
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent_pid:
                os._exit(1)
    threading.Thread(target=watch, name="graphprune-parent-watchdog", daemon=True).start()
