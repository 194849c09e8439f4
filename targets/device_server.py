"""The device side of `graphprune device-server`: TVM's RPC server plus functions that time an
ONNX model with the device's own onnxruntime.

A board that deploys onnxruntime should be measured with onnxruntime, not with a TVM build of
the model. This module runs ON THE BOARD, so it imports only the TVM runtime, onnxruntime,
numpy and the standard library (no graphprune package, no onnx, no torch): the file can be
copied alone onto a board and started as

    python device_server.py --tracker HOST:PORT --key KEY

(or `graphprune device-server ...` where graphprune is installed). It is an ordinary TVM RPC
server (`python -m tvm.exec.rpc_server` semantics: it registers under the key, serves one
client at a time, each session in a fresh forked process killed after the client's session
timeout), so TVM modules are still timed through it; on top, these global functions exist in
every session:

  graphprune.ort.info()                  -> JSON: onnxruntime version, providers, CPU, cores
  graphprune.ort.time(model, feeds, req) -> JSON: per-run ms of `repeats` timed runs (+ info)
  graphprune.ort.run(model, feeds, req)  -> npz bytes: the outputs of one run

`model` is the .onnx file's bytes, `feeds` an .npz of the inputs in graph order, `req` a JSON
object (threads, warmup, repeats). Timing matches graphprune's local onnxruntime path
(graphprune.targets.measure_local.measure_ort): intra-op threads as requested (default: the
cores this process may use), one inter-op thread, all graph optimisations, one
time.perf_counter() interval around each session.run after the warm-up runs.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import signal
import socket
import struct
import sys
import threading
import time

PREFIX = "graphprune.ort."
PROTOCOL = 1


class DeviceServerError(Exception):
    """A request or start-up option the device refuses; its text is the one line shown."""


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _cpu_name() -> str:
    """'model name' (x86) or 'Hardware'/'Model' (ARM boards) from /proc/cpuinfo, else the machine."""
    try:
        with open("/proc/cpuinfo", errors="replace") as f:
            text = f.read()
    except OSError:
        text = ""
    for wanted in (("model name", "Model name"), ("Model", "Hardware")):
        for line in text.splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() in wanted and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def providers() -> list[str]:
    """Execution providers the sessions use: GRAPHPRUNE_ORT_PROVIDERS (comma-separated, set by
    --providers) or onnxruntime's CPU provider."""
    text = os.environ.get("GRAPHPRUNE_ORT_PROVIDERS", "")
    return [p.strip() for p in text.split(",") if p.strip()] or ["CPUExecutionProvider"]


def info() -> dict:
    """Who measures: the identity every result from this device carries."""
    import onnxruntime as ort
    return {"protocol": PROTOCOL, "onnxruntime": ort.__version__, "providers": providers(),
            "available_providers": list(ort.get_available_providers()), "cpu": _cpu_name(),
            "machine": platform.machine(), "cores": _cores(), "hostname": platform.node(),
            "python": platform.python_version(), "pid": os.getpid(), "server_pid": os.getppid()}


def _threads(req: dict) -> int:
    """The intra-op thread count: the request's, else this device's cores; at most 4x the cores
    (more only oversubscribes them; a huge number would hang creating the pool)."""
    n = req.get("threads")
    if n is None:
        return _cores()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DeviceServerError(f"threads must be a positive integer (got {n!r})")
    if n > 4 * _cores():
        raise DeviceServerError(f"threads {n} is more than 4x the {_cores()} cores of this device "
                                f"(at most {4 * _cores()})")
    return n


def _session(model: bytes, threads: int):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(bytes(model), so, providers=providers())
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise DeviceServerError(f"onnxruntime on the device cannot load this model: {msg}") from None


def _feeds(sess, blob: bytes) -> dict:
    """The .npz arrays (arr_0, arr_1, ... in the session's input order) as a feed dict."""
    import numpy as np
    with np.load(io.BytesIO(bytes(blob)), allow_pickle=False) as z:
        arrays = [z[f"arr_{i}"] for i in range(len(z.files))]
    names = [i.name for i in sess.get_inputs()]
    if len(arrays) != len(names):
        raise DeviceServerError(f"the model takes {len(names)} input(s), the request sent {len(arrays)}")
    return dict(zip(names, arrays))


def _request(text: str) -> dict:
    try:
        req = json.loads(str(text))
    except ValueError:
        raise DeviceServerError("malformed request (not JSON)") from None
    if not isinstance(req, dict):
        raise DeviceServerError("malformed request (not a JSON object)")
    return req


def _count(req: dict, name: str, default: int, low: int) -> int:
    v = req.get(name, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise DeviceServerError(f"{name} must be an integer >= {low} (got {v!r})")
    return v


def timed_runs(sess, feeds: dict, warmup: int, repeats: int) -> list[float]:
    """`warmup` untimed runs, then the ms of each of `repeats` runs timed one by one: the one
    timing loop of onnxruntime on this host (targets.measure_local) and on a device."""
    for _ in range(warmup):
        sess.run(None, feeds)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def time_model(model: bytes, feeds: bytes, request: str) -> str:
    """Warm up, then time `repeats` runs one by one; JSON with the per-run ms, or {"error": ...}
    for a request the device refuses (so the client reports it once instead of retrying)."""
    try:
        req = _request(request)
        threads = _threads(req)
        warmup, repeats = _count(req, "warmup", 5, 0), _count(req, "repeats", 50, 1)
        sess = _session(model, threads)
        fd = _feeds(sess, feeds)
        started = time.time()
        samples = timed_runs(sess, fd, warmup, repeats)
        return json.dumps({"samples_ms": samples, "threads": threads, "device": info(),
                           "started": started, "finished": time.time()})
    except DeviceServerError as exc:
        return json.dumps({"error": str(exc)})
    except Exception as exc:  # onnxruntime failing at run time (bad feed, kernel error)
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        return json.dumps({"error": f"onnxruntime on the device failed: {type(exc).__name__}: "
                                    f"{lines[0][:300] if lines else ''}"})


def run_model(model: bytes, feeds: bytes, request: str) -> bytes:
    """One run's outputs as .npz (arr_0, arr_1, ... in graph output order); refusals raise, and
    the client shows the last line."""
    import numpy as np
    req = _request(request)
    sess = _session(model, _threads(req))
    outs = sess.run(None, _feeds(sess, feeds))
    buf = io.BytesIO()
    np.savez(buf, *[np.asarray(o) for o in outs])
    return buf.getvalue()


def info_json() -> str:
    return json.dumps(info())


def register() -> None:
    """Register the functions as TVM global functions (runs in the RPC server's worker process,
    before any session is forked from it)."""
    import tvm_ffi
    tvm_ffi.register_global_func(PREFIX + "info", info_json, override=True)
    tvm_ffi.register_global_func(PREFIX + "time", time_model, override=True)
    tvm_ffi.register_global_func(PREFIX + "run", run_model, override=True)


def _check_tracker(tracker: str, wait: float = 60.0) -> tuple[str, int]:
    """The tracker as (host, port), refused (one line) when malformed, not answering as a TVM
    tracker, or unreachable for `wait` seconds (a board may boot before the tracker, so a refused
    connection is retried, as TVM's server does; but TVM would retry in a background thread
    and then serve nobody, silently)."""
    host, sep, port = str(tracker).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DeviceServerError(f"malformed tracker address {tracker!r}: expected HOST:PORT, e.g. 10.0.0.2:9190")
    host = host.strip("[]")
    deadline = time.monotonic() + wait
    while True:
        try:
            s = socket.create_connection((host, int(port)), timeout=10.0)
            break
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise DeviceServerError(f"cannot reach RPC tracker at {tracker} within {wait:g} s "
                                        f"({exc.strerror or type(exc).__name__})") from None
            time.sleep(0.5)
    from tvm.rpc import base   # after the cheap checks: importing TVM takes seconds on a board
    try:
        with s:
            s.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            magic = struct.unpack("<i", base.recvall(s, 4))[0]
    except Exception:
        magic = None
    if magic != base.RPC_TRACKER_MAGIC:
        raise DeviceServerError(f"{tracker} did not answer as a TVM RPC tracker")
    return host, int(port)


def start(tracker: str, key: str, host: str = "0.0.0.0", port: int = 9090, port_end: int | None = None,
          custom_addr: str | None = None, provider_list: list[str] | None = None, silent: bool = True,
          tracker_wait: float = 60.0):
    """Start the server (returns TVM's rpc.Server; `.proc.join()` waits on it). Checks here what
    would otherwise fail inside the server's background thread: key, ports, tracker, onnxruntime."""
    if not key or any(c.isspace() or c == ":" for c in key):
        raise DeviceServerError(f"--key must be a non-empty name without spaces or ':' (got {key!r})")
    port_end = min(port + 109, 65536) if port_end is None else port_end
    if not (0 < port < 65536 and port < port_end <= 65536):
        raise DeviceServerError(f"--port {port} / --port-end {port_end}: need 0 < port < port-end <= 65536")
    if not tracker_wait >= 0:   # NaN too: it would wait forever
        raise DeviceServerError(f"--tracker-wait must be >= 0 seconds (got {tracker_wait:g})")
    addr = _check_tracker(tracker, tracker_wait)
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise DeviceServerError(f"onnxruntime is not importable on this device ({exc})") from None
    if provider_list:
        missing = [p for p in provider_list if p not in ort.get_available_providers()]
        if missing:
            raise DeviceServerError(f"onnxruntime here has no {', '.join(missing)} (available: "
                                    f"{', '.join(ort.get_available_providers())})")
        os.environ["GRAPHPRUNE_ORT_PROVIDERS"] = ",".join(provider_list)  # inherited by the server's worker
    from tvm import rpc
    try:
        return rpc.Server(host, port, port_end, key=key, tracker_addr=addr, custom_addr=custom_addr,
                          silent=silent, server_init_callback=register)
    except Exception as exc:   # raised in TVM's worker process: no free port, an address not of this host
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        raise DeviceServerError(f"cannot start the RPC server on {host}:{port}-{port_end - 1}: "
                                f"{lines[-1][:200] if lines else type(exc).__name__}") from None


def serve(tracker: str, key: str, host: str = "0.0.0.0", port: int = 9090, port_end: int | None = None,
          custom_addr: str | None = None, provider_list: list[str] | None = None, silent: bool = True,
          tracker_wait: float = 60.0) -> None:
    """Start and block until the server process ends (Ctrl-C or a signal stops it)."""
    server = start(tracker, key, host, port, port_end, custom_addr, provider_list, silent, tracker_wait)
    d = info()
    print(f"graphprune device-server: key {key!r} at tracker {tracker}, serving on {host}:{server.port}; "
          f"onnxruntime {d['onnxruntime']} [{', '.join(d['providers'])}] on {d['cpu']} "
          f"({d['machine']}, {d['cores']} cores)", flush=True)
    if threading.current_thread() is threading.main_thread():   # SIGTERM/SIGHUP: stop the worker too
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _exit_on_signal)
    try:
        server.proc.join()
    finally:
        _terminate(server)


def _exit_on_signal(signum, frame):
    raise SystemExit(0)


def _terminate(server) -> None:
    """Stop TVM's server worker (it would otherwise go on serving, orphaned, after this process
    ends). TVM's terminate kills the worker's children with psutil, which a board may lack: the
    worker itself is then killed directly."""
    proc = getattr(server.proc, "_proc", None)
    try:
        server.terminate()
    except Exception:
        if proc is not None and proc.poll() is None:
            proc.kill()


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options, shared by `graphprune device-server` and this file run as a script."""
    p.add_argument("--tracker", required=True, metavar="HOST:PORT", help="the RPC tracker to register with")
    p.add_argument("--key", required=True, help="device key clients ask the tracker for (--rpc-key)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default all)")
    p.add_argument("--port", type=int, default=9090, help="first port to try (default 9090)")
    p.add_argument("--port-end", type=int, default=None,
                   help="end (exclusive) of the port range tried (default --port + 109: 9090-9198)")
    p.add_argument("--custom-addr", metavar="IP", help="address to report to the tracker (behind NAT)")
    p.add_argument("--providers", metavar="NAMES",
                   help="onnxruntime execution providers, comma-separated (default CPUExecutionProvider)")
    p.add_argument("--tracker-wait", type=float, default=60.0, metavar="S",
                   help="seconds to wait for the tracker to answer at start-up (default 60)")
    p.add_argument("--verbose", action="store_true", help="log TVM's per-session messages")


def run_from_args(args: argparse.Namespace) -> None:
    provs = [s.strip() for s in args.providers.split(",") if s.strip()] if args.providers else None
    serve(args.tracker, args.key, args.host, args.port, args.port_end, args.custom_addr, provs,
          silent=not args.verbose, tracker_wait=args.tracker_wait)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="device_server.py", description="TVM RPC server that also times ONNX "
                                "models with this device's onnxruntime (graphprune).")
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        run_from_args(args)
    except DeviceServerError as exc:
        print(f"device_server: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
