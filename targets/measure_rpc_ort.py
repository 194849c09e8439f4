"""onnxruntime on tracker devices: the client side of `graphprune device-server`.

The model's bytes and its inputs (an .npz, in graph input order) go to a device under the key
in one call of a function that graphprune.targets.device_server registered there; the device
times its own onnxruntime and answers with the per-run times and who it is (onnxruntime
version, providers, CPU). The inputs follow the project's one shape rule
(graphprune.targets.inputs.random_inputs), so the device runs exactly what a local
`bench --backend ort` would.

Each attempt runs in a daemon thread with a deadline, as in measure_rpc: a device that hangs
or disappears costs one timeout, then the tracker is asked again (the hung device is not
handed out twice, since it never re-registers). A refusal by the device itself (a model its
onnxruntime cannot load, too many threads) is final and reported once, not retried.
"""
from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx

from graphprune.errors import GraphpruneError
from graphprune.targets.measure_rpc import check_key, parse_address, try_on_devices
from graphprune.targets.result import LatencyResult, stats

PREFIX = "graphprune.ort."  # graphprune.targets.device_server.PREFIX (not imported: it is the board's module)


def encode_feeds(feeds: dict[str, np.ndarray]) -> bytes:
    """Inputs in graph order as .npz bytes (arr_0, arr_1, ...): dtype and shape travel exactly."""
    buf = io.BytesIO()
    np.savez(buf, *[np.ascontiguousarray(v) for v in feeds.values()])
    return buf.getvalue()


def _call(name: str, args: tuple):
    """fn for try_on_devices: graphprune.ort.<name>(*args) on the device; a device without the
    function (a plain TVM rpc_server) marks out["final"] and out["missing"]: another device under
    the key would answer the same."""
    def run(remote, out):
        try:
            fn = remote.get_function(PREFIX + name)
        except AttributeError:
            fn = None
        if fn is None:
            out["final"] = out["missing"] = True
            return None
        return fn(*args)
    return run


def call_device(tracker_addr: str, key: str, name: str, args: tuple, timeout: float = 60.0,
                retries: int = 2) -> tuple[object, str]:
    """(value, device address) of graphprune.ort.<name>(*args) on a device under `key`;
    bounded by (retries + 1) * timeout. One-line GraphpruneError when every try failed, or at
    once when the device has not the functions (it runs TVM's plain rpc_server)."""
    parse_address(tracker_addr)
    out, errors = try_on_devices(tracker_addr, key, timeout, _call(name, args), retries)
    if "value" in out:
        return out["value"], out["device"]
    if out.get("missing"):
        raise GraphpruneError(f"the device {out.get('device', '?')} under key {key!r} cannot time onnxruntime "
                              f"(a plain TVM rpc_server): start it with `graphprune device-server --tracker "
                              f"{tracker_addr} --key {key}` (or targets/device_server.py on the board)")
    raise GraphpruneError(f"onnxruntime over RPC under key {key!r} failed {len(errors)} times; last: {errors[-1]}")


def time_on_device(model: onnx.ModelProto, feeds: dict[str, np.ndarray], tracker_addr: str, key: str,
                   repeats: int = 50, warmup: int = 5, threads: int | None = None, timeout: float = 60.0,
                   retries: int = 2) -> tuple[dict, str]:
    """The device's raw answer (samples_ms, threads, device identity, wall-clock start and end
    of its timing) and its address."""
    req = json.dumps({"threads": threads, "warmup": warmup, "repeats": repeats})
    text, dev = call_device(tracker_addr, key, "time", (model.SerializeToString(), encode_feeds(feeds), req),
                            timeout=timeout, retries=retries)
    try:
        answer = json.loads(str(text))
    except ValueError:
        raise GraphpruneError(f"device {dev} under key {key!r} sent a malformed answer") from None
    if "error" in answer:
        raise GraphpruneError(f"device {dev} under key {key!r}: {answer['error']}")
    return answer, dev


def measure_ort_rpc(model: onnx.ModelProto, tracker_addr: str, key: str, target: str = "x86", repeats: int = 50,
                    warmup: int = 5, threads: int | None = None, timeout: float = 60.0, retries: int = 2,
                    emulated: bool = False, input_shapes: dict[str, list[int]] | None = None) -> LatencyResult:
    """Latency of `model` in the onnxruntime of a device under `key`, in the same result format
    as the local onnxruntime path, plus the device's identity (device_info)."""
    from graphprune.targets.inputs import random_inputs
    check_key(tracker_addr, key, timeout=min(timeout, 10.0))
    feeds = random_inputs(model, input_shapes=input_shapes)
    answer, dev = time_on_device(model, feeds, tracker_addr, key, repeats, warmup, threads, timeout, retries)
    return stats(answer["samples_ms"], backend="ort", target=target, tuned=False,
                 tuning="onnxruntime on the device (no TVM tuning)", device=f"rpc:{key}@{dev}", emulated=emulated,
                 input_shapes={k: list(v.shape) for k, v in feeds.items()}, threads=int(answer["threads"]),
                 device_info={**answer["device"], "timed": [answer.get("started"), answer.get("finished")]})


def measure_many_ort(models, tracker_addr: str, key: str, parallel: int | None = None, **kw) -> list:
    """Time several models at once, each on its own device (a device the tracker handed out is
    held until its answer; defaults to as many at once as devices under the key). Results in
    order; a model that failed comes back as its GraphpruneError, so one bad board or model does
    not lose the others (a hung board costs its model one timeout, then another device)."""
    n = parallel or check_key(tracker_addr, key)

    def one(model):
        try:
            return measure_ort_rpc(model, tracker_addr, key, **kw)
        except GraphpruneError as exc:
            return exc
    with ThreadPoolExecutor(max_workers=max(1, n)) as pool:
        return list(pool.map(one, models))


def run_ort_remote(model: onnx.ModelProto, feeds: dict[str, np.ndarray], tracker_addr: str, key: str,
                   threads: int | None = None, timeout: float = 60.0) -> tuple[list[np.ndarray], str]:
    """The outputs of one run in the device's onnxruntime (graph output order), and the device."""
    check_key(tracker_addr, key, timeout=min(timeout, 10.0))
    req = json.dumps({"threads": threads})
    blob, dev = call_device(tracker_addr, key, "run", (model.SerializeToString(), encode_feeds(feeds), req),
                            timeout=timeout, retries=0)
    with np.load(io.BytesIO(bytes(blob)), allow_pickle=False) as z:
        return [z[f"arr_{i}"] for i in range(len(z.files))], dev


def device_info(tracker_addr: str, key: str, timeout: float = 30.0) -> dict:
    """Who a device under `key` is: onnxruntime version, providers, CPU, cores."""
    check_key(tracker_addr, key, timeout=min(timeout, 10.0))
    text, dev = call_device(tracker_addr, key, "info", (), timeout=timeout, retries=0)
    d = json.loads(str(text))
    d["address"] = dev
    return d
