"""NormalizePass: make real-world exports look alike, changing nothing they compute.

What differs between exporters and matters for pruning:
- weights, pads, Slice bounds computed from constants (Paddle `Constant` nodes, the ONNX
  zoo's `ConstantOfShape`, weight standardisation, Caffe pads): folded into initializers
  (fold_constants.py) so every weight is a constant tensor the pruning pass can slice;
- an `If` whose condition folds to a constant: replaced by its taken branch (control_flow.py);
- `Identity` in front of an initializer (PyTorch): the consumer reads the initializer;
- nodes without a name, or with a duplicate name (in any scope): named uniquely, because
  importance scores and pruning plans refer to nodes by name; tensor names are made
  unique across control-flow scopes too, because channel maps are keyed by name;
- weights inside If/Loop bodies: written as initializers of the main graph (bodies read
  them from the outer scope), so every weight is found in one place;
- missing shape information: inferred, because the analysis follows channel axes.
Shared initializers are left shared: the analysis couples the channels of every consumer of one
weight (tied weights), so the pruning pass slices it once, and never corrupts another user.
"""
from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.logger import G_LOGGER

from graphprune.analysis import import_graph, walk_graphs
from graphprune.passes.base import Pass
from graphprune.passes.control_flow import inline_constant_ifs
from graphprune.passes.fold_constants import fold_constants
from graphprune.passes.graph_step import replace_uses
from graphprune.passes.rewrite import export
from graphprune.shapes import infer_shapes, pin_input_shapes

G_LOGGER.severity = G_LOGGER.ERROR  # gs warns on every unused tensor

_MAX_ROUNDS = 6  # fold, inline the Ifs that became constant, re-infer shapes, fold again


class NormalizePass(Pass):
    name = "normalize"

    def run(self, model: onnx.ModelProto) -> onnx.ModelProto:
        graph = import_graph(infer_shapes(model))
        for _ in range(_MAX_ROUNDS):
            folded = fold_constants(graph)
            inlined = inline_constant_ifs(graph)
            if not inlined and not (folded and _reads_unknown_shapes(graph)):
                break
            # folded Reshape targets and inlined bodies make more shapes static: infer again
            graph = import_graph(infer_shapes(export(graph, model)))
        _bypass_identities(graph)
        _name_nodes(graph)
        _unique_tensor_names(graph)
        return infer_shapes(_with_recorded_shapes(export(graph, model), model))


def _with_recorded_shapes(out: onnx.ModelProto, model: onnx.ModelProto) -> onnx.ModelProto:
    """Normalisation changes no tensor's shape, so the shapes the exporter recorded still hold
    (export drops them: after pruning they would be stale). Inference cannot always re-derive
    them (a Reshape target built from a graph input), so they go back in."""
    produced = {o for n in out.graph.node for o in n.output}
    out.graph.value_info.extend(v for v in model.graph.value_info
                                if v.name in produced and v.type.tensor_type.HasField("shape"))
    return out


def pinned_shapes(model: onnx.ModelProto, input_shapes: dict[str, list[int]]) -> onnx.ModelProto:
    """`model` (normalised) with the shapes its tensors have when the inputs have `input_shapes`.

    Pinned dims make more `Shape` reads static; shape inference alone does not always follow
    them into Reshape targets (Paddle's Shape/Slice/Concat), so a normalised copy of the
    pinned model is inferred and its shapes are copied back by name. Only shapes come back:
    the analysed graph is still `model`'s, whose computed values adapt to pruned sizes."""
    pinned = pin_input_shapes(model, input_shapes)
    folded = NormalizePass().run(pinned)
    known = {v.name: v for v in folded.graph.value_info if v.type.tensor_type.HasField("shape")}
    have = {v.name for v in pinned.graph.value_info if v.type.tensor_type.HasField("shape")}
    pinned.graph.value_info.extend(v for name, v in known.items() if name not in have)
    return pinned


def _reads_unknown_shapes(graph: gs.Graph) -> bool:
    """Whether some Shape node reads a tensor whose dims are not all known."""
    return any(n.op == "Shape" and n.inputs and (n.inputs[0].shape is None or not all(
        isinstance(d, int) and d >= 0 for d in n.inputs[0].shape)) for g in walk_graphs(graph) for n in g.nodes)


def _bypass_identities(graph: gs.Graph) -> None:
    """Make consumers of Identity(constant) read the constant directly."""
    for g in walk_graphs(graph):
        outputs = {id(t) for t in g.outputs}
        for node in g.nodes:
            if node.op != "Identity" or not node.inputs or not isinstance(node.inputs[0], gs.Constant):
                continue
            out = node.outputs[0]
            if id(out) in outputs:
                continue
            replace_uses(out, node.inputs[0])
            node.outputs.clear()
            node.inputs.clear()


def _name_nodes(graph: gs.Graph) -> None:
    seen: set[str] = set()
    for g in walk_graphs(graph):
        for i, node in enumerate(g.nodes):
            name = node.name or f"{node.op}_{i}"
            base, k = name, 1
            while name in seen:
                name, k = f"{base}__{k}", k + 1
            node.name = name
            seen.add(name)


def _unique_tensor_names(graph: gs.Graph) -> None:
    """Two tensors of different scopes with one name (both branches of an If may use
    `/Conv_output_0`): the later one is renamed; names are local to a body, so this is safe."""
    owner: dict[str, int] = {}
    for g in walk_graphs(graph):
        tensors = list(g.inputs) + [t for n in g.nodes for t in list(n.inputs) + list(n.outputs)]
        for t in tensors:
            if not t.name:
                continue
            if owner.setdefault(t.name, id(t)) != id(t):
                base, k = t.name, 1
                while f"{base}__s{k}" in owner:
                    k += 1
                t.name = f"{base}__s{k}"
                owner[t.name] = id(t)
