"""A real TVM RPC tracker + servers on 127.0.0.1 for the RPC tests, and the checks that nothing
they started outlives them (shared by test_rpc.py and test_rpc_tuning.py)."""
from __future__ import annotations

import psutil
import pytest

from graphprune.targets.localrpc import LocalRPCCluster

KEY = "gp-test"


def process_tree(cluster) -> list[psutil.Process]:
    procs = []
    for p in cluster.procs:
        try:
            root = psutil.Process(p.pid)
            procs += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return procs


def assert_all_gone(procs):
    gone, alive = psutil.wait_procs(procs, timeout=10)
    alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"left running: {[p.pid for p in alive]}"


@pytest.fixture(scope="module")
def cluster():
    """Tracker + two x86 servers under KEY, one per test module; every process, children
    included, is checked gone afterwards."""
    c = LocalRPCCluster(key=KEY, n_servers=2).start()
    yield c
    tree = process_tree(c)
    c.stop()
    assert_all_gone(tree)
