"""Per-node precision: the map a user (or the joint search) gives, checked against the model.

A precision map is {node name: "fp32" | "int8"}; nodes it does not name get the pass's
default ("int8" for the int8 pass). onnxruntime's quantizer takes the other view, a list
of nodes NOT to quantize (`nodes_to_exclude`): `resolve_exclusions` turns one into the
other after checking every name and value, so a typo is a one-line error instead of a
silently fp32-everywhere or int8-everywhere model.

Groups (graphprune.analysis): a group's precision is its producers' precision (the
layers whose filters are the group's channels), so a search over groups can say
{group id: "fp32"} and `group_precision` gives the node map.

The output model records the precision each quantizable node ended up with under the
metadata key PRECISION_KEY, so reports, the pruning pass and later tools can read it.
"""
from __future__ import annotations

import difflib

import onnx

from graphprune.errors import GraphpruneError
from graphprune.metadata import get_json, set_json

PRECISIONS = ("fp32", "int8", "fp16")
PRECISION_KEY = "graphprune.precision"
# the precision names users write, folded to the canonical ones
_ALIASES = {"fp32": "fp32", "float32": "fp32", "float": "fp32", "int8": "int8", "fp16": "fp16", "float16": "fp16",
            "half": "fp16"}


def canonical(name: str, allowed=PRECISIONS, what: str = "precision") -> str:
    """'float32' -> 'fp32'; an unknown name (or one not in `allowed`) is a one-line error."""
    p = _ALIASES.get(str(name).strip().lower())
    if p is None or p not in allowed:
        raise GraphpruneError(f"unknown {what} {name!r}; choose from {', '.join(allowed)}")
    return p


MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def quantizable_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the layers whose precision a map chooses, in graph order: the MAC layers
    (Conv, ConvTranspose, Gemm, MatMul), which hold the weights and nearly all the
    arithmetic. (Other nodes onnxruntime quantizes, Add or pools, may be excluded too.)"""
    return [n.name for n in model.graph.node if n.op_type in MAC_OPS and n.name]


def graph_precision(model: onnx.ModelProto) -> dict[str, str]:
    """{MAC layer: precision} read from the graph itself, not from what was asked: int8 when
    its data and weight inputs come out of DequantizeLinear (the QDQ pattern onnxruntime runs
    as an integer kernel), fp16 when its weight or input is float16, else fp32."""
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    types = {t.name: t.data_type for t in model.graph.initializer}
    for vi in list(model.graph.value_info) + list(model.graph.input):
        types.setdefault(vi.name, vi.type.tensor_type.elem_type)
    out = {}
    for n in model.graph.node:
        if n.op_type not in MAC_OPS or not n.name:
            continue
        ins = [i for i in n.input[:2] if i]
        if ins and all(producer.get(i) == "DequantizeLinear" for i in ins):
            out[n.name] = "int8"
        elif any(types.get(i) == onnx.TensorProto.FLOAT16 for i in ins):
            out[n.name] = "fp16"
        else:
            out[n.name] = "fp32"
    return out


_QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
                  "ConvInteger", "MatMulInteger", "QGemm", "QLinearAdd")


def check_float_model(model: onnx.ModelProto) -> None:
    """Quantizing a model that is already quantized would stack a second rounding on the first
    (or, for QLinear ops, fail inside onnxruntime): refuse it, naming the op."""
    op = next((n.op_type for n in model.graph.node if n.op_type in _QUANTIZED_OPS), None)
    if op is not None:
        raise GraphpruneError(f"the model is already quantized (it has {op}); quantize the float model")


def resolve_exclusions(model: onnx.ModelProto, precision: dict[str, str] | None = None,
                       exclude=None) -> list[str]:
    """The node names to keep in fp32: those `precision` maps to fp32 plus `exclude`.
    Every name must be a node of `model`; every value fp32 or int8 (fp16 per node is not
    something onnxruntime's int8 quantizer can produce)."""
    names = {n.name for n in model.graph.node if n.name}
    fp32 = set()
    for node, p in (precision or {}).items():
        p = canonical(p, ("fp32", "int8"), f"precision for node {node!r}")
        check_node(node, names)
        if p == "fp32":
            fp32.add(node)
    for node in exclude or []:
        check_node(node, names)
        fp32.add(node)
    return sorted(fp32)


def check_node(node: str, names) -> None:
    if node not in names:
        raise GraphpruneError(f"no node named {node!r} in the model{_suggest(node, names)}")


def _suggest(name: str, names) -> str:
    close = difflib.get_close_matches(name, sorted(names), n=3)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def group_precision(analysis, groups: dict[int, str]) -> dict[str, str]:
    """{node name: precision} from {group id: precision}: a group's producers get its precision.
    A node producing channels of two groups given different precisions is an error."""
    by_id = {g.id: g for g in analysis.groups}
    out: dict[str, str] = {}
    for gid, p in groups.items():
        if gid not in by_id:
            raise GraphpruneError(f"no channel group {gid} (the analysis has {len(by_id)} groups)")
        p = canonical(p)
        for node in by_id[gid].producers:
            if out.setdefault(node, p) != p:
                raise GraphpruneError(f"node {node!r} belongs to groups given {out[node]} and {p}")
    return out


def precision_of(model: onnx.ModelProto) -> dict[str, str]:
    """The per-node precision a quantization pass recorded in `model` ({} if none)."""
    entry = get_json(model, PRECISION_KEY)
    return dict(entry.get("nodes", {})) if entry else {}


def record_precision(model: onnx.ModelProto, nodes: dict[str, str], **provenance) -> None:
    """Write the per-node precision (and how it was made) into `model`'s metadata."""
    set_json(model, PRECISION_KEY, {"nodes": nodes, **provenance})
