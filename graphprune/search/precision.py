"""The joint prune + quantize search (`optimize --quantize int8|mixed`): precision in the search space.

Why here and not in a second search: pruning and quantization interact (a layer pruned
thin may lose more when rounded; an int8 layer is cheap enough to keep wide), so a model
pruned for fp32 latency and then quantized is not the best int8 model. The search
therefore scores every candidate *as deployed*: pruned, then quantized by
`QuantizeInt8Pass` (onnxruntime's static QDQ quantizer, per-channel int8 weights,
calibrated on a fixed-seed sample of the training data), timed with onnxruntime's int8
kernels, its size counted at its precision (graphprune.cost.size) and its energy
measured (RAPL) or estimated (graphprune.cost.energy, labelled "estimated").

How precision enters the space without a second kind of configuration: a precision
axis is one more `Axis` with a negative id, one "unit" and the kept counts {0, 1}:
1 = the layer stays fp32 (as in the original), 0 = int8. So the configuration dict,
its journal key, nevergrad's [0, 1]^d coordinates, the surrogate's features (kept
fractions and their products: a precision bit is a fraction of 0 or 1), the
sensitivity sweep (a precision axis "pruned" is its layer quantized alone), the
sensitivity bounds (a layer that loses too much alone stays fp32) and the uniform
baselines (uniform pruning, every layer int8) all carry precision unchanged.

--quantize int8: one precision axis (-1) over every quantizable layer, whose only
choice is int8: every candidate is int8; the original (all axes at full width) stays
the fp32 model the constraints and speed-ups refer to.
--quantize mixed: one axis per quantizable layer (Conv, ConvTranspose, Gemm, MatMul),
fp32 or int8 each.
--quantize fp16: as int8, one axis whose only choice is 0, here meaning fp16 (Float16Pass:
onnxruntime's float16 converter, fp32 inputs and outputs), for targets with fp16 arithmetic.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from graphprune.errors import GraphpruneError
from graphprune.search import objectives as obj
from graphprune.search.space import Axis, SearchSpace

MODES = ("off", "int8", "mixed", "fp16")
LOW = {"int8": "int8", "mixed": "int8", "fp16": "fp16"}   # what a precision axis at 0 means, by mode
FP32, INT8 = 1, 0            # a precision axis's kept count
DEFAULT_CALIBRATION = 256    # calibration samples (a fixed-seed subset)
_CALIB_SEED = 13             # offset from --seed: the calibration subset differs from --samples' subset


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise GraphpruneError(f"unknown --quantize {mode!r}; choose from {', '.join(MODES)}")
    return mode


@dataclass
class JointSpace(SearchSpace):
    """SearchSpace whose axes with negative ids are precision axes ({0: int8, 1: fp32})."""
    mode: str = "int8"
    layers: dict = field(default_factory=dict)   # precision axis id -> [quantizable node names]
    calibration: str = ""                         # how candidates are calibrated (in the journal header)

    def snap(self, gid: int, kept: float) -> int:
        if gid >= 0:
            return super().snap(gid, kept)
        choices = self.axis(gid).choices      # anything less than full width is "quantized"
        want = FP32 if kept >= 1 - 1e-9 else INT8
        return want if want in choices else choices[0]

    def restrict(self, lower: dict[int, int]) -> "JointSpace":
        """Sensitivity bounds; in int8 mode the precision axis is never bounded to fp32."""
        keep = {g: v for g, v in lower.items() if g >= 0 or self.mode == "mixed"}
        return JointSpace(super().restrict(keep).axes, self.step, self.min_keep, self.mode, self.layers,
                          self.calibration)

    def to_json(self) -> dict:
        out = super().to_json()
        out["quantize"] = {"mode": self.mode, "axes": {str(g): v for g, v in self.layers.items()},
                           "choices": {"0": "int8", "1": "fp32"}, "calibration": self.calibration}
        return out


def joint_space(space: SearchSpace, model: onnx.ModelProto, mode: str, calibration: str = "",
                exclude=()) -> JointSpace:
    """`space` plus the precision axes of `mode` for `model`'s quantizable layers; the layers in
    `exclude` (fixed fp32, `--quantize-exclude`) get no axis."""
    from graphprune.quant import quantizable_nodes
    excluded = set(exclude)
    layers = [n for n in quantizable_nodes(model) if n not in excluded]
    if not layers:
        raise GraphpruneError("--quantize: the model has no named Conv, ConvTranspose, Gemm or MatMul to quantize"
                              + (" outside --quantize-exclude" if exclude else ""))
    if mode in ("int8", "fp16"):
        axes = {-1: layers}
        extra = [Axis(-1, 1, 1, [INT8], list(layers))]
    else:
        axes = {-(i + 1): [n] for i, n in enumerate(layers)}
        extra = [Axis(g, 1, 1, [INT8, FP32], names) for g, names in axes.items()]
    return JointSpace(list(space.axes) + extra, space.step, space.min_keep, mode, axes, calibration)


def split(config: dict) -> tuple[dict[int, int], dict[int, int]]:
    """(kept units per group, precision per axis) of a joint configuration (str or int keys)."""
    cfg = {int(k): int(v) for k, v in config.items()}
    return {g: v for g, v in cfg.items() if g >= 0}, {g: v for g, v in cfg.items() if g < 0}


def precision_map(config: dict, layers: dict, low: str | None = None) -> dict[str, str]:
    """{quantizable node: "fp32" | low} that a joint configuration asks for; `low` (the precision of an
    axis at 0) defaults to this process's configured mode's: int8, or fp16 with --quantize fp16."""
    _, prec = split(config)
    low = low or _JOINT.get("low", "int8")
    out = {}
    for gid, names in layers.items():
        p = "fp32" if prec.get(int(gid), FP32) == FP32 else low
        out.update({n: p for n in names})
    return out


# ---- building and judging candidates (per process: this one and every executor worker) ----

_JOINT: dict = {}


def configure(layers: dict | None, calib=None, input_shapes=None, exclude=(), mode: str = "int8",
              calibration: str = "minmax") -> None:
    """Build every candidate as deployed from now on in this process (None: plain pruning);
    `exclude`: nodes every candidate keeps fp32; `calibration`: QuantizeInt8Pass's method."""
    _JOINT.clear()
    obj._STATE.pop("joint", None)
    if layers is not None:
        _JOINT.update(layers={int(k): v for k, v in layers.items()}, calib=calib, input_shapes=input_shapes,
                      exclude=list(exclude), low=LOW[mode], calibration=calibration)
        obj._STATE["joint"] = build


def init_worker(base_init, base_args, layers, calib, input_shapes, exclude=(), mode="int8",
                calibration="minmax") -> None:
    """Executor initializer: the run's own initializer, then the joint configuration."""
    base_init(*base_args)
    configure(layers, calib, input_shapes, exclude, mode, calibration)


def quantize(pruned: onnx.ModelProto, pmap: dict[str, str]) -> onnx.ModelProto:
    """`pruned` with the int8 layers of `pmap` quantized (QDQ), or its fp16 layers converted
    (Float16Pass); unchanged when all are fp32, with the precision recorded in the metadata either way."""
    from graphprune.passes import Float16Pass, QuantizeInt8Pass
    from graphprune.quant.precision import record_precision
    if all(p == "fp32" for p in pmap.values()):
        out = onnx.ModelProto()
        out.CopyFrom(pruned)
        record_precision(out, dict(pmap), format="fp32")
        return out
    if "fp16" in pmap.values():
        return Float16Pass(precision=pmap, exclude=_JOINT.get("exclude")).run(pruned)
    return QuantizeInt8Pass(_JOINT["calib"], per_channel=True, precision=pmap, exclude=_JOINT.get("exclude"),
                            calibration=_JOINT.get("calibration", "minmax")).run(pruned)


def _pruned(config: dict) -> onnx.ModelProto:
    """The fp32 candidate: pruned and, with --bn-recalibrate, recalibrated (before rounding, so the
    int8 weights are those of the recalibrated BN folded into its conv)."""
    from graphprune.search.candidates import repaired
    cfg = split(config)[0]
    return repaired(obj.prune_only(cfg), cfg)


def build(config: dict) -> onnx.ModelProto:
    """The deployed candidate: pruned (objectives.prune_only), then quantized as its precision axes say."""
    return quantize(_pruned(config), precision_map(config, _JOINT["layers"]))


def evaluate_job(config: dict) -> dict:
    """The executor job: counts of the pruned fp32 model (macs, params, param_bytes as without
    --quantize), and of the deployed one its error, size at precision and estimated energy."""
    import graphprune as gp
    from graphprune.cost import estimate_energy, model_size
    from graphprune.metrics import evaluate
    from graphprune.quant import graph_precision
    pruned = _pruned(config)
    c = gp.count(pruned)
    q = quantize(pruned, precision_map(config, _JOINT["layers"]))
    s = obj._STATE
    err = 1.0 - evaluate(q, s["x"], s["metric"], s["ref"], s["y"], s["threads"])
    prec = graph_precision(q)
    return {"error": err, "macs": c.macs, "params": c.params, "param_bytes": c.param_bytes,
            "size_bytes": model_size(q).bytes, "energy_uj": estimate_energy(q, _JOINT["input_shapes"]).total_uj,
            "energy_label": "estimated", "int8_layers": sum(p == "int8" for p in prec.values()),
            **({"fp16_layers": n16} if (n16 := sum(p == "fp16" for p in prec.values())) else {}),
            "precision": prec, "model": q.SerializeToString()}


def exact_counts(config: dict) -> dict:
    """What the search's screening may know without quantizing: MACs and fp32 bytes of the
    pruned model, its size and estimated energy projected at the candidate's precision
    (graphprune.cost.projection: exact for the weights; activation scales left out)."""
    import graphprune as gp
    from graphprune.cost import estimate_energy, model_size, projected_size
    prune_cfg, _ = split(config)
    pruned = obj.prune_only(prune_cfg)
    c = gp.count(pruned)
    low = {n: p for n, p in precision_map(config, _JOINT["layers"]).items() if p != "fp32"}
    return {"macs": c.macs, "param_bytes": c.param_bytes,
            "size_bytes": projected_size(pruned, low) if low else model_size(pruned).bytes,
            "energy_uj": estimate_energy(pruned, _JOINT["input_shapes"], precision=low or None).total_uj}


# ---- measured energy (RAPL), in the measuring process only ----

def rapl_measure(spec, x, repeats: int = 200):
    """A function model -> {"energy_uj", "energy_label"} measured with RAPL on one sample, or
    None when RAPL is not readable here (the estimate then stands, labelled so)."""
    from graphprune.cost.rapl import measure_energy, rapl_zones
    if spec.backend != "ort" or spec.rpc_tracker or not rapl_zones():
        return None
    feed_x = {k: np.ascontiguousarray(v[:1]) for k, v in x.items()} if isinstance(x, dict) else x[:1]

    def measure(model: onnx.ModelProto) -> dict:
        from graphprune.runtime import session
        sess = session(model, spec.threads or 0)
        feeds = feed_x if isinstance(feed_x, dict) else {sess.get_inputs()[0].name: feed_x}
        sess.run(None, feeds)
        m = measure_energy(lambda: sess.run(None, feeds), repeats)
        if m is None:
            return {}
        return {"energy_uj": m.per_call_uj, "energy_label": "measured (RAPL, whole package)"}
    return measure
