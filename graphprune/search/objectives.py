"""Measuring one configuration: every objective the search can trade.

error       1 - the quality metric (graphprune.metrics: accuracy, agreement, fidelity, detection,
            segmentation or the user's) on the user's data, model run in onnxruntime; the
            original's outputs it compares with are computed once per worker
latency_ms  median latency on the target (graphprune.targets.measure_latency)
macs        multiply-accumulates at batch 1 (graphprune.count)
param_bytes bytes of the float initializers
size_bytes  bytes of the deployed model, every stored tensor at its precision (graphprune.cost.size;
            with --quantize the QDQ model's int8 weights, scales and zero points)
energy_mj   ESTIMATE = latency x the target's stated power_w (not measured)
energy_uj   with --quantize: per inference, RAPL-measured where readable, else estimated by the
            Horowitz ISSCC 2014 model (graphprune.cost.energy); `energy_label` says which

The evaluation job (rewrite + error + counts) runs on an executor with the model,
its analysis and the data loaded once per worker; latency is measured in the
calling process (see executor.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from graphprune.errors import GraphpruneError

OBJECTIVES = ("latency_ms", "error", "macs", "param_bytes", "size_bytes", "energy_mj", "energy_uj")
ALIASES = {"latency": "latency_ms", "error": "error", "accuracy": "error", "macs": "macs", "flops": "macs",
           "params": "param_bytes", "param_bytes": "param_bytes", "size": "size_bytes", "size_bytes": "size_bytes",
           "energy": "energy_mj", "latency_ms": "latency_ms", "energy_mj": "energy_mj", "energy_uj": "energy_uj"}


def parse_objectives(text: str) -> list[str]:
    out = []
    for name in [s.strip() for s in text.split(",") if s.strip()]:
        if name not in ALIASES:
            raise GraphpruneError(f"unknown objective {name!r} (choose from latency, error, macs, params, size, energy)")
        if ALIASES[name] not in out:
            out.append(ALIASES[name])
    if len(out) < 2:
        raise GraphpruneError("--objectives needs at least two objectives to trade, e.g. latency,error")
    return out


def check_data_fits(model: onnx.ModelProto, x) -> None:
    """One-line errors for data that cannot be the model's inputs: missing inputs, rank, static dims.
    (Labels against the classes, and the outputs against the metric, are the metric's checks.)"""
    from graphprune.data.model_data import model_inputs
    inputs = model_inputs(model)
    if isinstance(x, dict):
        arrays = [(n, x.get(n)) for n, _ in inputs]
        missing = [n for n, a in arrays if a is None]
        if missing:
            raise GraphpruneError(f"the data has no array for model input(s) {', '.join(map(repr, missing))}")
    elif len(inputs) != 1:
        raise GraphpruneError(f"the model has {len(inputs)} inputs ({', '.join(n for n, _ in inputs)}): give a .npz "
                              "with one array per input, named like the inputs")
    else:
        arrays = [(inputs[0][0], x)]
    for (name, dims), (_, a) in zip(inputs, arrays):
        what = "data x" if not isinstance(x, dict) else f"data [{name}]"
        if len(dims) != a.ndim:
            raise GraphpruneError(f"{what} has shape {tuple(a.shape)} but model input {name!r} has rank {len(dims)}")
        for i, (d, s) in enumerate(zip(dims, a.shape)):
            if i > 0 and d is not None and d != s:
                raise GraphpruneError(f"{what} has shape {tuple(a.shape)}, model input {name!r} expects "
                                      f"{['N' if v is None else v for v in dims]} (axis {i}: {s} vs {d})")


def error_rate(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray, batch: int = 256, threads: int = 0) -> float:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    try:
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise GraphpruneError(f"onnxruntime cannot load the model: {str(exc).strip().splitlines()[0]}") from None
    inp = sess.get_inputs()[0]
    fixed = isinstance(inp.shape[0], int) and inp.shape[0] > 0
    bs = inp.shape[0] if fixed else batch
    wrong = 0
    try:
        for i in range(0, len(x), bs):
            xb = x[i:i + bs]
            if fixed and len(xb) < bs:   # fixed batch size: pad the last batch
                xb = np.concatenate([xb, np.repeat(xb[-1:], bs - len(xb), 0)])
            logits = sess.run(None, {inp.name: xb})[0][: len(x[i:i + bs])]
            wrong += int((logits.reshape(len(logits), -1).argmax(1) != y[i:i + bs]).sum())
    except GraphpruneError:
        raise
    except Exception as exc:
        raise GraphpruneError(f"the data does not fit the model: {str(exc).strip().splitlines()[0][:200]}") from None
    return wrong / len(x)


# ---- the executor job: state loaded once per worker ---------------------------------

_STATE: dict = {}


def init_worker(model_bytes: bytes, data_path: str | None, x=None, y=None, criterion: str = "l1",
                eval_threads: int = 0, metric: str = "accuracy", ref=None, input_shapes=None) -> None:
    """Load the model, its analysis, the data, the metric and the original's reduced outputs once in
    this (worker) process (`ref` None: computed here)."""
    import graphprune as gp
    from graphprune.metrics import get_metric, reference_outputs
    model = gp.load(onnx.load_from_string(model_bytes))
    _STATE.clear()
    _STATE.update(model=model, analysis=gp.analyse(model, input_shapes=input_shapes), criterion=criterion,
                  threads=eval_threads)
    if data_path is not None:
        with np.load(data_path) as f:
            x, y = f["x"], f["y"]
    _STATE["x"] = ({k: np.ascontiguousarray(v, np.float32) for k, v in x.items()} if isinstance(x, dict)
                   else np.ascontiguousarray(x, np.float32))
    _STATE["y"] = None if y is None else np.asarray(y, np.int64)
    _STATE["metric"] = m = get_metric(metric, model, _STATE["y"] is not None)
    _STATE["ref"] = ref if ref is not None else reference_outputs(model, _STATE["x"], m, _STATE["y"], eval_threads)


def build(config: dict[int, int]) -> onnx.ModelProto:
    """The candidate of `config`: pruned, and with --quantize quantized as its precision axes say
    (graphprune.search.precision)."""
    if _STATE.get("joint") is not None:
        return _STATE["joint"](config)
    return prune_only(config)


def prune_only(config: dict[int, int]) -> onnx.ModelProto:
    import graphprune as gp
    an = _STATE["analysis"]
    if all(config[g] == an.group(g).units for g in config):
        return _STATE["model"]
    plan = gp.choose(an, keep={int(k): int(v) for k, v in config.items()}, criterion=_STATE["criterion"])
    return gp.prune(_STATE["model"], plan)


def evaluate_job(config: dict[int, int]) -> dict:
    """Rewrite + error (1 - metric) + counts of one configuration (no latency)."""
    import graphprune as gp
    pruned = build(config)
    c = gp.count(pruned)
    from graphprune.metrics import evaluate
    err = 1.0 - evaluate(pruned, _STATE["x"], _STATE["metric"], _STATE["ref"], _STATE["y"], _STATE["threads"])
    from graphprune.cost import model_size
    return {"error": err, "macs": c.macs, "params": c.params, "param_bytes": c.param_bytes,
            "size_bytes": model_size(pruned).bytes, "model": pruned.SerializeToString()}


@dataclass
class LatencySpec:
    """How latency is measured: the same options as `graphprune bench`."""
    target: str = "x86"
    backend: str = "ort"
    rpc_tracker: str | None = None
    rpc_key: str | None = None
    tune_trials: int = 0
    repeats: int = 30
    threads: int | None = None
    power_w: float | None = None
    stand_in: str | None = None      # the target actually measured when the requested one has no device
    input_shapes: dict | None = None  # dynamic inputs timed at these dims (--input-shape, else the data's)
    targets_file: str | None = None
    timeout: float = 60.0            # per RPC attempt; not in to_json: it changes no measured value
    tune_time: float | None = None   # seconds budgeting the base's tuning (tvm), with or without trials
    progress: bool = False           # a progress bar while the base is tuned (never part of the journal)

    @property
    def measured_target(self) -> str:
        return self.stand_in or self.target

    def to_json(self) -> dict:
        out = {k: getattr(self, k) for k in ("target", "backend", "rpc_tracker", "rpc_key", "tune_trials",
                                             "repeats", "threads", "power_w", "stand_in")}
        if self.input_shapes:   # only models with dynamic inputs: older journals stay resumable
            out["input_shapes"] = self.input_shapes
        if self.tune_time is not None:   # likewise: only runs with --tune-time
            out["tune_time_s"] = self.tune_time
        return out


def measure(model: onnx.ModelProto, spec: LatencySpec) -> dict:
    from graphprune.targets import measure_latency
    r = measure_latency(model, target=spec.measured_target, backend=spec.backend, rpc_tracker=spec.rpc_tracker,
                        rpc_key=spec.rpc_key, tune_trials=spec.tune_trials, repeats=spec.repeats,
                        threads=spec.threads, targets_file=spec.targets_file, input_shapes=spec.input_shapes,
                        timeout=spec.timeout, tune_time=spec.tune_time, progress=spec.progress)
    out = {"latency_ms": r.median_ms, "latency_spread_ms": r.spread_ms, "latency_backend": r.backend,
           "latency_device": r.device, "latency_tuning": r.tuning, "latency_cached": r.cached,
           "latency_emulated": r.emulated}
    if r.device_info and r.device_info.get("timed") and not r.cached:   # the device's clock: warm-up end -> last run
        out["latency_device_window"] = r.device_info["timed"]
    out["energy_mj"] = r.median_ms * spec.power_w if spec.power_w else None
    return out
