"""How optimize measures latency: the spec every candidate is timed with, its label, and the
final comparison of the delivered model with the original.

During the search, latencies may come from the on-disk cache (graphprune.targets.cache):
they rank and screen candidates. The speed-up a user is told is never computed from them:
a cached latency may be from another day, another load, another thread count. It comes
from `compare_final`: both models measured in this run, by this process, with the same
threads, and for onnxruntime in alternating runs (graphprune.targets.paired).
"""
from __future__ import annotations

import os

from graphprune.errors import GraphpruneError
from graphprune.search import objectives as obj
from graphprune.search.options import OptimizeOptions, check_tune_time, resolve_threads


def resolve_latency(o: OptimizeOptions) -> tuple[obj.LatencySpec, int, str]:
    """The measurement spec (threads resolved to a number), the channel step, and the label
    every output carries. Fails now, not after compiling, when the target has no device."""
    from graphprune.targets import get_target
    extra = [o.targets_file] if o.targets_file else None
    tgt = get_target(o.target, extra)
    if o.rpc_tracker:   # the tracker and a device under the key must answer
        from graphprune.targets.measure_rpc import check_key
        check_key(o.rpc_tracker, o.rpc_key or tgt.rpc_key, timeout=10.0)
    stand = None
    local_ok = tgt.runs_on_host and (o.backend == "tvm" or tgt.name == "x86")
    if o.stand_in:
        stand = get_target(o.stand_in, extra)
        if o.rpc_tracker:
            raise GraphpruneError("--stand-in is for a target without a device; with --rpc-tracker the "
                                  "target's own device is measured")
        if stand.name == tgt.name:
            stand = None
    elif not o.rpc_tracker and not local_ok:
        raise GraphpruneError(f"target {tgt.name!r} has no reachable device from this host: give --rpc-tracker "
                              f"HOST:PORT (--rpc-key, default {tgt.rpc_key}), or measure an explicit stand-in with "
                              f"--stand-in x86 (every output is then labelled as stand-in timings)")
    power = (stand or tgt).power_w
    on_device_ort = o.backend == "ort" and bool(o.rpc_tracker)   # the device checks threads against its cores
    spec = obj.LatencySpec(target=tgt.name, backend=o.backend, rpc_tracker=o.rpc_tracker, rpc_key=o.rpc_key,
                           tune_trials=o.tune_trials, repeats=o.repeats,
                           threads=o.threads if on_device_ort else resolve_threads(o.threads),
                           power_w=power, stand_in=stand.name if stand else None, targets_file=o.targets_file,
                           timeout=o.timeout, tune_time=check_tune_time(o), progress=o.progress)
    if stand:
        label = f"STAND-IN: measured on {stand.name} ({o.backend}, this host), not on {tgt.name}"
    elif o.rpc_tracker:
        how = "the device's own onnxruntime, graphprune device-server" if on_device_ort else tuning_text(spec)
        label = (f"measured on {tgt.name} devices by {'TVM' if o.backend == 'tvm' else o.backend} over RPC on key "
                 f"{o.rpc_key or tgt.rpc_key!r} (tracker {o.rpc_tracker}; {how})")
    else:
        how = f"; {tuning_text(spec)}" if o.backend == "tvm" else ""
        label = f"measured on {tgt.name} (this host, {o.backend}{how})"
    return spec, o.channel_step or tgt.channel_step, label + f"; {threads_text(spec)}"


def tuning_text(spec: obj.LatencySpec) -> str:
    """How TVM's schedules were chosen: the base (the first model timed, the original) is tuned once
    within the trial and/or time budget, and every candidate replays its schedules."""
    parts = ([f"{spec.tune_trials} trials"] if spec.tune_trials else []) + (
        [f"{spec.tune_time:g} s"] if spec.tune_time is not None else [])
    if not parts:
        return "untuned schedules"
    budget = " or ".join(parts) + (", whichever ends first" if len(parts) == 2 else "")
    return f"schedules tuned for the base within {budget}, replayed onto candidates"


def threads_text(spec: obj.LatencySpec) -> str:
    """Which threads timed the models, as a number where we set it."""
    if spec.backend == "ort" and spec.rpc_tracker:
        return (f"{spec.threads} onnxruntime intra-op thread(s) on the device" if spec.threads
                else "onnxruntime intra-op threads: as many as the device has cores")
    if spec.backend == "ort":
        return f"{spec.threads} onnxruntime intra-op thread(s)"
    if spec.rpc_tracker:
        return "threads: the TVM runtime's default on the device"
    env = os.environ.get("TVM_NUM_THREADS")
    return f"TVM runtime threads: {env} (TVM_NUM_THREADS)" if env else "threads: the TVM runtime's default on this host"


def compare_final(original, delivered, spec: obj.LatencySpec, seed: int = 0) -> dict:
    """The delivered model against the original, both measured now (never from the cache).

    onnxruntime or TVM on this host: paired, alternating runs in this process (targets.paired).
    Over RPC: each compiled and measured fresh, back to back; labelled so, with the
    spread of the ratio bounded from the two interquartile ranges."""
    if spec.backend == "ort" and not spec.rpc_tracker:   # onnxruntime over RPC: back to back below
        from graphprune.targets.paired import paired_ort
        r = paired_ort(original, delivered, repeats=max(spec.repeats, 10), threads=spec.threads, seed=seed,
                       input_shapes=spec.input_shapes)
    elif spec.backend == "tvm" and not spec.rpc_tracker:   # both builds in this process: alternating too
        from graphprune.targets.paired import paired_tvm
        r = paired_tvm(original, delivered, target=spec.measured_target, tune_trials=spec.tune_trials,
                       tune_time=spec.tune_time, repeats=max(spec.repeats, 10), seed=seed,
                       targets_file=spec.targets_file, input_shapes=spec.input_shapes)
    else:
        from graphprune.targets import measure_latency
        kw = dict(target=spec.measured_target, backend=spec.backend, rpc_tracker=spec.rpc_tracker,
                  rpc_key=spec.rpc_key, tune_trials=spec.tune_trials, repeats=spec.repeats, threads=spec.threads,
                  targets_file=spec.targets_file, cache=False, input_shapes=spec.input_shapes,
                  timeout=spec.timeout, tune_time=spec.tune_time)
        a, b = measure_latency(original, **kw), measure_latency(delivered, **kw)
        lo = max(a.median_ms - a.spread_ms / 2, 1e-9) / (b.median_ms + b.spread_ms / 2)
        hi = (a.median_ms + a.spread_ms / 2) / max(b.median_ms - b.spread_ms / 2, 1e-9)
        r = {"method": "back-to-back", "method_text": "each measured fresh (no cache), back to back in this run, "
                                                      "not interleaved; the range is bounded from both IQRs",
             "pairs": None, "repeats": spec.repeats, "original_ms": a.median_ms, "delivered_ms": b.median_ms,
             "speedup": a.median_ms / b.median_ms, "speedup_iqr": [lo, hi], "speedup_ci95": None,
             "verdict": "faster" if lo > 1 else "slower" if hi < 1 else "no clear difference"}
    r["threads"] = spec.threads if spec.backend == "ort" else None
    r["threads_text"] = threads_text(spec)
    return r


def final_text(f: dict) -> str:
    """One line for stdout and the report: the speed-up with its spread, honest when not faster."""
    spread = f"IQR {f['speedup_iqr'][0]:.2f}-{f['speedup_iqr'][1]:.2f}"
    if f.get("speedup_ci95"):
        spread += f", 95 % bootstrap CI of the median {f['speedup_ci95'][0]:.2f}-{f['speedup_ci95'][1]:.2f}"
    how = (f"{f['pairs']} alternating pairs in this process" if f["method"] == "paired"
           else f["method_text"])
    head = {"faster": f"the delivered model is {f['speedup']:.2f}x faster than the original",
            "slower": f"the delivered model is NOT faster: {f['speedup']:.2f}x the original's speed (slower)",
            "same model": "the delivered model is the original (no configuration within the bounds prunes "
                          f"anything): no speed-up; timed at {f['speedup']:.2f}x",
            }.get(f["verdict"], f"the delivered model is NOT measurably faster: {f['speedup']:.2f}x "
                                f"(the spread includes 1.00x)")
    return (f"{head} ({spread}; {f['original_ms']:.3f} ms -> {f['delivered_ms']:.3f} ms medians; "
            f"measured side by side now: {how}, {f['threads_text']})")
