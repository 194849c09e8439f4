"""FoldConstantsPass: every node whose inputs are all constants becomes a constant.

Why: pruning slices weights, and the analysis follows Pad amounts, Slice bounds and
Reshape targets; all must be constant tensors. Exporters often compute them instead:
Paddle stores weights in `Constant` nodes, the ONNX zoo's light models build them with
`ConstantOfShape`, weight-standardised convs (NF-ResNet, BiT) compute ReduceMean/Sub/Div
on the weight before the Conv, Caffe converters compute Pad amounts from constants.

How: each foldable node is evaluated once with onnx's reference evaluator (onnx's own
definition of every standard op, so no op semantics are rewritten here), in topological
order, inside control-flow bodies too. `Shape`/`Size` of a tensor with a static shape,
and `Gather`/`Slice` picks of its static dims when others are dynamic, are constants too.

Bounded: a value much larger than the constants it was computed from (a ConstantOfShape
or Expand that materialises a big tensor from a few ints) is kept pending and written
only when a Conv/Gemm/MatMul reads it as its weight, so folding cannot blow up a model.
Each folded value is one constant however many nodes read it: sharing is kept.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from graphprune.arrays import constant_values
from graphprune.analysis import walk_graphs
from graphprune.passes.base import Pass
from graphprune.passes.graph_step import graph_pass, replace_uses

# ops whose result is not a function of their inputs, or which hold graphs (control_flow.py)
_NOT_FOLDABLE = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                 "Bernoulli", "If", "Loop", "Scan", "SequenceMap", "Optional", "OptionalGetElement",
                 "OptionalHasElement"}
_SMALL_BYTES = 1 << 20        # any value this small may be folded
_GROWTH = 2                   # above it, a value may be at most this many times its sources
_MAX_EVAL_BYTES = 1 << 30     # never evaluate a node whose inputs exceed this
_WEIGHT_SLOTS = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (0, 1), "MatMul": (0, 1)}


class FoldConstantsPass(Pass):
    name = "fold-constants"

    def run(self, model: onnx.ModelProto) -> onnx.ModelProto:
        return graph_pass(model, fold_constants)


def fold_constants(graph: gs.Graph) -> bool:
    """Fold in `graph` and its subgraphs; True when anything changed."""
    graph.toposort()
    return _Folder(graph.opset).fold(graph)


class _Folder:
    def __init__(self, opset: int):
        self.opset = opset
        self.source_bytes: dict[int, int] = {}          # id(tensor) -> bytes of the constants behind it
        self.pending: dict[int, tuple[gs.Tensor, np.ndarray, gs.Node]] = {}
        self.changed = False

    def fold(self, graph: gs.Graph) -> bool:
        for sub in walk_graphs(graph):
            outputs = {id(t) for t in sub.outputs}
            for node in list(sub.nodes):
                if node.outputs and not any(id(o) in outputs for o in node.outputs):
                    self._visit(node)
        self._flush_pending()
        return self.changed

    # -- values -------------------------------------------------------------
    def _value(self, t: gs.Tensor) -> np.ndarray | None:
        if isinstance(t, gs.Constant):
            return constant_values(t)
        hit = self.pending.get(id(t))
        return None if hit is None else hit[1]

    def _sources(self, t: gs.Tensor) -> int:
        if id(t) in self.source_bytes:
            return self.source_bytes[id(t)]
        return int(constant_values(t).nbytes) if isinstance(t, gs.Constant) else 0

    # -- one node -------------------------------------------------------------
    def _visit(self, node: gs.Node) -> None:
        if node.op in _NOT_FOLDABLE or node.domain not in (None, "", "ai.onnx"):
            return
        if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
            return
        if node.op in ("Shape", "Size"):
            self._static_shape(node)
            return
        if node.op in ("Gather", "Slice") and node.inputs and _producer_op(node.inputs[0]) == "Shape":
            if self._static_shape_pick(node):
                return
        ins = [t for t in node.inputs if t.name]
        values = [self._value(t) for t in ins]
        if any(v is None for v in values) or sum(v.nbytes for v in values) > _MAX_EVAL_BYTES:
            return
        if node.op == "Identity":
            return  # NormalizePass bypasses it without copying the constant
        try:
            outs = self._evaluate(node)
        except Exception:
            return  # an op the reference evaluator lacks: left computed, the analysis says why
        src = sum(self._sources(t) for t in ins)
        for t, v in zip(node.outputs, outs):
            self._produce(node, t, np.asarray(v), src)

    def _produce(self, node: gs.Node, t: gs.Tensor, v: np.ndarray, src: int) -> None:
        if not t.name:
            return
        self.source_bytes[id(t)] = src
        if v.nbytes > max(_SMALL_BYTES, _GROWTH * src):
            self.pending[id(t)] = (t, v, node)   # written only if a weight needs it
            return
        self._materialise(node, t, v)

    def _materialise(self, node: gs.Node, t: gs.Tensor, v: np.ndarray) -> None:
        name = t.name if node.op == "Constant" else t.name + "_folded"
        const = gs.Constant(name, v if v.flags.c_contiguous else v.copy(order="C"))  # keeps 0-d
        self.source_bytes[id(const)] = self.source_bytes.get(id(t), int(v.nbytes))
        replace_uses(t, const)
        node.outputs.remove(t)
        if not node.outputs:
            node.inputs.clear()
        self.changed = True

    def _flush_pending(self) -> None:
        for t, v, node in self.pending.values():
            if any(i in _WEIGHT_SLOTS.get(c.op, ()) and c.inputs[i] is t
                   for c in t.outputs for i in range(len(c.inputs))):
                self._materialise(node, t, v)

    def _evaluate(self, node: gs.Node) -> list:
        if node.op == "Constant" and isinstance(node.attrs.get("value"), gs.Constant):
            return [constant_values(node.attrs["value"])]
        from onnx.reference import ReferenceEvaluator

        names = [t.name if t.name else "" for t in node.inputs]
        attrs = {k: numpy_helper.from_array(np.asarray(constant_values(v))) if isinstance(v, gs.Constant) else v
                 for k, v in node.attrs.items()}
        outs = [f"out{i}" for i in range(len(node.outputs))]
        proto = onnx.helper.make_node(node.op, names, outs, **attrs)
        inits = {t.name: self._value(t) for t in node.inputs if t.name}
        g = onnx.helper.make_graph([proto], "fold", [], [onnx.helper.make_tensor_value_info(o, 0, None) for o in outs],
                                   [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
        m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", self.opset)])
        return ReferenceEvaluator(m).run(None, {})

    # -- shapes -------------------------------------------------------------
    def _static_shape(self, node: gs.Node) -> None:
        dims = _dims(node.inputs[0]) if node.inputs else None
        if dims is None or any(d is None for d in dims):
            return
        if node.op == "Size":
            v = np.array(int(np.prod(dims)), np.int64)
        else:
            v = np.array(dims[slice(node.attrs.get("start", 0), node.attrs.get("end", None))], np.int64)
        self._produce(node, node.outputs[0], v, 0)

    def _static_shape_pick(self, node: gs.Node) -> bool:
        """`x.size(1)` with a dynamic batch: Gather/Slice of Shape(x) picking static dims."""
        shape_node = node.inputs[0].inputs[0]
        dims = _dims(shape_node.inputs[0]) if shape_node.inputs else None
        if dims is None:
            return False
        dims = dims[slice(shape_node.attrs.get("start", 0), shape_node.attrs.get("end", None))]
        rest = [self._value(t) if t.name else None for t in node.inputs[1:]]
        if any(v is None for t, v in zip(node.inputs[1:], rest) if t.name):
            return False
        try:
            if node.op == "Gather":
                idx = np.asarray(rest[0])
                picked = np.asarray(dims, object)[idx.reshape(-1)].reshape(idx.shape)
            else:
                st, en = (int(np.asarray(v).reshape(-1)[0]) for v in rest[:2])
                axes = rest[2] if len(rest) > 2 and rest[2] is not None else [0]
                step = int(np.asarray(rest[3]).reshape(-1)[0]) if len(rest) > 3 and rest[3] is not None else 1
                if len(np.asarray(axes).reshape(-1)) != 1 or int(np.asarray(axes).reshape(-1)[0]) not in (0, -1):
                    return False
                picked = np.asarray(dims[slice(st, en, step)], object)
        except (IndexError, ValueError, TypeError):
            return False
        if any(d is None for d in picked.reshape(-1)):
            return False
        self._produce(node, node.outputs[0], picked.astype(np.int64), 0)
        return True


def _dims(t: gs.Tensor) -> list | None:
    if t.shape is None:
        return None
    return [int(d) if isinstance(d, (int, np.integer)) and d >= 0 else None for d in t.shape]


def _producer_op(t: gs.Tensor) -> str | None:
    return t.inputs[0].op if isinstance(t, gs.Variable) and len(t.inputs) == 1 else None
