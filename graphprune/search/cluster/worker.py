"""The worker side of `optimize --cluster`: run state shipped once per Dask worker.

A run registers one `RunStatePlugin` with the scheduler. The scheduler keeps it and hands it
to every worker that is or later joins the cluster (a worker restarted after a crash too), so
the model, the data and the original's outputs travel once per worker, not once per candidate.
The plugin only parks the initializer and its arguments; the first job of that run on a worker
calls it (loading the model, analysing it, reading the data), so registering costs the workers
nothing until they are used.

graphprune's evaluation state (graphprune.search.objectives._STATE) is one per process. A
worker process runs one job at a time (a lock), and a job of another run first reloads that
run's state: two runs sharing a cluster are then correct, only slower. Give workers one
thread each (`dask worker --nthreads 1 --nworkers K`): onnxruntime inside a job uses the cores.

Imports distributed at module level (the plugin's base class): import it only once a cluster
is known to be reachable (graphprune.search.cluster does).
"""
from __future__ import annotations

import threading

from distributed.diagnostics.plugin import WorkerPlugin

_LOCK = threading.Lock()
_PARKED: dict[str, tuple] = {}   # run token -> (initializer, initargs), placed by the plugin
_LOADED = {"token": None, "loads": 0, "jobs": 0}


class RunStatePlugin(WorkerPlugin):
    """Carries one run's initializer and its arguments (model bytes, data) to every worker."""

    def __init__(self, token: str, initializer, initargs: tuple):
        self.token, self.initializer, self.initargs = token, initializer, tuple(initargs)

    def setup(self, worker) -> None:
        _PARKED[self.token] = (self.initializer, self.initargs)

    def teardown(self, worker) -> None:
        _PARKED.pop(self.token, None)


def run_job(token: str, fn, args: tuple, kwargs: dict):
    """One job of run `token` on this worker: load that run's state if this process does not
    hold it yet (once per worker and run), then fn(*args, **kwargs)."""
    with _LOCK:
        if _LOADED["token"] != token:
            if token not in _PARKED:
                from graphprune.errors import GraphpruneError
                raise GraphpruneError("this Dask worker has no graphprune run state (its plugin was removed: "
                                      "the run that submitted the job has ended)")
            initializer, initargs = _PARKED[token]
            _LOADED["token"] = None
            if initializer is not None:
                initializer(*initargs)
            _LOADED["token"] = token
            _LOADED["loads"] += 1
        _LOADED["jobs"] += 1
        return fn(*args, **kwargs)


def worker_counts() -> dict:
    """How often this worker process loaded a run's state, and how many jobs it ran (tests, the
    scaling note): with the state shipped once per worker, loads stays 1 per run."""
    return {"loads": _LOADED["loads"], "jobs": _LOADED["jobs"]}
