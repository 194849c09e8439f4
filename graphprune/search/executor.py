"""Where candidate evaluations run: anything with concurrent.futures' `submit` -> Future.

`make_executor(workers)` gives an in-process serial executor for 1 worker and a
process pool otherwise. A cluster executor (dask.distributed's Client, an MPI
pool, ...) can be passed to `run_optimize(executor=...)` instead: the jobs are
module-level functions of picklable arguments. Only error evaluation and graph
rewriting run on the executor; latency is measured afterwards, one candidate at a
time, in the calling process, so parallel jobs never share the cores being timed.
"""
from __future__ import annotations

from concurrent.futures import Future, ProcessPoolExecutor


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
                               initializer=initializer, initargs=initargs)
