"""Which model a pruning plan applies to: the caller's model, never a silent substitute.

A plan is made on one model (A) but users apply it to another with A's architecture and
other weights (a fine-tuned checkpoint B). Pruning must then cut B's weights, keeping
the plan's channel choice: returning A pruned would silently drop B's training. So the
caller's model is normalised and checked to have exactly the structure the plan
describes (same nodes and wiring, same inputs, same weight names, types and shapes, same
shape data); when weight values differ, its channel analysis must equal the plan's too
(a few rules read constant values, e.g. Resize scales). Anything else is refused with the
first difference found.
"""
from __future__ import annotations

import numpy as np
import onnx

from graphprune.analysis import analyse_graph, fingerprint
from graphprune.arrays import view
from graphprune.errors import GraphpruneError
from graphprune.selection import PruningPlan
from graphprune.weights import check_finite_weights


def model_for_plan(model: onnx.ModelProto, plan: PruningPlan) -> onnx.ModelProto:
    """`model` normalised (unless it already is), with the structure `plan` was made for."""
    if not isinstance(plan, PruningPlan):
        raise GraphpruneError(f"expected a PruningPlan from graphprune.choose, got {type(plan).__name__}")
    an = plan.analysis
    if model is an.model:
        return model
    if not isinstance(model, onnx.ModelProto):
        raise GraphpruneError(f"expected an onnx.ModelProto, got {type(model).__name__}")
    if fingerprint(model) != an.fingerprint:
        from graphprune.passes.normalize import NormalizePass
        model = NormalizePass().run(model)
    reason = structure_difference(an.model, model)
    if reason:
        raise GraphpruneError(f"the pruning plan was made for another model: {reason} "
                              "(analyse this model and choose a plan for it)")
    if not _same_weights(an.model, model):
        check_finite_weights(model)
        reason = _analysis_difference(an, analyse_graph(model, allow_inexact=an.allow_inexact))
        if reason:
            raise GraphpruneError(f"the pruning plan was made for another model: {reason}")
    return model


def structure_difference(a: onnx.ModelProto, b: onnx.ModelProto) -> str:
    """The first structural difference of `b` from the plan's model `a`, '' when none."""
    na, nb = a.graph.node, b.graph.node
    for i, (x, y) in enumerate(zip(na, nb)):
        if (x.name, x.op_type, list(x.input), list(x.output)) != (y.name, y.op_type, list(y.input), list(y.output)):
            return f"node {i} is {_node(y)} here but {_node(x)} in the plan's model"
    if len(na) != len(nb):
        return f"{len(nb)} nodes here, {len(na)} in the plan's model"
    ia, ib = _inputs(a), _inputs(b)
    if ia != ib:
        name = next((k for k in sorted(set(ia) | set(ib)) if ia.get(k) != ib.get(k)), "?")
        return f"input {name!r} is {ib.get(name, 'absent')} here but {ia.get(name, 'absent')} in the plan's model"
    ta = {t.name: t for t in a.graph.initializer}
    tb = {t.name: t for t in b.graph.initializer}
    if set(ta) != set(tb):
        name = sorted(set(ta) ^ set(tb))[0]
        return f"weight {name!r} is {'missing' if name in ta else 'extra'} here"
    for name, x in ta.items():
        y = tb[name]
        if (x.data_type, list(x.dims)) != (y.data_type, list(y.dims)):
            return (f"weight {name!r} has shape {list(y.dims)} here but {list(x.dims)} in the plan's model")
        if x.data_type not in _FLOAT and not _same_tensor(x, y):
            return f"the shape data {name!r} differs"
    return ""


_FLOAT = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


def _node(n: onnx.NodeProto) -> str:
    return f"{n.op_type} {n.name!r} ({', '.join(n.input)} -> {', '.join(n.output)})"


def _inputs(m: onnx.ModelProto) -> dict[str, str]:
    inits = {t.name for t in m.graph.initializer}
    out = {}
    for i in m.graph.input:
        if i.name in inits:
            continue
        tt = i.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else "?" for d in tt.shape.dim]
        out[i.name] = f"{onnx.TensorProto.DataType.Name(tt.elem_type) if tt.elem_type else '?'}{dims}"
    return out


def _same_tensor(x: onnx.TensorProto, y: onnx.TensorProto) -> bool:
    if x.HasField("raw_data") and y.HasField("raw_data"):
        return x.raw_data == y.raw_data
    try:
        return np.array_equal(view(x), view(y))
    except Exception:
        return x.SerializeToString() == y.SerializeToString()


def _same_weights(a: onnx.ModelProto, b: onnx.ModelProto) -> bool:
    tb = {t.name: t for t in b.graph.initializer}
    return all(_same_tensor(t, tb[t.name]) for t in a.graph.initializer)


def _analysis_difference(a, b) -> str:
    """'' when both analyses partition the channels identically (so the plan's masks fit)."""
    if set(a.maps) != set(b.maps):
        name = sorted(set(a.maps) ^ set(b.maps))[0]
        return f"tensor {name!r} carries channels in one model only"
    for name, m in a.maps.items():
        o = b.maps[name]
        if (m.axis, m.rank) != (o.axis, o.rank) or not np.array_equal(m.elems, o.elems):
            return f"the channels of tensor {name!r} are laid out differently"
    for field in ("unit_of", "group_of_unit", "unit_frozen", "unit_inexact"):
        if not np.array_equal(getattr(a, field), getattr(b, field)):
            return f"the channel groups differ ({field})"
    return ""
