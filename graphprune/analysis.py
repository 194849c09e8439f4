"""Channel-dependency analysis: which channels must be removed together.

Propagates channel maps through the graph in topological order with the rules of
`channel_rules`, then partitions elements into units (channels coupled one-to-one, e.g.
across a residual Add, or a whole group of a grouped Conv) and units into groups (units
made by the same producers: the set of layers that shrink together).
"""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphprune.channel_rules import BODY_OPS, check_supported, rule_for
from graphprune.channels import ChannelMap, PropagationContext, Source
from graphprune.errors import GraphpruneError

PRODUCER_KINDS = ("conv", "convtranspose", "gemm", "matmul")


@dataclass
class Group:
    """Channels that shrink together. `units` are the atoms of removal; `channels` is the
    width of its widest producer (they differ only for grouped convs, whose unit is a group)."""
    id: int
    channels: int
    units: int
    frozen_units: int
    members: list[str]
    prunable: bool
    reason: str
    inexact: list[str] = field(default_factory=list)
    producers: list[str] = field(default_factory=list)   # nodes whose filters these channels are

    def to_json(self) -> dict:
        return {"id": self.id, "channels": self.channels, "members": self.members, "producers": self.producers,
                "prunable": self.prunable, "reason": self.reason, "units": self.units,
                "frozen_units": self.frozen_units, "inexact": self.inexact}


@dataclass
class Analysis:
    model: onnx.ModelProto               # the normalised model the analysis describes
    groups: list[Group]
    maps: dict[str, ChannelMap]          # tracked axis of every tensor that carries channels
    sources: list[Source]
    unit_of: np.ndarray                  # unit id per element
    group_of_unit: np.ndarray            # group id per unit (-1: not reported)
    unit_frozen: np.ndarray              # bool per unit
    unit_inexact: np.ndarray             # bool per unit
    inexact_reasons: dict[int, list[str]]
    fingerprint: str
    allow_inexact: bool

    def group(self, gid: int) -> Group:
        return self.groups[gid]

    def units_of_group(self, gid: int) -> np.ndarray:
        return np.flatnonzero(self.group_of_unit == gid)


def fingerprint(model: onnx.ModelProto) -> str:
    """Identifies a graph's structure (node names, ops, wiring, in control-flow bodies too);
    plans refer to it."""
    h = hashlib.sha1()
    for n in all_nodes(model.graph):
        h.update(f"{n.name}|{n.op_type}|{','.join(n.input)}|{','.join(n.output)};".encode())
    return h.hexdigest()


def all_nodes(graph: onnx.GraphProto):
    """Every node of `graph` and of its If/Loop/Scan bodies, outer scope first."""
    for n in graph.node:
        yield n
    for n in graph.node:
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                yield from all_nodes(sub)


def walk_graphs(graph: gs.Graph):
    """A gs graph, then every control-flow body in it (nested ones too), outer first."""
    yield graph
    for node in graph.nodes:
        for v in node.attrs.values():
            if isinstance(v, gs.Graph):
                yield from walk_graphs(v)


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """gs import; initializers that old IR versions also list as inputs stay constants."""
    inits = {t.name for t in model.graph.initializer}
    if any(i.name in inits for i in model.graph.input):
        stripped = onnx.ModelProto()
        stripped.CopyFrom(model)
        keep = [i for i in stripped.graph.input if i.name not in inits]
        del stripped.graph.input[:]
        stripped.graph.input.extend(keep)
        model = stripped
    graph = gs.import_onnx(model)
    for g in walk_graphs(graph):  # rules read the opset to know attribute-vs-input forms
        for node in g.nodes:
            node._graphprune_opset = graph.opset
    return graph


def analyse_graph(model: onnx.ModelProto, allow_inexact: bool = False,
                  shaped: onnx.ModelProto | None = None) -> Analysis:
    """Analyse a model already normalised by `NormalizePass` (see `graphprune.analyse`).

    `shaped`: `model` with other shape information (the same nodes and names, inputs pinned
    by --input-shape, see `graphprune.passes.normalize.pinned_shapes`). Rules read shapes
    from it; the Analysis describes `model`, so a pruned model keeps the user's dynamic dims."""
    graph = import_graph(shaped if shaped is not None else model)
    check_supported([n for g in walk_graphs(graph) for n in g.nodes])
    if not any(n.op in ("Conv", "ConvTranspose") for g in walk_graphs(graph) for n in g.nodes):
        raise GraphpruneError("model has no Conv or ConvTranspose node: no filters to prune")
    ctx = PropagationContext(allow_inexact=allow_inexact, graph_outputs={t.name for t in graph.outputs})
    for node in graph.nodes:  # the If/Loop rules follow channels into their bodies
        rule_for(node).propagate(node, ctx)
    for out in graph.outputs:
        ctx.freeze_tensor(out, f"feeds graph output {out.name}")
    for name, op in _names_used_in_unfollowed_bodies(model.graph).items():
        if name in ctx.maps:
            ctx.freeze(ctx.maps[name].elems, f"{name} is used inside the body of {op}, which is not followed")
    return _partition(model, ctx, allow_inexact)


def _names_used_in_unfollowed_bodies(graph: onnx.GraphProto) -> dict[str, str]:
    """Names read inside the bodies of ops whose rule does not follow bodies (not If/Loop/Scan)."""
    names: dict[str, str] = {}
    for n in all_nodes(graph):
        if n.op_type in BODY_OPS and n.domain in ("", "ai.onnx"):
            continue
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                for sn in all_nodes(sub):
                    names.update((i, n.op_type) for i in sn.input)
    return names


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected-component labels of the undirected graph with edges (a[i], b[i]), numbered by
    each component's smallest element (scipy.sparse.csgraph's order). Hook each root under the
    smaller root across an edge, flatten by pointer jumping, repeat: numpy only, because importing
    scipy.sparse cost every `graphprune` process 0.3 s."""
    root = np.arange(n)
    a, b = np.asarray(a, np.intp), np.asarray(b, np.intp)
    while True:
        ra, rb = root[a], root[b]
        differ = ra != rb
        if not differ.any():
            break
        ra, rb = ra[differ], rb[differ]
        np.minimum.at(root, np.maximum(ra, rb), np.minimum(ra, rb))
        while True:  # every element points at its root again
            up = root[root]
            if np.array_equal(up, root):
                break
            root = up
    return np.unique(root, return_inverse=True)[1].reshape(-1)


def _freezes(ctx: PropagationContext, unit_of: np.ndarray, n_units: int):
    """Per element, the index of the first reason that froze it (-1: free); per unit, frozen."""
    frozen_reason = np.full(ctx.n, -1, np.int64)
    reasons: list[str] = []
    for elems, reason in ctx.freezes:
        reasons.append(reason)
        sel = elems[frozen_reason[elems] < 0]
        frozen_reason[sel] = len(reasons) - 1
    unit_frozen = np.zeros(n_units, bool)
    unit_frozen[unit_of[frozen_reason >= 0]] = True
    return frozen_reason, reasons, unit_frozen


def _inexact_units(ctx: PropagationContext, unit_of: np.ndarray, n_units: int):
    """Per unit, whether pruning it is inexact, and the reasons by unit."""
    unit_inexact = np.zeros(n_units, bool)
    inexact_of_unit: dict[int, set[str]] = {}
    for elems, reason in ctx.inexact:
        for u in np.unique(unit_of[elems]):
            inexact_of_unit.setdefault(int(u), set()).add(reason)
        unit_inexact[unit_of[elems]] = True
    return unit_inexact, inexact_of_unit


def _partition(model, ctx: PropagationContext, allow_inexact: bool) -> Analysis:
    n = ctx.n
    ua, ub = ctx.union_pairs()
    unit_of = _components(n, ua, ub)
    n_units = int(unit_of.max()) + 1 if n else 0

    # units made by the same source belong to the same group
    src_a, src_b = [], []
    for s in ctx.sources:
        if s.stop - s.start > 1:
            src_a.append(np.full(s.stop - s.start - 1, s.start))
            src_b.append(np.arange(s.start + 1, s.stop))
    ga = unit_of[np.concatenate(src_a)] if src_a else np.zeros(0, np.int64)
    gb = unit_of[np.concatenate(src_b)] if src_b else np.zeros(0, np.int64)
    group_raw = _components(n_units, ga, gb)

    frozen_reason, reasons, unit_frozen = _freezes(ctx, unit_of, n_units)
    unit_inexact, inexact_of_unit = _inexact_units(ctx, unit_of, n_units)

    # report groups that contain at least one real producer, in topological order
    producer_src = [s for s in ctx.sources if s.kind in PRODUCER_KINDS]
    order: list[int] = []
    seen = set()
    for s in producer_src:
        g = int(group_raw[unit_of[s.start]])
        if g not in seen:
            seen.add(g)
            order.append(g)
    renumber = np.full(int(group_raw.max()) + 1 if n_units else 0, -1, np.int64)
    renumber[order] = np.arange(len(order))
    group_of_unit = renumber[group_raw] if n_units else np.zeros(0, np.int64)

    members: list[list[str]] = [[] for _ in order]
    member_sets: list[set[str]] = [set() for _ in order]
    for node_name, elems in ctx.touches:
        if not len(elems):
            continue
        for g in np.unique(group_of_unit[unit_of[elems]]):
            if g >= 0 and node_name not in member_sets[g]:
                member_sets[g].add(node_name)
                members[g].append(node_name)

    width = np.zeros(len(order), np.int64)
    producers: list[list[str]] = [[] for _ in order]
    for s in producer_src:
        g = group_of_unit[unit_of[s.start]]
        width[g] = max(width[g], s.stop - s.start)
        producers[g].append(s.node)

    groups = []
    unit_group_count = np.bincount(group_of_unit[group_of_unit >= 0], minlength=len(order))
    frozen_count = np.bincount(group_of_unit[(group_of_unit >= 0) & unit_frozen], minlength=len(order))
    elem_group = group_of_unit[unit_of] if n else np.zeros(0, np.int64)
    for g in range(len(order)):
        units, frozen = int(unit_group_count[g]), int(frozen_count[g])
        in_group = (elem_group == g) & (frozen_reason >= 0)
        reason = ""
        if frozen:
            common = Counter(frozen_reason[in_group].tolist()).most_common(1)[0][0]
            reason = reasons[common]
            if frozen < units:
                reason = f"{frozen} of {units} frozen: {reason}"
        inexact = sorted({r for u in np.flatnonzero((group_of_unit == g) & unit_inexact)
                          for r in inexact_of_unit.get(int(u), ())})
        if inexact and frozen < units:
            reason = (reason + "; " if reason else "") + "inexact: " + inexact[0]
        groups.append(Group(id=g, channels=int(width[g]), units=units, frozen_units=frozen,
                            members=members[g], prunable=frozen < units, reason=reason, inexact=inexact,
                            producers=producers[g]))
    return Analysis(model=model, groups=groups, maps=ctx.maps, sources=ctx.sources, unit_of=unit_of,
                    group_of_unit=group_of_unit, unit_frozen=unit_frozen, unit_inexact=unit_inexact,
                    inexact_reasons={g.id: g.inexact for g in groups if g.inexact},
                    fingerprint=fingerprint(model), allow_inexact=allow_inexact)
