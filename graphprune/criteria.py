"""Ranking channels: one score per unit, higher = more important.

Scores come per producer (a Conv's filters, a Gemm's output features) or per BN layer,
are normalised per layer (divided by the layer's mean, so layers of different scale
compare), and averaged over every layer that touches a unit: a residual unit is ranked
by all the convs that write it.
"""
from __future__ import annotations

import numpy as np
import onnx

from graphprune.analysis import Analysis, all_nodes
from graphprune.arrays import view
from graphprune.errors import GraphpruneError
from graphprune.metadata import read_importance

CRITERIA = ("l1", "l2", "bn", "metadata", "random")
_NAMES_SHOWN = 4


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def _weight(model: onnx.ModelProto, inits: dict, name: str) -> np.ndarray:
    """A producer's weight: an initializer, or DequantizeLinear of initializers (QDQ models)."""
    if name in inits:
        return view(inits[name])
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == name)
    q = view(inits[dq.input[0]]).astype(np.float64)
    scale = view(inits[dq.input[1]]).astype(np.float64)
    zp = view(inits[dq.input[2]]).astype(np.float64) if len(dq.input) > 2 and dq.input[2] else np.zeros(1)
    if scale.size > 1:
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1) % q.ndim
        shape = [-1 if i == axis else 1 for i in range(q.ndim)]
        scale, zp = scale.reshape(shape), zp.reshape(shape) if zp.size > 1 else zp
    return (q - zp) * scale


def _filter_norms(node: onnx.NodeProto, w: np.ndarray, kind: str, order: int) -> np.ndarray:
    """Norm of each output channel's weights."""
    if kind == "conv":
        flat = w.reshape(w.shape[0], -1)
    elif kind == "convtranspose":
        g = next((a.i for a in node.attribute if a.name == "group"), 1) or 1
        ci, co = w.shape[0] // g, w.shape[1]
        flat = w.reshape(g, ci, co, -1).transpose(0, 2, 1, 3).reshape(g * co, -1)
    elif kind == "gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        flat = w if trans_b else w.T
    else:  # matmul
        flat = w.T
    if order == 1:
        return np.abs(flat).sum(1, dtype=np.float64)
    return np.sqrt(np.einsum("ij,ij->i", flat, flat, dtype=np.float64))


def _normalised(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float64)
    mean = np.abs(v).mean() if v.size else 0.0
    return v / mean if mean > 0 else v


def producer_scores(an: Analysis, criterion: str) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[str]]:
    """(elements, scores) pairs to average per unit, and notes about fallbacks."""
    model = an.model
    nodes = {n.name: n for n in all_nodes(model.graph)}
    inits = _initializers(model)
    notes: list[str] = []
    pairs = []
    if criterion == "bn":
        for n in all_nodes(model.graph):
            if n.op_type == "BatchNormalization" and n.input[0] in an.maps and n.input[1] in inits:
                pairs.append((an.maps[n.input[0]].elems, np.abs(view(inits[n.input[1]]))))
        return pairs, notes
    meta = read_importance(model) if criterion == "metadata" else None
    if criterion == "metadata" and meta is None:
        raise GraphpruneError("criterion 'metadata' needs scores under 'graphprune.importance' "
                              "(run `graphprune importance` first)")
    missing: list[str] = []
    if meta is not None:
        _check_keys_attach(an, meta)
    for s in an.sources:
        if s.kind == "untracked":
            continue
        node = nodes[s.node]
        size = s.stop - s.start
        prunable = bool((~an.unit_frozen[an.unit_of[s.start:s.stop]]).any())
        if meta is not None and s.node in meta["scores"]:
            v = np.asarray(meta["scores"][s.node], np.float64)
            if v.shape != (size,):
                raise GraphpruneError(f"importance metadata for {s.node} has {v.size} scores, "
                                      f"the node has {size} output channels")
        else:
            if meta is not None and prunable:
                missing.append(s.node)
            w = _weight(model, inits, node.input[1])
            v = _filter_norms(node, w, s.kind, 2 if criterion == "l2" else 1)
        pairs.append((np.arange(s.start, s.stop), v))
    if missing:
        shown = ", ".join(missing[:_NAMES_SHOWN]) + (f", +{len(missing) - _NAMES_SHOWN} more"
                                                      if len(missing) > _NAMES_SHOWN else "")
        notes.append(f"{len(missing)} producer(s) have no importance metadata ({shown}); "
                     "their groups are ranked by L1 norm")
    return pairs, notes


def _check_keys_attach(an: Analysis, meta: dict) -> None:
    """Scores none of whose keys names a producer would silently become an L1 ranking: refuse.

    (Models scored before `graphprune importance` named the written model's nodes carry
    keys invented for unnamed nodes; rescoring fixes them.)"""
    producers = {s.node for s in an.sources if s.kind != "untracked"}
    keys = set(meta.get("scores", {}))
    if producers and keys and not keys & producers:
        raise GraphpruneError(f"importance metadata names {len(keys)} node(s) (e.g. {sorted(keys)[0]!r}) but none "
                              "is a Conv/Gemm/MatMul of this model; rerun `graphprune importance` on it")


def unit_scores(an: Analysis, criterion: str, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """One score per unit (higher = keep)."""
    if criterion not in CRITERIA:
        raise GraphpruneError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    n_units = len(an.unit_frozen)
    if criterion == "random":
        return np.random.default_rng(seed).random(n_units), []
    pairs, notes = producer_scores(an, criterion)
    acc = np.zeros(n_units)
    cnt = np.zeros(n_units)
    for elems, v in pairs:
        units = an.unit_of[elems]
        np.add.at(acc, units, _normalised(v))
        np.add.at(cnt, units, 1)
    if criterion == "bn" and (cnt == 0).any():
        fallback, _ = unit_scores(an, "l1")
        missing = (cnt == 0) & (an.group_of_unit >= 0) & ~an.unit_frozen
        if missing.any():
            notes.append(f"{int(missing.sum())} unit(s) have no BatchNormalization; ranked by L1 norm")
        return np.where(cnt > 0, acc / np.maximum(cnt, 1), fallback), notes
    return np.where(cnt > 0, acc / np.maximum(cnt, 1), np.inf), notes
