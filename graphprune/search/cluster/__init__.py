"""Scaling optimize out: candidate evaluations on a Dask cluster, latency on a device farm.

`--cluster tcp://HOST:PORT` runs the evaluation jobs (rewrite, quality on the data, BN
recalibration) and recovery's fine-tunes (cluster.recovery_jobs) on a running Dask distributed cluster instead of this host's process pool
(`--workers N`, the one-machine path; both at once are refused). Why Dask: its Client has
concurrent.futures' submit() -> Future, which is the executor interface the search already
uses; the scheduler re-runs the tasks of a worker that dies on another worker; workers can
advertise resources (a GPU) for tasks that need them; and it is a pure-Python install of a
few MB (Ray ships a C++ runtime and its own object store). See docs/scaling.md.

What stays on the driver (this process), whatever the cluster does: the optimizer's ask/tell,
the surrogate, the journal (the only source of truth: a record is fsync'd before the next
candidate is told) and the latency measurements. A lost worker costs its task a rerun
elsewhere (Dask's own retry); a killed driver loses nothing measured (`--resume`).

How many candidates are in flight (the optimizer's batch, `Search(workers=...)`): `--workers`,
or the cluster's worker threads when it is connected, or the devices under the RPC key when
there are more of them (each candidate's latency is timed on its own device, all at once).
A resume reuses the batch its journal was written with, so it walks the same path on a
cluster or farm of another size.
"""
from __future__ import annotations

import json
import re
import uuid

from graphprune.errors import GraphpruneError

CONNECT_TIMEOUT_S = 10.0
PLUGIN_PREFIX = "graphprune-run:"   # + the owning client's id + ":" + a run token
_ADDRESS = re.compile(r"^(?:(tcp|tls|ws|wss|inproc)://)?([^\s:/]+|\[[0-9a-fA-F:]+\]):(\d{1,5})$")


def parse_cluster_address(text: str) -> str:
    """`tcp://HOST:PORT` (or HOST:PORT, read as tcp) -> the scheduler address; one line otherwise."""
    m = _ADDRESS.match(str(text).strip())
    if not m or not 0 < int(m.group(3)) < 65536:
        raise GraphpruneError(f"--cluster: expected a Dask scheduler address such as tcp://10.0.0.2:8786, got {text!r}")
    return f"{m.group(1) or 'tcp'}://{m.group(2)}:{m.group(3)}"


def connect(address: str, timeout: float | None = None):
    """A distributed.Client on the scheduler at `address` with at least one worker; one-line
    errors when distributed is not installed, the scheduler does not answer, or has no worker."""
    addr = parse_cluster_address(address)
    timeout = CONNECT_TIMEOUT_S if timeout is None else timeout
    try:
        import distributed
    except ImportError:
        raise GraphpruneError("--cluster needs Dask distributed, which is not installed: "
                              "pip install 'graphprune[cluster]' (or 'dask[distributed]')") from None
    try:
        client = distributed.Client(addr, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise GraphpruneError(f"--cluster: no Dask scheduler answered at {addr} within {timeout:g} s "
                              f"({type(exc).__name__})") from None
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (OSError, TimeoutError):
        client.close()
        raise GraphpruneError(f"--cluster: the Dask scheduler at {addr} has no worker (waited {timeout:g} s)") from None
    return client


def drop_orphaned_plugins(client) -> None:
    """Unregister the run-state plugins of drivers that are gone. The scheduler keeps a worker
    plugin after its client disconnects, so a driver killed with -9 would leave its model and
    data parked on every worker until they restart; each plugin is named after its client."""
    def scan(dask_scheduler=None):
        return list(dask_scheduler.clients), [n for n in dask_scheduler.worker_plugins if n.startswith(PLUGIN_PREFIX)]
    try:
        clients, names = client.run_on_scheduler(scan)
    except Exception:  # noqa: BLE001 - an older or restricted scheduler: nothing is cleaned, nothing breaks
        return
    for name in names:
        if name[len(PLUGIN_PREFIX):].rsplit(":", 1)[0] not in clients:
            try:
                client.unregister_worker_plugin(name)
            except Exception:  # noqa: BLE001 - removed meanwhile by another driver
                pass


def is_dask_client(obj) -> bool:
    return type(obj).__name__ == "Client" and type(obj).__module__.startswith("distributed")


class ClusterExecutor:
    """concurrent.futures-style executor on a distributed.Client; the run's state (initializer
    and its arguments) is shipped once per worker by a worker plugin (cluster.worker)."""

    def __init__(self, client, initializer=None, initargs=(), own_client: bool = False):
        from graphprune.search.cluster.worker import RunStatePlugin
        self.client, self.own_client = client, own_client
        drop_orphaned_plugins(client)
        self.token = f"{PLUGIN_PREFIX}{client.id}:{uuid.uuid4().hex[:8]}"
        client.register_plugin(RunStatePlugin(self.token, initializer, initargs), name=self.token)

    def submit(self, fn, *args, **kwargs):
        from graphprune.search.cluster.worker import run_job
        return ClusterJob(self.client.submit(run_job, self.token, fn, args, kwargs, pure=False))

    def slots(self) -> int:
        return max(1, sum(self.client.nthreads().values()))

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        if self.client.status == "running":
            try:
                self.client.unregister_worker_plugin(self.token)
            except Exception:  # noqa: BLE001 - the scheduler may be gone already; nothing to clean there
                pass
            if self.own_client:
                self.client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()


class ClusterJob:
    """A Dask future whose cluster failures read as one line: the scheduler gone, a job that
    killed its workers too often (KilledWorker), a cancelled job. The job's own exceptions
    (a GraphpruneError, a bug) come through unchanged, as from the process pool."""

    def __init__(self, future):
        self.future = future

    def result(self, timeout=None):
        from concurrent.futures import CancelledError
        try:
            return self.future.result(timeout)
        except GraphpruneError:
            raise
        except Exception as exc:
            if not (isinstance(exc, (CancelledError, OSError)) or type(exc).__module__.startswith("distributed")):
                raise
            text = " ".join(str(exc).split())[:200]
            raise GraphpruneError(f"--cluster: the cluster failed a candidate's evaluation ({type(exc).__name__}: "
                                  f"{text}); every candidate measured so far is in the journal: rerun with --resume"
                                  ) from None

    def done(self) -> bool:
        return self.future.done()

    def cancel(self) -> None:
        self.future.cancel()


def journal_batch(st) -> int | None:
    """The batch an existing journal was written with (--resume), from its header line."""
    from graphprune.search.outdir import JOURNAL_NAME
    path = st.out / JOURNAL_NAME
    if not st.o.resume or not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as f:
            head = json.loads(f.readline())
    except (OSError, ValueError):
        return None   # the journal's own reader reports what is wrong with it
    return head.get("batch") or head.get("workers") if isinstance(head, dict) else None


def connect_stage(st) -> None:
    """After validation, before OUTDIR: connect to the cluster, count the devices under the RPC
    key, and fix the batch (how many candidates the optimizer proposes at a time)."""
    o = st.o
    slots = None
    if getattr(o, "cluster", None):
        if o.workers != 1:
            raise GraphpruneError("--cluster and --workers exclude each other: --workers N is this host's process "
                                  "pool, --cluster evaluates on the cluster's workers")
        if st.executor is not None:
            raise GraphpruneError("give either an executor or --cluster (cluster=...), not both")
        st.cluster = connect(o.cluster)
        slots = max(1, sum(st.cluster.nthreads().values()))
        st.log(f"cluster {parse_cluster_address(o.cluster)}: {len(st.cluster.nthreads())} worker(s), "
               f"{slots} thread(s)")
    elif is_dask_client(st.executor):
        slots = max(1, sum(st.executor.nthreads().values()))
    st.latency_slots = device_slots(st)
    batch = max(slots or o.workers, st.latency_slots)
    st.batch = journal_batch(st) or batch
    if st.batch != o.workers:
        st.log(f"{st.batch} candidates proposed at a time"
               + (f" ({st.latency_slots} devices under the key time them at once)" if st.latency_slots > 1 else ""))


def device_slots(st) -> int:
    """Devices under the RPC key that can time candidates at once (onnxruntime or TVM over RPC;
    a TVM candidate is compiled in this process first, one compile at a time, and timed on its
    device while the next one compiles); 1 without a tracker."""
    spec = st.spec
    if not spec.rpc_tracker:
        return 1
    from graphprune.targets.measure_rpc import check_key
    from graphprune.targets import get_target
    key = spec.rpc_key or get_target(spec.target, [spec.targets_file] if spec.targets_file else None).rpc_key
    return max(1, check_key(spec.rpc_tracker, key, timeout=10.0))


def make_cluster_executor(st, initializer, initargs):
    """The executor start_executor uses: on st.cluster (this run's client, closed with the run),
    or around a distributed.Client the caller passed (left open)."""
    if st.cluster is not None:
        return ClusterExecutor(st.cluster, initializer, initargs, own_client=True)
    return ClusterExecutor(st.executor, initializer, initargs, own_client=False)
