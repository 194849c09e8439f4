"""A throw-away Dask cluster on 127.0.0.1: a `dask scheduler` and `dask worker` processes.

For the tests and tools/bench_scaling.py: real separate processes speaking TCP, as on a
cluster, not distributed.LocalCluster's in-process threads. Each process starts in its own
session, so stopping (or killing one worker, as a test of a lost worker does) takes its whole
process group: the worker's nanny and the worker it runs go together.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from graphprune.errors import GraphpruneError
from graphprune.targets.localrpc import free_port


class LocalDaskCluster:
    """Context manager: scheduler + `n_workers` worker processes of `threads` threads each."""

    def __init__(self, n_workers: int = 2, threads: int = 1, env: dict | None = None, start_timeout: float = 60.0,
                 log_dir: str | None = None):
        self.n_workers, self.threads, self.env, self.start_timeout = n_workers, threads, env, start_timeout
        self.log_dir = log_dir
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.scheduler: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []

    def _spawn(self, module: str, args: list[str], name: str) -> subprocess.Popen:
        out = open(os.path.join(self.log_dir, f"{name}.log"), "w") if self.log_dir else subprocess.DEVNULL
        try:
            return subprocess.Popen([sys.executable, "-m", module, *args], stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, env=self.env)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()

    def start(self) -> "LocalDaskCluster":
        self.scheduler = self._spawn("distributed.cli.dask_scheduler", ["--host", "127.0.0.1", "--port",
                                     str(self.port), "--no-dashboard"], "scheduler")
        for _ in range(self.n_workers):
            self.add_worker()
        self.wait_for(self.n_workers)
        return self

    def add_worker(self) -> subprocess.Popen:
        p = self._spawn("distributed.cli.dask_worker", [self.address, "--host", "127.0.0.1", "--nthreads",
                        str(self.threads), "--nworkers", "1", "--no-dashboard"], f"worker{len(self.workers)}")
        self.workers.append(p)
        return p

    def wait_for(self, n: int) -> None:
        from distributed import Client
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.scheduler.poll() is not None:
                self.stop()
                raise GraphpruneError(f"dask scheduler exited with code {self.scheduler.returncode}")
            try:
                with Client(self.address, timeout=5, set_as_default=False) as c:
                    c.wait_for_workers(n, timeout=max(1.0, deadline - time.monotonic()))
                    return
            except (OSError, TimeoutError):
                time.sleep(0.3)
        self.stop()
        raise GraphpruneError(f"local dask cluster did not reach {n} workers within {self.start_timeout:g} s")

    def kill_worker(self, i: int) -> None:
        """SIGKILL worker i's whole process group (nanny and worker): a machine that is gone."""
        try:
            os.killpg(self.workers[i].pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.workers[i].wait(timeout=10)

    def stop(self) -> None:
        for p in [*self.workers, self.scheduler]:
            if p is None:
                continue
            try:
                os.killpg(p.pid, signal.SIGKILL)   # a nanny's graceful close takes seconds per worker
            except ProcessLookupError:
                pass
            p.wait(timeout=10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
