"""A throw-away RPC tracker and servers on 127.0.0.1 (tests, tools, a quick local farm).

Each process starts in its own session (start_new_session=True), so stopping
kills the whole process group: the tracker's and servers' popen_worker and
multiprocessing children go with them and nothing outlives the cluster.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from graphprune.errors import GraphpruneError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRPCCluster:
    """Context manager: tracker + `n_servers` RPC servers registered under `key`; with
    device_server=True they are `graphprune device-server`s (TVM modules and onnxruntime)."""

    def __init__(self, key: str = "local", n_servers: int = 1, python: str | None = None,
                 server_env: dict | None = None, start_timeout: float = 60.0, device_server: bool = False,
                 tracker_env: dict | None = None):
        self.key, self.n_servers, self.start_timeout = key, n_servers, start_timeout
        self.tracker_env = tracker_env
        self.device_server = device_server
        self.python = python or sys.executable
        self.server_env = server_env
        self.procs: list[subprocess.Popen] = []
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"

    def _spawn(self, argv, env=None, python=None):
        """`python -m argv...`, or `python argv...` when argv[0] is a script path (*.py)."""
        mod = [] if argv[0].endswith(".py") else ["-m"]
        p = subprocess.Popen([python or sys.executable, *mod, *argv], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True, env=env)
        self.procs.append(p)
        return p

    def start(self) -> "LocalRPCCluster":
        self._spawn(["tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(self.port),
                     "--port-end", str(self.port + 1), "--silent"], env=self.tracker_env)
        for _ in range(self.n_servers):
            self.add_device_server() if self.device_server else self.add_server()
        self.wait_for(self.n_servers)
        return self

    def add_server(self, python: str | None = None, env: dict | None = None, key: str | None = None
                   ) -> subprocess.Popen:
        port = free_port()
        return self._spawn(["tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port),
                            "--port-end", str(port + 50), "--tracker", self.address, "--key", key or self.key],
                           env=env or self.server_env, python=python or self.python)

    def add_device_server(self, script: str | None = None, python: str | None = None,
                          env: dict | None = None, key: str | None = None) -> subprocess.Popen:
        """A device-server under the key: `graphprune device-server`, or a copy of
        targets/device_server.py run as a script (what a board without graphprune runs)."""
        port = free_port()
        head = [script] if script else ["graphprune", "device-server"]
        return self._spawn([*head, "--host", "127.0.0.1", "--port", str(port), "--port-end", str(port + 50),
                            "--tracker", self.address, "--key", key or self.key],
                           env=env or self.server_env, python=python or self.python)

    def wait_for(self, n: int, key: str | None = None) -> None:
        """Block until `n` servers are registered under the key (bounded by start_timeout)."""
        from graphprune.targets.measure_rpc import check_key
        if n <= 0:
            return
        deadline = time.monotonic() + self.start_timeout
        last = ""
        while time.monotonic() < deadline:
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                self.stop()
                raise GraphpruneError(f"RPC process exited early with code {dead[0].returncode}")
            try:
                if check_key(self.address, key or self.key, timeout=2.0) >= n:
                    return
            except GraphpruneError as exc:
                last = str(exc)
            time.sleep(0.3)
        self.stop()
        raise GraphpruneError(f"RPC cluster did not come up within {self.start_timeout:g} s ({last})")

    def stop(self) -> None:
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            try:  # the group may hold children that ignored SIGTERM
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if p.poll() is None:
                p.wait(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
