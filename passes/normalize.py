"""NormalizePass: make real-world exports look alike, changing nothing they compute.

What differs between exporters and matters for pruning:
- weights as `Constant` nodes (Paddle) or computed from constants (`ConstantOfShape`,
  `Unsqueeze` of an initializer, as in the ONNX zoo's "light" models): folded into
  initializers so every weight is a constant tensor the pruning pass can slice;
- `Identity` in front of an initializer (PyTorch): the consumer reads the initializer;
- nodes without a name, or with a duplicate name: named uniquely, because importance
  scores and pruning plans refer to nodes by name;
- missing shape information: inferred, because the analysis follows channel axes.
Shared initializers are left shared: the pruning pass gives each rewritten input its own
constant, so pruning one user never corrupts another.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.logger import G_LOGGER
from onnx import numpy_helper

from graphprune.analysis import import_graph
from graphprune.passes.base import Pass, copy_model_fields
from graphprune.shapes import infer_shapes

G_LOGGER.severity = G_LOGGER.ERROR  # gs warns on every unused tensor

# Ops whose value is fully determined by constant inputs and cheap to compute once.
_FOLDABLE = {
    "Constant", "Identity", "ConstantOfShape", "Unsqueeze", "Squeeze", "Reshape", "Cast", "Transpose",
    "Concat", "Flatten", "Mul", "Add", "Sub", "Div", "Neg", "Sqrt", "Reciprocal", "Shape", "Gather",
    "Slice", "Expand", "Range", "Tile",
}
_FOLD_LIMIT_BYTES = 256 << 20


class NormalizePass(Pass):
    name = "normalize"

    def run(self, model: onnx.ModelProto) -> onnx.ModelProto:
        graph = import_graph(_with_shapes(model))
        _fold_constant_nodes(graph)
        if _fold_static_shape_reads(graph):
            _fold_constant_nodes(graph)
        _bypass_identities(graph)
        _name_nodes(graph)
        graph.cleanup(remove_unused_graph_inputs=False)
        out = gs.export_onnx(graph, do_type_check=False)
        copy_model_fields(model, out)
        return _with_shapes(out)


def _with_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    return infer_shapes(model)  # best effort: the analysis freezes what it cannot see


def _fold_static_shape_reads(graph: gs.Graph) -> bool:
    """`x.size(1)` with a dynamic batch: Shape(x) is not constant, but Gather(Shape(x), 1)
    or Slice(Shape(x), 1, 4) are when those dims are static. Folding them turns the Slice
    bounds of `chunk` and the targets of `view` into constants the analysis can follow."""
    folded = False
    for node in list(graph.nodes):
        if node.op != "Shape" or node.inputs[0].shape is None:
            continue
        dims = list(node.inputs[0].shape)
        start, end = node.attrs.get("start", 0), node.attrs.get("end", None)
        dims = dims[slice(start, end)]
        for consumer in list(node.outputs[0].outputs):
            picked = None
            if consumer.op == "Gather" and isinstance(consumer.inputs[1], gs.Constant):
                idx = np.asarray(consumer.inputs[1].values)
                picked = [dims[int(i)] for i in idx.reshape(-1)], idx.shape
            elif consumer.op == "Slice" and all(isinstance(t, gs.Constant) for t in consumer.inputs[1:]):
                st, en = (int(np.asarray(t.values).reshape(-1)[0]) for t in consumer.inputs[1:3])
                steps = consumer.inputs[4].values if len(consumer.inputs) > 4 else [1]
                picked = dims[slice(st, en, int(np.asarray(steps).reshape(-1)[0]))], None
            if picked is None or not all(isinstance(d, (int, np.integer)) and d >= 0 for d in picked[0]):
                continue
            values = np.array(picked[0], np.int64)
            if picked[1] is not None:
                values = values.reshape(picked[1])
            _replace_uses(consumer.outputs[0], gs.Constant(consumer.outputs[0].name + "_static", values))
            consumer.outputs.clear()
            consumer.inputs.clear()
            folded = True
    return folded


def _fold_constant_nodes(graph: gs.Graph) -> None:
    """Replace nodes whose inputs are all constants by their constant outputs."""
    from onnx.reference import ReferenceEvaluator

    graph_outputs = {t.name for t in graph.outputs}
    graph.toposort()
    for node in list(graph.nodes):
        if node.op not in _FOLDABLE or node.domain not in (None, "", "ai.onnx"):
            continue
        if any(o.name in graph_outputs for o in node.outputs):
            continue
        ins = [t for t in node.inputs if t.name]
        if not all(isinstance(t, gs.Constant) for t in ins):
            continue
        if node.op == "Identity":
            continue  # handled by _bypass_identities without evaluating anything
        if sum(t.values.nbytes for t in ins) > _FOLD_LIMIT_BYTES:
            continue
        if node.op == "Constant" and isinstance(node.attrs.get("value"), gs.Constant):
            values = [node.attrs["value"].values]
        else:
            try:
                values = _evaluate(ReferenceEvaluator, graph.opset, node)
            except Exception:
                continue
        for out, val in zip(node.outputs, values):
            const = gs.Constant(out.name if node.op == "Constant" else out.name + "_folded", np.asarray(val))
            _replace_uses(out, const)
        node.outputs.clear()
        node.inputs.clear()


def _evaluate(evaluator_cls, opset: int, node: gs.Node):
    inputs = [t for t in node.inputs]
    names = [t.name if t.name else "" for t in inputs]
    attrs = {k: numpy_helper.from_array(np.asarray(v.values)) if isinstance(v, gs.Constant) else v
             for k, v in node.attrs.items()}
    proto = onnx.helper.make_node(node.op, names, [f"out{i}" for i in range(len(node.outputs))], **attrs)
    g = onnx.helper.make_graph([proto], "fold", [], [onnx.helper.make_tensor_value_info(f"out{i}", 0, None)
                                                    for i in range(len(node.outputs))],
                               [numpy_helper.from_array(np.asarray(t.values), t.name) for t in inputs if t.name])
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", opset)])
    return evaluator_cls(m).run(None, {})


def _bypass_identities(graph: gs.Graph) -> None:
    """Make consumers of Identity(constant) read the constant directly."""
    graph_outputs = {t.name for t in graph.outputs}
    for node in graph.nodes:
        if node.op != "Identity" or not node.inputs or not isinstance(node.inputs[0], gs.Constant):
            continue
        out = node.outputs[0]
        if out.name in graph_outputs:
            continue
        src = node.inputs[0]
        _replace_uses(out, src)
        node.outputs.clear()
        node.inputs.clear()


def _replace_uses(old: gs.Tensor, new: gs.Tensor) -> None:
    for consumer in list(old.outputs):
        for i, t in enumerate(consumer.inputs):
            if t is old:
                consumer.inputs[i] = new


def _name_nodes(graph: gs.Graph) -> None:
    seen: set[str] = set()
    for i, node in enumerate(graph.nodes):
        name = node.name or f"{node.op}_{i}"
        base, k = name, 1
        while name in seen:
            name, k = f"{base}__{k}", k + 1
        node.name = name
        seen.add(name)
