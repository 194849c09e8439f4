"""Subset dispatch: the gated path with one constant-weight copy of the rest per class subset.

Why: in the gather form (graphprune.dynamic.export) every gated conv reads weights that a
Gather computes per input, and onnxruntime neither pre-packs such weights nor folds the
Gathers: on the VGG example at budget 0.5 the gated rest costs about 3x what the same
rest with constant weights costs (docs/dynamic.md, "Subset dispatch"). Since the filters
kept depend only on the *set* of the branch's top-k classes, there are C(classes, k)
possible gated paths (120 for 10 classes and k = 3), each a static pruned rest. This
pass turns a gather-form model into:

    else branch of the exit If:
      TopK(z, k) -> ids; sort them (TopK, smallest first) -> c_0 < ... < c_{k-1}
      subset index s = sum_i C(c_i, i + 1)  (the combinatorial number system: 0 .. S-1)
      a balanced tree of If(s < mid) nodes; leaf s: the rest with its subset's weights
      sliced ahead of time (constant initializers of the leaf graph, BN folded as before)

The function is the gather form's exactly (same filters, same order, same arithmetic);
what changes is that every conv weight is a constant the runtime can pre-pack, at the
cost of S copies of the gated layers' weights (refused above --max-subset-bytes) and a
tree of ceil(log2 S) Ifs on the gated path.
"""
from __future__ import annotations

from itertools import combinations
from math import comb

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphprune.errors import GraphpruneError
from graphprune.shapes import names_read

DEFAULT_MAX_BYTES = 256 << 20


def subset_rank(ids) -> int:
    """The index of a class set in the combinatorial number system (0 .. C(classes, k) - 1)."""
    return sum(comb(int(c), i + 1) for i, c in enumerate(sorted(int(v) for v in ids)))


def _if_node(g: onnx.GraphProto):
    return next(n for n in g.node if n.op_type == "If")


def _branch(node, name):
    return next(a.g for a in node.attribute if a.name == name)


def _selection_outputs(gates: int) -> set[str]:
    out = {"dyn/topk_values", "dyn/classes2d", "dyn/classes"}
    for i in range(gates):
        out |= {f"dyn/g{i}/rows", f"dyn/g{i}/score", f"dyn/g{i}/values", f"dyn/g{i}/idx"}
    return out


def _kept(tables: list, keeps: list, subset) -> list[np.ndarray]:
    """Each gate's kept filter indices in TopK's order (descending exact integer sums)."""
    out = []
    for t, n in zip(tables, keeps):
        s = t[list(subset)].astype(np.float64).sum(0)
        out.append(np.argsort(-s, kind="stable")[:n].astype(np.int64))
    return out


def _leaf(body, weight_gathers, consts, idx, tag: str, out_name: str) -> onnx.GraphProto:
    """The rest for one subset: every weight Gather evaluated into a constant of this leaf graph."""
    values: dict[str, np.ndarray] = {}
    for n in weight_gathers:
        src = values[n.input[0]] if n.input[0] in values else consts[n.input[0]]
        axis = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "axis"), 0)
        values[n.output[0]] = np.take(src, idx[n.input[1]], axis=axis)
    used = {i for n in body for i in n.input}
    inits = [numpy_helper.from_array(np.ascontiguousarray(v), f"{k}@{tag}") for k, v in values.items() if k in used]
    nodes = []
    for n in body:
        new = onnx.NodeProto()
        new.CopyFrom(n)
        new.input[:] = [f"{i}@{tag}" if i in values else i for i in n.input]
        nodes.append(new)
    # the weights live in the leaf graph: onnxruntime pre-packs a subgraph's own initializers, not
    # outer-scope ones read from a subgraph (measured: 0.44 vs 0.64 ms on the VGG example)
    return helper.make_graph(nodes, f"subset_{tag}", [], [helper.make_tensor_value_info(out_name, TensorProto.FLOAT,
                                                                                        None)], inits)


def _fill_tree(graph: onnx.GraphProto, leaves: list, lo: int, hi: int, s: str, out: str) -> None:
    """Append to `graph` the nodes computing `out` from leaves lo .. hi-1, chosen by the subset index s.

    Built in place, each leaf copied once into its final position (nesting finished graphs with
    make_graph copies every subtree again at every level: 5 s instead of 0.5 s for 120 leaves)."""
    mid = (lo + hi) // 2
    cond = f"dyn/tree/{lo}_{hi}/less"
    graph.node.append(helper.make_node("Less", [s, f"dyn/tree/mid{mid}"], [cond], name=cond))
    empty = helper.make_graph([], "empty", [], [])
    node = graph.node.add()
    node.CopyFrom(helper.make_node("If", [cond], [out], name=f"dyn/tree/{lo}_{hi}/if", then_branch=empty,
                                   else_branch=empty))
    for attr in node.attribute:
        a, b = (lo, mid) if attr.name == "then_branch" else (mid, hi)
        if b - a == 1:
            attr.g.CopyFrom(leaves[a])
            continue
        name = f"dyn/tree/{a}_{b}"
        attr.g.name = f"tree_{a}_{b}"
        attr.g.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
        _fill_tree(attr.g, leaves, a, b, s, name)


def _index_nodes(k: int, classes: int) -> tuple[list, list]:
    """Nodes and initializers computing the subset index dyn/subset from the branch scores."""
    binom = np.array([[comb(c, i + 1) for c in range(classes)] for i in range(k)], np.int64).reshape(-1)
    inits = [numpy_helper.from_array(binom, "dyn/binom"),
             numpy_helper.from_array(np.arange(k, dtype=np.int64) * classes, "dyn/binom_offsets")]
    nodes = [helper.make_node("TopK", ["dyn/branch_logits", "dyn/k"], ["dyn/topk_values", "dyn/classes2d"],
                              name="dyn/topk", axis=-1),
             helper.make_node("Reshape", ["dyn/classes2d", "dyn/flat_shape"], ["dyn/classes"], name="dyn/classes"),
             helper.make_node("Cast", ["dyn/classes"], ["dyn/classes_f"], name="dyn/classes_f", to=TensorProto.FLOAT),
             helper.make_node("TopK", ["dyn/classes_f", "dyn/k"], ["dyn/sorted_f", "dyn/sorted_pos"],
                              name="dyn/sort", axis=0, largest=0, sorted=1),
             helper.make_node("Cast", ["dyn/sorted_f"], ["dyn/sorted"], name="dyn/sorted", to=TensorProto.INT64),
             helper.make_node("Add", ["dyn/sorted", "dyn/binom_offsets"], ["dyn/binom_at"], name="dyn/binom_at"),
             helper.make_node("Gather", ["dyn/binom", "dyn/binom_at"], ["dyn/binom_terms"], name="dyn/binom_terms",
                              axis=0),
             helper.make_node("ReduceSum", ["dyn/binom_terms", "dyn/axes0"], ["dyn/subset"], name="dyn/subset",
                              keepdims=0)]
    return nodes, inits


def specialise(model: onnx.ModelProto, max_bytes: int = DEFAULT_MAX_BYTES) -> onnx.ModelProto:
    """The subset-dispatch form of a gather-form dynamic model (see the module docstring)."""
    from graphprune import metadata as md
    from graphprune.dynamic.export import METADATA_KEY
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    ifn = _if_node(g)
    else_g = _branch(ifn, "else_branch")
    gates = sum(1 for n in consts if n.startswith("dyn/g") and n.endswith("/table"))
    tables = [consts[f"dyn/g{i}/table"] for i in range(gates)]
    keeps = [int(consts[f"dyn/g{i}/keep"][0]) for i in range(gates)]
    k, classes = int(consts["dyn/k"][0]), tables[0].shape[0]
    subsets = sorted(combinations(range(classes), k), key=subset_rank)
    sel = _selection_outputs(gates)
    idx_names = {f"dyn/g{i}/idx" for i in range(gates)}
    weight_gathers = [n for n in else_g.node if n.op_type == "Gather" and n.input[1] in idx_names]
    body = [n for n in else_g.node if not (set(n.output) & sel) and n not in weight_gathers]
    per_leaf = _leaf_bytes(weight_gathers, consts, keeps, gates)
    if per_leaf * len(subsets) > max_bytes:
        raise GraphpruneError(f"subset dispatch needs {len(subsets)} copies of the gated weights "
                              f"({per_leaf * len(subsets) / 2**20:.0f} MiB) > the limit of {max_bytes / 2**20:.0f} "
                              "MiB; use the gather form, a smaller --k, or raise --max-subset-bytes")
    out_name = else_g.output[0].name
    leaves = []
    for j, subset in enumerate(subsets):
        idx = dict(zip([f"dyn/g{i}/idx" for i in range(gates)], _kept(tables, keeps, subset)))
        leaves.append(_leaf(body, weight_gathers, consts, idx, f"s{j}", out_name))
    index_nodes, index_inits = _index_nodes(k, classes)
    mids = {(lo + hi) // 2 for lo, hi in _spans(0, len(subsets))}
    tree_inits = [numpy_helper.from_array(np.array(m, np.int64), f"dyn/tree/mid{m}") for m in sorted(mids)]
    outputs = list(else_g.output)
    else_g.Clear()
    else_g.name = "gated_rest_by_subset"
    else_g.node.extend(index_nodes)
    else_g.output.extend(outputs)
    if len(leaves) == 1:
        else_g.node.extend(leaves[0].node)
        else_g.initializer.extend(leaves[0].initializer)
    else:
        _fill_tree(else_g, leaves, 0, len(leaves), "dyn/subset", out_name)
    used = names_read(out.graph)
    keep_inits = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep_inits + index_inits + tree_inits)
    meta = md.get_json(out, METADATA_KEY) or {}
    meta["dispatch"] = {"form": "subsets", "subsets": len(subsets), "bytes_per_subset": per_leaf}
    md.set_json(out, METADATA_KEY, meta)
    return out


def _spans(lo: int, hi: int):
    if hi - lo <= 1:
        return
    yield lo, hi
    mid = (lo + hi) // 2
    yield from _spans(lo, mid)
    yield from _spans(mid, hi)


def _leaf_bytes(weight_gathers, consts, keeps, gates) -> int:
    """Bytes of one leaf's sliced weights (shapes only: every subset keeps the same counts)."""
    shapes: dict[str, tuple] = {}
    keep_of = {f"dyn/g{i}/idx": keeps[i] for i in range(gates)}
    for n in weight_gathers:
        src = list(shapes[n.input[0]] if n.input[0] in shapes else consts[n.input[0]].shape)
        axis = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "axis"), 0)
        src[axis] = keep_of[n.input[1]]
        shapes[n.output[0]] = tuple(src)
    chained = {n.input[0] for n in weight_gathers}      # W_out sliced again on its input axis: not stored
    return int(sum(4 * np.prod(s) for name, s in shapes.items() if name not in chained))


