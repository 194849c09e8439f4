"""optimize --cluster on a real local Dask cluster: a scheduler and two worker processes
(separate processes speaking TCP on 127.0.0.1, started and killed by the tests).

The cluster run must walk the serial run's path exactly (same seed, same batch: the front,
every record's error and counts), ship the run's state once per worker, and lose nothing
when a worker is killed mid-search. Latencies come from the measurement cache the serial
run filled (same graphs, same hashes), so the comparison is exact, not within noise.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("distributed")

import graphprune.cli as cli  # noqa: E402
from graphprune.errors import GraphpruneError  # noqa: E402
from graphprune.search import cluster as gc  # noqa: E402
from graphprune.search.cluster.local import LocalDaskCluster  # noqa: E402
from graphprune.search.executor import SerialExecutor  # noqa: E402
from graphprune.search.optimize import OptimizeOptions, run_optimize  # noqa: E402
from graphprune.targets.localrpc import free_port  # noqa: E402

from test_search_common import write_case  # noqa: E402

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    logs = tmp_path_factory.mktemp("dask-logs")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    c = LocalDaskCluster(n_workers=2, threads=1, env=env, log_dir=str(logs)).start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("case")
    cache = tmp / "latency-cache"   # shared by the serial and the cluster runs: identical graphs hit it
    os.environ["GRAPHPRUNE_CACHE"] = str(cache)
    mp, dp = write_case(tmp, n=64)
    serial = opts(mp, dp, tmp / "serial", workers=2)   # batch 2, as the 2-worker cluster's
    s = run_optimize(serial, executor=SerialExecutor(), log=lambda m: None)
    yield mp, dp, tmp, s
    os.environ.pop("GRAPHPRUNE_CACHE", None)


def opts(mp, dp, out, **kw) -> OptimizeOptions:
    base = dict(budget=8, repeats=3, channel_step=4, holdout=2, progress=False, max_error_increase=0.4, threads=1,
                seed=3)
    return OptimizeOptions(model=str(mp), data=str(dp), outdir=str(out), **{**base, **kw})


def records(out: Path) -> list[dict]:
    lines = (out / "journal.jsonl").read_text().splitlines()
    return [json.loads(ln) for ln in lines[1:]]


def path_of(out: Path) -> dict:
    """What a run measured, keyed by configuration: (phase, error, macs, latency)."""
    return {r["key"]: (r["phase"], r["error"], r["macs"], r["latency_ms"]) for r in records(out)}


def front_of(s: dict) -> list:
    return [(r["key"], r["error"], r["latency_ms"]) for r in s["front"]]


def test_cluster_run_is_the_serial_run(dask_cluster, case):
    """Same seed, same batch: the cluster walks the serial run's path, every candidate's error
    computed on the workers equals the serial one bit for bit, and the front is the same. Each
    worker loaded the run's state once, whatever number of jobs it ran."""
    from distributed import Client
    from graphprune.search.cluster.worker import worker_counts
    mp, dp, tmp, serial = case
    out = tmp / "on-cluster"
    s = run_optimize(opts(mp, dp, out, cluster=dask_cluster.address), log=lambda m: None)
    assert front_of(s) == front_of(serial) and s["chosen"]["key"] == serial["chosen"]["key"]
    assert path_of(out) == path_of(tmp / "serial")
    head = json.loads((out / "journal.jsonl").read_text().splitlines()[0])
    assert head["workers"] == 1 and head["batch"] == 2
    with Client(dask_cluster.address, set_as_default=False) as c:
        counts = c.run(worker_counts)
        assert len(counts) == 2
        assert [v["loads"] for v in counts.values()] == [1, 1], counts
        assert sum(v["jobs"] for v in counts.values()) == len(records(out))   # one job per record, none repeated
        assert c.run(lambda: sorted(__import__("graphprune.search.cluster.worker").search.cluster.worker
                                    ._PARKED)) == {a: [] for a in counts}   # the run's plugin was removed


def test_recovery_tries_fine_tune_on_the_cluster(dask_cluster, case):
    """--epochs with --recovery-slack on the cluster: the tries are fine-tuned on the workers, all
    at once, and the driver applies the sequential rule to them: the same delivery, reason and
    recovered accuracy as fine-tuning them one by one in this process."""
    from distributed import Client
    from graphprune.search.cluster.worker import worker_counts
    mp, dp, tmp, _ = case
    rec = dict(epochs=1.0, recovery_slack=0.3, recovery_tries=2, finetune_steps=1, max_error_increase=0.05,
               objectives="macs,error",   # a choice that does not hang on 0.04 ms timings of a tiny model
               budget=4)
    with Client(dask_cluster.address, set_as_default=False) as c:
        jobs_before = sum(v["jobs"] for v in c.run(worker_counts).values())
    serial = run_optimize(opts(mp, dp, tmp / "rec-serial", **{**rec, "workers": 2}), executor=SerialExecutor(),
                          log=lambda m: None)
    lines = []
    s = run_optimize(opts(mp, dp, tmp / "rec-cluster", cluster=dask_cluster.address, **rec), log=lines.append)
    assert any("fine-tune(s) started at once on the cluster" in ln for ln in lines), "\n".join(lines)
    assert s["delivered"] == serial["delivered"] and s["choice_reason"] == serial["choice_reason"]
    for k in ("recovery", "recovery_rejected"):   # whichever the rule gave, it gave it on both
        assert (s.get(k) or {}).get("accuracy_after") == (serial.get(k) or {}).get("accuracy_after"), (k, s.get(k))
    assert "recovered best score first" in s["choice_reason"] or "recovery-aware" in s["choice_reason"]
    assert " % -> " in s["choice_reason"], s["choice_reason"]   # tries were fine-tuned: accuracy before -> after
    with Client(dask_cluster.address, set_as_default=False) as c:
        jobs = sum(v["jobs"] for v in c.run(worker_counts).values()) - jobs_before
    evaluated = [r for r in records(tmp / "rec-cluster") if r["type"] == "measured"]
    started = next(ln for ln in lines if "started at once" in ln)
    assert jobs == len(evaluated) + int(started.split()[1])   # every evaluation and every fine-tune ran there


def test_callers_own_client_as_the_executor(dask_cluster, case):
    """run_optimize(o, executor=distributed.Client): the run's state is shipped to the workers for
    the caller, the path is the serial run's, and the caller's client is left open."""
    from distributed import Client
    mp, dp, tmp, serial = case
    out = tmp / "own-client"
    with Client(dask_cluster.address, set_as_default=False) as c:
        s = run_optimize(opts(mp, dp, out), executor=c, log=lambda m: None)
        assert c.status == "running"
        assert path_of(out) == path_of(tmp / "serial") and front_of(s) == front_of(serial)
        with pytest.raises(GraphpruneError, match="give either an executor or --cluster"):
            run_optimize(opts(mp, dp, tmp / "both", cluster=dask_cluster.address), executor=c, log=lambda m: None)


def test_killed_driver_resumes_on_the_cluster(dask_cluster, case):
    """The driver (graphprune optimize --cluster) killed with SIGKILL mid-search: every candidate
    in its journal stays measured; --resume on the cluster measures only the rest and walks the
    serial run's path. The killed driver's run state is removed from the workers on reconnect."""
    import signal
    import subprocess
    from distributed import Client
    mp, dp, tmp, serial = case
    out = tmp / "driver-killed"
    argv = [sys.executable, "-m", "graphprune", "optimize", str(mp), "--data", str(dp), "-o", str(out),
            "--budget", "8", "--repeats", "3", "--channel-step", "4", "--holdout", "2", "--max-error-increase", "0.4",
            "--threads", "1", "--seed", "3", "--no-progress", "--cluster", dask_cluster.address]
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "GRAPHPRUNE_CACHE": os.environ["GRAPHPRUNE_CACHE"]})
    journal = out / "journal.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and p.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 9:
            break
        time.sleep(0.02)
    assert p.poll() is None, p.stderr.read()
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=10)
    before = records(out)
    assert 8 <= len(before) < len(path_of(tmp / "serial"))
    with Client(dask_cluster.address, set_as_default=False) as c:   # the dead driver's plugin is still parked
        assert any(c.run(lambda: bool(__import__("graphprune.search.cluster.worker").search.cluster.worker
                                      ._PARKED)).values())
    s = run_optimize(opts(mp, dp, out, cluster=dask_cluster.address, resume=True), log=lambda m: None)
    after = records(out)
    assert after[:len(before)] == before   # nothing measured before the kill was measured again
    assert path_of(out) == path_of(tmp / "serial") and front_of(s) == front_of(serial)
    with Client(dask_cluster.address, set_as_default=False) as c:
        assert not any(c.run(lambda: bool(__import__("graphprune.search.cluster.worker").search.cluster.worker
                                          ._PARKED)).values())


def test_killed_worker_loses_nothing(dask_cluster, case, monkeypatch):
    """A worker killed (SIGKILL, nanny and all) while jobs run on it: Dask reruns its tasks on
    the other worker, the search finishes, and the journal holds exactly the serial run's
    records, each once."""
    import _slow_job
    from graphprune.search import objectives as obj
    mp, dp, tmp, serial = case
    out = tmp / "killed"
    monkeypatch.setattr(obj, "evaluate_job", _slow_job.slow_evaluate_job)   # 0.4 s a job: time to kill mid-run
    killed = {}

    def killer():
        journal = out / "journal.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if journal.exists() and len(journal.read_text().splitlines()) >= 6:
                dask_cluster.kill_worker(0)
                killed["after"] = len(journal.read_text().splitlines()) - 1
                return
            time.sleep(0.05)
    t = threading.Thread(target=killer, daemon=True)
    t.start()
    s = run_optimize(opts(mp, dp, out, cluster=dask_cluster.address), log=lambda m: None)
    t.join(5)
    recs = records(out)
    assert killed and killed["after"] < len(recs), (killed, len(recs))
    assert len({r["key"] for r in recs}) == len(recs)
    assert path_of(out) == path_of(tmp / "serial") and front_of(s) == front_of(serial)
    from distributed import Client
    with Client(dask_cluster.address, set_as_default=False) as c:
        assert len(c.nthreads()) == 1   # the killed worker is gone, not restarted by its nanny


def test_cluster_errors_are_one_line(case, capsys, monkeypatch):
    """A malformed or silent address, --cluster with --workers, distributed missing: one line, exit 2."""
    mp, dp, tmp, _ = case
    base = ["optimize", str(mp), "--data", str(dp), "-o", str(tmp / "err"), "--budget", "1", "--no-progress"]
    monkeypatch.setattr(gc, "CONNECT_TIMEOUT_S", 2.0)
    for extra, msg in [(["--cluster", "nohost"], "expected a Dask scheduler address"),
                       (["--cluster", f"127.0.0.1:{free_port()}"], "no Dask scheduler answered at tcp://127.0.0.1:"),
                       (["--cluster", "tcp://127.0.0.1:1", "--workers", "2"], "--cluster and --workers exclude")]:
        assert cli.main(base + extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and msg in err, err
        assert not (tmp / "err").exists()
    monkeypatch.setitem(sys.modules, "distributed", None)   # import distributed -> ImportError
    with pytest.raises(GraphpruneError, match=r"--cluster needs Dask distributed.*graphprune\[cluster\]"):
        gc.connect("tcp://127.0.0.1:1")


def test_scheduler_lost_is_one_line(dask_cluster, case):
    """The scheduler killed mid-search (last: it ends this module's cluster): one line naming
    --resume, not a traceback; what was measured is in the journal."""
    import signal
    import _slow_job
    from graphprune.search import objectives as obj
    mp, dp, tmp, _ = case
    out = tmp / "scheduler-killed"

    def killer():
        journal = out / "journal.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if journal.exists() and len(journal.read_text().splitlines()) >= 4:
                os.killpg(dask_cluster.scheduler.pid, signal.SIGKILL)
                return
            time.sleep(0.05)
    t = threading.Thread(target=killer, daemon=True)
    mp_ = pytest.MonkeyPatch()
    mp_.setattr(obj, "evaluate_job", _slow_job.slow_evaluate_job)
    try:
        t.start()
        with pytest.raises(GraphpruneError, match=r"--cluster: the cluster failed a candidate's evaluation .*--resume"):
            run_optimize(opts(mp, dp, out, cluster=dask_cluster.address), log=lambda m: None)
    finally:
        mp_.undo()
    assert len(records(out)) >= 3
