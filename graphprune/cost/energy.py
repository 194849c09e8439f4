"""Estimated energy per inference: arithmetic by precision plus memory traffic.

The model (first order, batch 1), with Horowitz's 45 nm figures (M. Horowitz, "Computing's
energy problem (and what we can do about it)", ISSCC 2014), in the per-32-bit-word form
Han et al. use (NeurIPS 2015, "Learning both weights and connections"):

    energy = sum over MAC layers (Conv, ConvTranspose, Gemm, MatMul) of
               MACs x (multiply + accumulate energy at the layer's precision)
             + weight bytes / 4 x DRAM energy per 32-bit word  (weights fetched once)
             + (input + output activation bytes) / 4 x SRAM energy per 32-bit word

    operation          fp32     fp16     int8
    multiply           3.7 pJ   1.1 pJ   0.2 pJ
    accumulate         0.9 pJ   0.4 pJ   0.1 pJ (32-bit integer add: int8 products are
                                                 summed in int32, as VNNI/AMX/NEON do;
                                                 Horowitz's 8-bit add is 0.03 pJ)
    SRAM read (8 KB)   5 pJ per 32-bit word
    DRAM read          640 pJ per 32-bit word

A layer's precision is read from the graph (graphprune.quant.graph_precision): int8 when
its inputs come out of DequantizeLinear (onnxruntime runs it as an integer kernel), fp16
for fp16 weights, else fp32. Its activations are charged at that width (1, 2 or 4
bytes); its weight bytes are the stored tensors feeding it (int8 values, scales, zero
points, biases). Other ops (pools, Add, activations) are not counted: they are a few
percent of the MACs in CNNs. This is an estimate for comparing variants of one model,
not a prediction of a chip's power: absolute numbers depend on the process node and on
caches the model ignores. Every result is labelled "estimated".
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import onnx

from graphprune.cost.size import tensor_bytes
from graphprune.quant.precision import MAC_OPS, graph_precision

_ACT_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}
_WEIGHT_PATH = ("DequantizeLinear", "QuantizeLinear", "Cast", "Identity")  # ops a stored weight passes through


@dataclass(frozen=True)
class EnergyTable:
    """Energy per operation (pJ) by precision, and per 32-bit word of memory traffic."""
    name: str
    mult: dict
    add: dict
    sram_word: float
    dram_word: float
    source: str


HOROWITZ_45NM = EnergyTable(
    name="Horowitz 45 nm", mult={"fp32": 3.7, "fp16": 1.1, "int8": 0.2}, add={"fp32": 0.9, "fp16": 0.4, "int8": 0.1},
    sram_word=5.0, dram_word=640.0,
    source="M. Horowitz, Computing's energy problem, ISSCC 2014; per-word memory figures as in Han et al., "
           "NeurIPS 2015")


@dataclass
class LayerCost:
    node: str
    op: str
    precision: str
    macs: int
    weight_bytes: int
    activation_bytes: int


@dataclass
class EnergyEstimate:
    """Estimated energy of one inference (batch 1) in microjoules, with its breakdown."""
    compute_uj: float
    weights_uj: float
    activations_uj: float
    macs: dict = field(default_factory=dict)      # MACs per precision
    table: str = HOROWITZ_45NM.name
    label: str = "estimated"

    @property
    def total_uj(self) -> float:
        return self.compute_uj + self.weights_uj + self.activations_uj

    def summary(self) -> str:
        return (f"{self.total_uj:.2f} uJ/inference {self.label} ({self.table} model: arithmetic "
                f"{self.compute_uj:.2f}, weights from DRAM {self.weights_uj:.2f}, activations SRAM "
                f"{self.activations_uj:.2f})")


def estimate_energy(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None,
                    table: EnergyTable = HOROWITZ_45NM, precision: dict[str, str] | None = None,
                    per_channel: bool = True) -> EnergyEstimate:
    """The energy model above applied to `model` at `input_shapes` (default: batch 1, other
    dynamic dims as every command resolves them). With `precision` ({layer: "int8"|"fp16"}),
    the fp32 model is costed as if those layers were quantized (graphprune.cost.projection),
    which a search can afford per candidate."""
    if precision:
        from graphprune.cost.projection import projected_costs
        costs = projected_costs(model, precision, input_shapes, per_channel)
    else:
        costs = layer_costs(model, input_shapes)
    est = EnergyEstimate(0.0, 0.0, 0.0, table=table.name)
    for lc in costs:
        est.compute_uj += lc.macs * (table.mult[lc.precision] + table.add[lc.precision]) * 1e-6
        est.weights_uj += lc.weight_bytes / 4 * table.dram_word * 1e-6
        est.activations_uj += lc.activation_bytes / 4 * table.sram_word * 1e-6
        est.macs[lc.precision] = est.macs.get(lc.precision, 0) + lc.macs
    return est


def layer_costs(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None) -> list[LayerCost]:
    """MACs, weight bytes and activation bytes of each MAC layer, at its precision."""
    from graphprune.inputs import checked_shapes, concrete_shapes
    from graphprune.shapes import inferred_at

    concrete = concrete_shapes(model, checked_shapes(model, input_shapes), batch=1)
    static = inferred_at(model, concrete)
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    for vi in list(static.graph.input) + list(static.graph.value_info) + list(static.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [d.dim_value for d in dims]
    precision = graph_precision(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    charged: set[str] = set()          # a shared weight is fetched once
    out = []
    for n in model.graph.node:
        if n.op_type not in MAC_OPS:
            continue
        p = precision.get(n.name, "fp32")
        stored = [s for i in n.input[1:] if i for s in _stored_sources(i, producer, inits) if s not in charged]
        charged.update(stored)
        act = sum(math.prod(shapes[t]) for t in (n.input[0], n.output[0]) if t in shapes) * _ACT_BYTES[p]
        out.append(LayerCost(n.name, n.op_type, p, _macs(n, shapes),
                             sum(tensor_bytes(inits[s]) for s in stored), act))
    return out


def _stored_sources(name: str, producer: dict, inits: dict) -> list[str]:
    """The initializers a weight input is computed from through DequantizeLinear/Cast/...
    (nothing for an activation: a MatMul of two computed tensors stores no weight)."""
    if name in inits:
        return [name]
    node = producer.get(name)
    if node is None or node.op_type not in _WEIGHT_PATH:
        return []
    found = [s for i in node.input if i for s in _stored_sources(i, producer, inits)]
    return found if node.input and _stored_sources(node.input[0], producer, inits) else []


def _macs(n: onnx.NodeProto, shapes: dict) -> int:
    w = shapes.get(n.input[1]) if len(n.input) > 1 else None
    if n.op_type == "Conv" and w and n.output[0] in shapes:
        return math.prod(shapes[n.output[0]]) * math.prod(w[1:])
    if n.op_type == "ConvTranspose" and w and n.input[0] in shapes:
        return math.prod(shapes[n.input[0]]) * math.prod(w[1:])
    if n.op_type in ("Gemm", "MatMul") and n.output[0] in shapes and n.input[0] in shapes:
        a = shapes[n.input[0]]
        trans_a = any(at.name == "transA" and at.i for at in n.attribute)
        return math.prod(shapes[n.output[0]]) * (a[0] if n.op_type == "Gemm" and trans_a else a[-1])
    return 0
