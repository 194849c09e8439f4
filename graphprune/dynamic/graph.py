"""Where the coarse branch attaches and which later convs can be gated, read from the ONNX graph alone.

No torch here: the split of a (normalised) model into the trunk (everything the branch
point needs) and the rest, and the list of gates, are plain graph facts that the torch
model (graphprune.dynamic.gated) and the ONNX assembly (graphprune.dynamic.export) must
agree on, so both read them from one `Split`.

A gate is a Conv whose output channels can be chosen per input *exactly*: the Conv
(group 1, constant weight), optionally the BatchNormalization that is its only consumer
(folded into the conv on export), then a chain of single-consumer ops that act on each
channel alone and map 0 to 0 (Relu, MaxPool, ...), ending in exactly one consumer that
reads the channels as its input channels: a Conv (group 1) or GlobalAveragePool ->
Flatten -> Gemm. Removing a channel there is the same as zeroing it after the BN, which
is how the torch side gates (a mask), so the two compute the same function. Channels
that meet anything else (a residual Add, a Concat, a graph output) are not gated.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from graphprune.errors import GraphpruneError

# per-channel ops with f(0) = 0: a removed (zeroed) channel stays zero through them
ZERO_PRESERVING = ("Relu", "LeakyRelu", "Tanh", "Elu", "Selu", "HardSwish", "MaxPool", "AveragePool", "Identity",
                   "Dropout")


@dataclass
class Gate:
    """One gated conv: `producer` (Conv node), `bn` (its folded BN node or None), `out` (the tensor
    whose channels are masked: the BN's output, else the conv's), `consumer` (the Conv or Gemm
    node reading them as input channels), `channels` and `keep` (top-N kept per input)."""
    producer: str
    bn: str | None
    out: str
    consumer: str
    channels: int
    keep: int = 0


@dataclass
class Split:
    """The model cut at `branch` (a 4-D tensor): `trunk` and `rest` nodes (graph order), the
    trunk tensors the rest reads (`rest_inputs`, the branch tensor first), the gates."""
    branch: str
    trunk: list = field(default_factory=list)
    rest: list = field(default_factory=list)
    rest_inputs: list = field(default_factory=list)
    gates: list = field(default_factory=list)
    output: str = ""
    classes: int = 0


def _inits(model) -> dict:
    return {t.name: t for t in model.graph.initializer}


def _shapes(model) -> dict[str, list]:
    """Static dims (None when unknown) of every tensor shape inference knows."""
    out = {}
    vis = list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
    for vi in vis:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return out


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _consumers(nodes) -> dict[str, list]:
    cons: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            if i:
                cons.setdefault(i, []).append(n)
    return cons


def resolve_branch(model: onnx.ModelProto, at: str) -> str:
    """The tensor named by `at`: a tensor produced by a node, or a node name (its first output)."""
    produced = {o for n in model.graph.node for o in n.output if o}
    if at in produced:
        return at
    by_name = {n.name: n for n in model.graph.node}
    if at in by_name and by_name[at].output:
        return by_name[at].output[0]
    raise GraphpruneError(f"--branch-at {at!r} is neither a node nor a tensor computed by the model "
                          "(graph inputs and weights are not branch points)")


def _ancestors(model, tensor: str) -> set[str]:
    """Names of the nodes needed to compute `tensor`."""
    producer = {o: n for n in model.graph.node for o in n.output if o}
    seen, stack = set(), [tensor]
    while stack:
        n = producer.get(stack.pop())
        if n is None or n.name in seen:
            continue
        seen.add(n.name)
        stack.extend(i for i in n.input if i)
    return seen


def classifier_output(model) -> tuple[str, int]:
    """(name, classes) of the model's one output, which must be (N, classes) scores."""
    if len(model.graph.output) != 1:
        raise GraphpruneError(f"dynamic pruning needs a classifier with one output; this model has "
                              f"{len(model.graph.output)}")
    out = model.graph.output[0]
    dims = _shapes(model).get(out.name)
    if dims is None or len(dims) != 2 or not dims[1]:
        raise GraphpruneError(f"dynamic pruning needs a classifier whose output is (N, classes); output "
                              f"{out.name!r} has shape {dims}")
    return out.name, int(dims[1])


def split_model(model: onnx.ModelProto, branch: str, budget: float) -> Split:
    """Cut a normalised model (graphprune.load) at tensor `branch` and find the gates after it."""
    shapes = _shapes(model)
    dims = shapes.get(branch)
    if dims is None or len(dims) != 4 or not dims[1]:
        raise GraphpruneError(f"branch point {branch!r} must be a 4-D (N, C, H, W) feature map with a known "
                              f"channel count; its shape is {dims}")
    output, classes = classifier_output(model)
    if branch == output:
        raise GraphpruneError(f"branch point {branch!r} is the model's output")
    trunk_names = _ancestors(model, branch)
    trunk = [n for n in model.graph.node if n.name in trunk_names]
    rest = [n for n in model.graph.node if n.name not in trunk_names]
    trunk_out = {o for n in trunk for o in n.output} | {i.name for i in model.graph.input}
    reads = [i for n in rest for i in n.input if i in trunk_out and i not in _inits(model)]
    rest_inputs = [branch] + sorted(set(reads) - {branch})
    split = Split(branch, trunk, rest, rest_inputs, output=output, classes=classes)
    split.gates = find_gates(model, rest, budget)
    return split


def _conv_ok(node, inits) -> bool:
    return (node.op_type == "Conv" and (_attr(node, "group", 1) == 1) and len(node.input) >= 2
            and node.input[1] in inits and len(inits[node.input[1]].dims) == 4
            and (len(node.input) < 3 or not node.input[2] or node.input[2] in inits))


def _single(cons, tensor, outputs):
    c = cons.get(tensor, [])
    return c[0] if len(c) == 1 and tensor not in outputs else None


def _follow(start: str, cons, outputs, inits):
    """The node reading `start`'s channels as input channels after zero-preserving per-channel ops."""
    t = start
    while True:
        c = _single(cons, t, outputs)
        if c is None:
            return None
        if c.op_type in ZERO_PRESERVING and c.input[0] == t:
            if c.op_type == "Dropout" and len(c.output) > 1 and c.output[1]:
                return None
            t = c.output[0]
            continue
        if _conv_ok(c, inits) and c.input[0] == t:
            return c
        if c.op_type == "GlobalAveragePool":
            f = _single(cons, c.output[0], outputs)
            if f is not None and f.op_type == "Flatten" and _attr(f, "axis", 1) == 1:
                g = _single(cons, f.output[0], outputs)
                if g is not None and g.op_type == "Gemm" and g.input[0] == f.output[0] and g.input[1] in inits \
                        and not _attr(g, "transA", 0):
                    return g
        return None


def find_gates(model, rest: list, budget: float) -> list[Gate]:
    """Every gateable conv among the `rest` nodes, in graph order, keeping round(budget * C) filters."""
    inits = _inits(model)
    outputs = {o.name for o in model.graph.output}
    cons = _consumers(model.graph.node)
    gates = []
    for node in rest:
        if not _conv_ok(node, inits):
            continue
        out, bn = node.output[0], None
        c = _single(cons, out, outputs)
        if c is not None and c.op_type == "BatchNormalization" and all(i in inits for i in c.input[1:5]) \
                and len(c.output) == 1:
            out, bn = c.output[0], c.name
        consumer = _follow(out, cons, outputs, inits)
        if consumer is None:
            continue
        channels = int(inits[node.input[1]].dims[0])
        keep = max(1, min(channels, int(round(budget * channels))))
        gates.append(Gate(node.name, bn, out, consumer.name, channels, keep))
    return gates


def candidates(model) -> list[tuple[str, int]]:
    """(tensor, convs before it) for every 4-D tensor that cuts the graph in two (the rest reads
    nothing of the trunk but it) and has a conv before and a gateable conv after it."""
    shapes = _shapes(model)
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    out = []
    for n in model.graph.node:
        t = n.output[0] if n.output else None
        dims = shapes.get(t)
        if t is None or dims is None or len(dims) != 4 or not dims[1]:
            continue
        try:
            s = split_model(model, t, 0.5)
        except GraphpruneError:
            continue
        before = sum(1 for x in s.trunk if x.name in set(convs))
        if s.rest_inputs == [t] and before and s.gates:
            out.append((t, before))
    return out


def default_branch(model) -> str:
    """The candidate cut nearest the middle of the convs (the later tensor among those with the
    same conv count, i.e. after pooling): about half the network before the exit, half gated."""
    cands = candidates(model)
    if not cands:
        raise GraphpruneError("found no tensor where a branch can attach (a 4-D map that cuts the graph, with "
                              "convs before it and a gateable conv after it); name one with --branch-at")
    total = sum(1 for n in model.graph.node if n.op_type == "Conv")
    best = min(abs(b - total / 2) for _, b in cands)
    near = [(t, b) for t, b in cands if abs(b - total / 2) == best]
    b0 = min(b for _, b in near)
    return [t for t, b in near if b == b0][-1]


def head_pool(model, branch: str, grid: int) -> tuple | None:
    """(kernel, stride) of the AveragePool (no padding) that cuts the branch map into grid x grid
    cells for the head, or None for grid 1 (global average pooling). Needs static H and W."""
    if grid == 1:
        return None
    dims = _shapes(model).get(branch) or []
    hw = dims[2:4] if len(dims) == 4 else []
    if len(hw) != 2 or not all(hw) or min(hw) < grid:
        raise GraphpruneError(f"--head-grid {grid} needs a branch map with static H, W >= {grid}; "
                              f"{branch!r} is {dims}")
    kernel = [-(-d // grid) for d in hw]
    stride = [max(1, (d - k) // (grid - 1)) for d, k in zip(hw, kernel)]
    if any((d - k) // s + 1 != grid for d, k, s in zip(hw, kernel, stride)):
        raise GraphpruneError(f"--head-grid {grid}: no uniform pooling cuts {hw[0]}x{hw[1]} into {grid}x{grid}")
    return kernel, stride

