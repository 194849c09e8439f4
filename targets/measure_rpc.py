"""Latency on remote devices through a TVM RPC tracker.

The stock TrackerSession retries an unreachable tracker for 60 s and blocks
forever on a key that has no free device, so the tracker protocol is spoken
here directly over a socket with timeouts. Each attempt (request a device,
upload the library, time it) runs in a daemon thread with a deadline: a device
that disappears or hangs costs one timeout, then the next attempt asks the
tracker again (another device under the key when there is one). Several
candidates can be measured at once with measure_many: each holds its own
device, so N boards under one key work in parallel.
"""
from __future__ import annotations

import socket
import struct
import tempfile
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from graphprune.errors import GraphpruneError
from graphprune.targets.result import LatencyResult, stats


def parse_address(addr: str) -> tuple[str, int]:
    host, sep, port = str(addr).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise GraphpruneError(f"malformed tracker address {addr!r}: expected HOST:PORT, e.g. 127.0.0.1:9190")
    return host.strip("[]"), int(port)


class _Tracker:
    """Minimal tracker client: connect, summary, request, all with socket timeouts."""

    def __init__(self, addr: str, timeout: float):
        from tvm.rpc import base
        self.base = base
        self.addr = addr
        host, port = parse_address(addr)
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
            self.sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            magic = struct.unpack("<i", base.recvall(self.sock, 4))[0]
        except (OSError, socket.timeout) as exc:
            raise GraphpruneError(f"cannot reach RPC tracker at {addr} ({exc.strerror or type(exc).__name__})") from None
        except Exception as exc:
            raise GraphpruneError(f"{addr} did not answer as an RPC tracker ({type(exc).__name__})") from None
        if magic != base.RPC_TRACKER_MAGIC:
            self.sock.close()
            raise GraphpruneError(f"{addr} is not a TVM RPC tracker")

    def _call(self, msg):
        try:
            self.base.sendjson(self.sock, msg)
            value = self.base.recvjson(self.sock)
        except socket.timeout:
            raise TimeoutError from None
        if value[0] != self.base.TrackerCode.SUCCESS:
            raise GraphpruneError(f"tracker {self.addr} refused {msg[0]}: {value}")
        return value[1]

    def devices(self, key: str) -> int:
        info = self._call([self.base.TrackerCode.SUMMARY])
        return sum(1 for s in info.get("server_info", []) if s.get("key", "").split(":", 1)[-1] == key)

    def request(self, key: str, timeout: float):
        self.sock.settimeout(timeout)
        return self._call([self.base.TrackerCode.REQUEST, key, "", 0])

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def check_key(tracker_addr: str, key: str, timeout: float = 10.0) -> int:
    """Number of devices registered under `key`; a clean error when none or the tracker is unreachable."""
    t = _Tracker(tracker_addr, timeout)
    try:
        t.sock.settimeout(timeout)
        n = t.devices(key)
    except TimeoutError:
        raise GraphpruneError(f"RPC tracker at {tracker_addr} did not answer within {timeout:g} s") from None
    finally:
        t.close()
    if n == 0:
        raise GraphpruneError(f"no device is registered under key {key!r} at tracker {tracker_addr}")
    return n


def _one_line(exc: Exception) -> str:
    """An exception as one line: its type and the last non-empty line of its text (TVM errors
    carry multi-line tracebacks)."""
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[-1][:200] if lines else ''}"


def _on_one_device(tracker_addr: str, key: str, timeout: float, fn, out: dict) -> None:
    """One try: ask the tracker for a device under `key`, connect, out["value"] = fn(remote, out).
    Fills out["device"] once one is handed out, and out["error"] (one line) when the try fails;
    `fn` may mark out itself (e.g. a final refusal) and raise nothing."""
    from tvm import rpc
    t = None
    try:
        t = _Tracker(tracker_addr, timeout)
        url, port, matchkey = t.request(key, timeout)
        out["device"] = f"{url}:{port}"
        value = fn(rpc.connect(url, port, matchkey, session_timeout=int(timeout) + 1), out)
        if not out.get("final"):
            out["value"] = value
    except TimeoutError:
        out["error"] = f"no free device under key {key!r} within {timeout:g} s"
    except GraphpruneError as exc:
        out["error"] = str(exc)
    except Exception as exc:  # reported as one line by the caller
        out["error"] = _one_line(exc)
    finally:
        if t is not None:
            t.close()


def try_on_devices(tracker_addr: str, key: str, timeout: float, fn, retries: int = 2) -> tuple[dict, list[str]]:
    """Up to retries + 1 tries of fn(remote, out) (_on_one_device), each in a daemon thread
    joined with `timeout`: a device that hangs or disappears costs one timeout, then the tracker
    is asked again. Returns (out of the last try, one-line errors of the failed tries); out has
    "value" on success, or "final" when fn marked a refusal that another device would repeat."""
    errors: list[str] = []
    out: dict = {}
    for _ in range(retries + 1):
        out = {}
        th = threading.Thread(target=_on_one_device, args=(tracker_addr, key, timeout, fn, out), daemon=True)
        th.start()
        th.join(timeout)
        if "value" in out or out.get("final"):
            return out, errors
        errors.append(out.get("error") or f"device {out.get('device', '?')} did not finish within {timeout:g} s")
    return out, errors


def _time_library(lib_path: Path, feeds, repeats: int, warmup: int):
    """fn for try_on_devices: upload the library, load it, time it; (samples, runtime threads)."""
    def run(remote, _out):
        import tvm
        from tvm import relax
        from graphprune.targets.measure_local import time_vm
        name = f"gp_{uuid.uuid4().hex[:12]}.so"
        remote.upload(str(lib_path), name)
        dev = remote.cpu(0)
        vm = relax.VirtualMachine(remote.load_module(name), dev)
        samples = time_vm(vm, dev, [tvm.runtime.tensor(v, dev) for v in feeds.values()], repeats, warmup)
        try:
            threads = int(remote.get_function("runtime.NumThreads")())
        except Exception:  # a minimal runtime without it: the result says '?'
            threads = None
        remote.remove(name) if hasattr(remote, "remove") else None
        return samples, threads
    return run


def measure_rpc(compiled, model, tracker_addr: str, key: str, repeats: int = 50, warmup: int = 5,
                timeout: float = 60.0, retries: int = 2, emulated: bool = False) -> LatencyResult:
    """Export, upload and time `compiled` on a device under `key`; bounded by (retries+1)*timeout."""
    from graphprune.targets.compile import export_library
    from graphprune.targets.inputs import random_inputs
    parse_address(tracker_addr)
    check_key(tracker_addr, key, timeout=min(timeout, 10.0))
    feeds = random_inputs(model, input_shapes=compiled.input_shapes or None)
    with tempfile.TemporaryDirectory(prefix="graphprune-rpc-") as tmp:
        lib = export_library(compiled, Path(tmp) / "model.so")
        out, errors = try_on_devices(tracker_addr, key, timeout, _time_library(lib, feeds, repeats, warmup), retries)
    if "value" not in out:
        raise GraphpruneError(f"RPC measurement under key {key!r} failed {len(errors)} times; last: {errors[-1]}")
    samples, threads = out["value"]
    return stats(samples, backend="tvm", target=compiled.target.name, tuned=compiled.tuned, tuning=compiled.tuning,
                 device=f"rpc:{key}@{out.get('device', '?')}", emulated=emulated,
                 input_shapes={k: list(v.shape) for k, v in feeds.items()}, threads=threads)


def measure_many(items, tracker_addr: str, key: str, parallel: int | None = None, **kw) -> list:
    """Measure [(compiled, model), ...] concurrently, one device each (defaults to all devices under key).
    Failed items come back as GraphpruneError instances instead of raising, so one bad board
    does not lose the other results."""
    n = parallel or check_key(tracker_addr, key)

    def one(item):
        try:
            return measure_rpc(item[0], item[1], tracker_addr, key, **kw)
        except GraphpruneError as exc:
            return exc
    with ThreadPoolExecutor(max_workers=max(1, n)) as pool:
        return list(pool.map(one, items))


def on_device(tracker_addr: str, key: str, timeout: float, fn, what: str):
    """fn(remote session) on a device under `key`, in a daemon thread with a deadline: the
    result, or a one-line GraphpruneError naming `what` failed (a hung device costs `timeout`)."""
    out, errors = try_on_devices(tracker_addr, key, timeout, lambda remote, _out: fn(remote), retries=0)
    if "value" not in out:
        raise GraphpruneError(f"{what} on a device under {key!r} failed: {errors[-1]}")
    return out["value"]


def run_remote(compiled, feeds: dict, tracker_addr: str, key: str, timeout: float = 60.0) -> list:
    """Outputs of `compiled` computed on a device under `key` (checks a target's numerics on the
    real, or emulated, hardware). Bounded by `timeout`."""
    from graphprune.targets.compile import export_library
    check_key(tracker_addr, key, timeout=min(timeout, 10.0))

    def run(remote):
        import tvm
        from tvm import relax
        with tempfile.TemporaryDirectory(prefix="graphprune-rpc-") as tmp:
            lib = export_library(compiled, Path(tmp) / "model.so")
            remote.upload(str(lib), "model.so")
            dev = remote.cpu(0)
            vm = relax.VirtualMachine(remote.load_module("model.so"), dev)
            res = vm["main"](*[tvm.runtime.tensor(v, dev) for v in feeds.values()])
            return [res.numpy()] if isinstance(res, tvm.runtime.Tensor) else [r.numpy() for r in res]
    return on_device(tracker_addr, key, timeout, run, "running the model")


def device_num_threads(tracker_addr: str, key: str, timeout: float = 60.0) -> int:
    """The TVM runtime's thread count on a device under `key` (its cores, unless TVM_NUM_THREADS
    is set there): MetaSchedule sizes parallel loops for it. Bounded by `timeout`."""
    n = on_device(tracker_addr, key, timeout, lambda remote: int(remote.get_function("runtime.NumThreads")()),
                  "asking for the thread count")
    return max(1, n)
