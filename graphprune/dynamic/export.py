"""One ONNX model for the whole dynamic network: trunk, branch head, If (early exit | gated rest).

Main graph (batch 1: the input's first dim is fixed to 1, so a runtime refuses other
batches instead of gating a whole batch by one sample's scores):

    trunk nodes (unchanged) -> branch tensor
    GlobalAveragePool (or AveragePool to a grid) -> Flatten -> Gemm(head) -> z (1, classes)
    Softmax -> ReduceMax (all axes) -> GreaterOrEqual(threshold) -> exit (bool scalar)
    If(exit) then: Identity(z)                                  (early exit: the branch's scores)
             else: TopK(z, k) -> class ids (k,)
                   per gate l: Gather(table_l, ids) -> ReduceSum(axis 0) -> TopK(N_l) -> idx_l
                   Gather(W_l folded with its BN, idx_l, axis 0), Gather(b_l, idx_l)
                   Gather(W of the consumer, idx_l, axis 1)   (Gemm: the input-feature axis)
                   the rest's nodes, the gated convs reading the gathered weights,
                   each folded BN removed (its output is the conv's)

The else branch reads the trunk's tensors and all weights from the outer scope, as ONNX
allows; every weight, table and constant is a main-graph initializer.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphprune.errors import GraphpruneError

METADATA_KEY = "graphprune.dynamic"
THRESHOLD = "dyn/threshold"
MIN_OPSET = 17


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def fold_bn(w: np.ndarray, b: np.ndarray | None, bn: onnx.NodeProto, inits: dict) -> tuple[np.ndarray, np.ndarray]:
    """Conv weight and bias with the following BatchNormalization (inference form) folded in."""
    gamma, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:5])
    scale = gamma / np.sqrt(var + float(_attr(bn, "epsilon", 1e-5)))
    b = np.zeros(w.shape[0]) if b is None else b.astype(np.float64)
    w2 = w.astype(np.float64) * scale.reshape(-1, *([1] * (w.ndim - 1)))
    return w2.astype(w.dtype), ((b - mean) * scale + beta).astype(w.dtype)


class _Builder:
    """Collects initializers (unique names) and the else branch's nodes."""

    def __init__(self):
        self.inits: dict[str, TensorProto] = {}
        self.nodes: list[onnx.NodeProto] = []

    def const(self, name: str, value) -> str:
        self.inits[name] = numpy_helper.from_array(np.asarray(value), name)
        return name

    def node(self, op, inputs, outputs, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, outputs, name=outputs[0], **attrs))
        return outputs[0]


def _selection(b: _Builder, gates, tables, k: int, z: str) -> list[str]:
    """Nodes choosing each gate's filter indices from the branch scores z; the index tensor names."""
    b.node("TopK", [z, b.const("dyn/k", np.array([k], np.int64))], ["dyn/topk_values", "dyn/classes2d"], axis=-1)
    ids = b.node("Reshape", ["dyn/classes2d", b.const("dyn/flat_shape", np.array([-1], np.int64))], ["dyn/classes"])
    axes0 = b.const("dyn/axes0", np.array([0], np.int64))
    out = []
    for i, (g, t) in enumerate(zip(gates, tables)):
        rows = b.node("Gather", [b.const(f"dyn/g{i}/table", t), ids], [f"dyn/g{i}/rows"], axis=0)
        score = b.node("ReduceSum", [rows, axes0], [f"dyn/g{i}/score"], keepdims=0)
        kk = b.const(f"dyn/g{i}/keep", np.array([g.keep], np.int64))
        b.node("TopK", [score, kk], [f"dyn/g{i}/values", f"dyn/g{i}/idx"], axis=0)
        out.append(f"dyn/g{i}/idx")
    return out


def _gather(b: _Builder, src: str, idx: str | None, axis: int, name: str) -> str:
    return src if idx is None else b.node("Gather", [src, idx], [name], axis=axis)


def _gated_nodes(b: _Builder, rest_model, split, idx: list[str], rename: dict) -> None:
    """The rest's nodes with the gated weights gathered (BN folded into gated convs)."""
    inits = {t.name: t for t in rest_model.graph.initializer}
    prod = {g.producer: i for i, g in enumerate(split.gates)}
    cons = {g.consumer: i for i, g in enumerate(split.gates)}
    folded_bn = {g.bn for g in split.gates if g.bn}
    nodes = {n.name: n for n in rest_model.graph.node}
    for node in rest_model.graph.node:
        if node.name in folded_bn:
            continue
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.input[:] = [rename.get(n, n) for n in node.input]
        if node.name in prod or node.name in cons:
            pi, ci = prod.get(node.name), cons.get(node.name)
            tag = f"dyn/{node.name}"
            w_name, b_name = node.input[1], (node.input[2] if len(node.input) > 2 and node.input[2] else None)
            if pi is not None:
                g = split.gates[pi]
                w = numpy_helper.to_array(inits[w_name])
                bias = numpy_helper.to_array(inits[b_name]) if b_name else None
                if g.bn:
                    w, bias = fold_bn(w, bias, nodes[g.bn], inits)
                    new.output[0] = g.out
                w_src = b.const(f"{tag}/W", w)
                b_src = b.const(f"{tag}/B", bias) if bias is not None else None
                w_src = _gather(b, w_src, idx[pi], 0, f"{tag}/W_out")
                b_src = _gather(b, b_src, idx[pi], 0, f"{tag}/B_out") if b_src else None
            else:
                w_src, b_src = rename.get(w_name, w_name), (rename.get(b_name, b_name) if b_name else None)
            if ci is not None:
                axis = (1 if _attr(node, "transB", 0) else 0) if node.op_type == "Gemm" else 1
                w_src = _gather(b, w_src, idx[ci], axis, f"{tag}/W_in")
            new.input[1] = w_src
            if b_src is not None and len(new.input) > 2:
                new.input[2] = b_src
            elif b_src is not None:
                new.input.append(b_src)
        new.output[:] = ["dyn/gated_output" if o == split.output else o for o in new.output]
        b.nodes.append(new)


def assemble(model: onnx.ModelProto, split, rest_model: onnx.ModelProto, head_w: np.ndarray, head_b: np.ndarray,
             tables, k: int, threshold: float, metadata: dict | None = None, pool: tuple | None = None
             ) -> onnx.ModelProto:
    """The dynamic ONNX model (see the module docstring). `model` is the normalised original,
    `rest_model` the (fine-tuned) rest as extracted for the torch side."""
    from graphprune import metadata as md
    main_inits = {t.name: t for t in model.graph.initializer}
    trunk_reads = {i for n in split.trunk for i in n.input}
    outer = _Builder()
    for name in sorted(trunk_reads & set(main_inits)):
        outer.inits[name] = main_inits[name]
    # rest weights: fine-tuned copies; a name the trunk also reads gets its own name
    rename = {}
    for t in rest_model.graph.initializer:
        name = f"dyn/rest/{t.name}" if t.name in outer.inits else t.name
        rename[t.name] = name
        outer.const(name, numpy_helper.to_array(t))
    z = "dyn/branch_logits"
    pool_node = helper.make_node("GlobalAveragePool", [split.branch], ["dyn/pooled"], name="dyn/pool") \
        if pool is None else helper.make_node("AveragePool", [split.branch], ["dyn/pooled"], name="dyn/pool",
                                              kernel_shape=list(pool[0]), strides=list(pool[1]))
    head = [pool_node,
            helper.make_node("Flatten", ["dyn/pooled"], ["dyn/features"], name="dyn/flatten", axis=1),
            helper.make_node("Gemm", ["dyn/features", outer.const("dyn/head/W", head_w.astype(np.float32)),
                                      outer.const("dyn/head/B", head_b.astype(np.float32))], [z],
                             name="dyn/head", transB=1),
            helper.make_node("Softmax", [z], ["dyn/probs"], name="dyn/softmax", axis=-1),
            helper.make_node("ReduceMax", ["dyn/probs"], ["dyn/confidence"], name="dyn/confidence", keepdims=0),
            helper.make_node("GreaterOrEqual", ["dyn/confidence",
                                                outer.const(THRESHOLD, np.array(threshold, np.float32))],
                             ["dyn/exit"], name="dyn/exit")]
    gated = _Builder()
    idx = _selection(gated, split.gates, tables, k, z)
    _gated_nodes(gated, rest_model, split, idx, rename)
    outer.inits.update(gated.inits)
    out_vi = helper.make_tensor_value_info("dyn/exit_output", TensorProto.FLOAT, [1, split.classes])
    then_g = helper.make_graph([helper.make_node("Identity", [z], ["dyn/exit_output"], name="dyn/exit_identity")],
                               "early_exit", [], [out_vi])
    else_g = helper.make_graph(gated.nodes, "gated_rest", [],
                               [helper.make_tensor_value_info("dyn/gated_output", TensorProto.FLOAT,
                                                              [1, split.classes])])
    cond = helper.make_node("If", ["dyn/exit"], [split.output], name="dyn/if", then_branch=then_g,
                            else_branch=else_g)
    graph = helper.make_graph(list(split.trunk) + head + [cond], (model.graph.name or "model") + "_dynamic",
                              [_batch_one(i) for i in model.graph.input if i.name not in main_inits],
                              [helper.make_tensor_value_info(split.output, TensorProto.FLOAT, [1, split.classes])],
                              list(outer.inits.values()))
    out = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name="graphprune dynamic")
    out.ir_version = model.ir_version
    for p in model.metadata_props:
        if not p.key.startswith("graphprune.importance"):
            out.metadata_props.add(key=p.key, value=p.value)
    if metadata is not None:
        md.set_json(out, METADATA_KEY, metadata)
    try:
        onnx.checker.check_model(out, full_check=True)
    except Exception as exc:  # a bug here, not the user's input: name it
        raise GraphpruneError(f"the assembled dynamic model is not valid ONNX: {str(exc).splitlines()[0]}") from None
    return out


def _batch_one(vi: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    """The input with its first dim fixed to 1: the gating is decided per input."""
    out = onnx.ValueInfoProto()
    out.CopyFrom(vi)
    dims = out.type.tensor_type.shape.dim
    if len(dims):
        dims[0].Clear()
        dims[0].dim_value = 1
    return out


def with_threshold(model: onnx.ModelProto, threshold: float) -> onnx.ModelProto:
    """A copy with another exit threshold (> 1: never exit, the longest path; 0: always exit)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name == THRESHOLD:
            t.CopyFrom(numpy_helper.from_array(np.array(threshold, np.float32), THRESHOLD))
            return out
    raise GraphpruneError(f"the model has no {THRESHOLD} initializer: not a graphprune dynamic model")
