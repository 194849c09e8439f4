"""How each ONNX operator moves, couples, creates or consumes channels: one table.

Each rule has three jobs, so everything an op means for pruning lives in one place:
- `propagate`: from the channel maps of its inputs, set the maps of its outputs and
  record what it couples (unions), creates (sources) or cannot handle (freezes);
- `rewrite`: given which channels are kept, slice its parameters and fix its attributes;
- `zero`: for the exactness check, zero the weights that read removed channels
  (only operators that mix channels need it).
Supporting a new operator means adding one entry to `RULES`. An operator without an
entry freezes every channel it touches: never a wrong rewrite.
"""
from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from graphprune.arrays import constant_values
from graphprune.channels import PropagationContext, RewriteContext
from graphprune.errors import GraphpruneError


# --------------------------------------------------------------------------- helpers
def const(t: gs.Tensor | None) -> np.ndarray | None:
    """A constant input's values (read-only view), or None for a computed tensor."""
    return constant_values(t) if isinstance(t, gs.Constant) else None


def has_input(node: gs.Node, i: int) -> bool:
    return len(node.inputs) > i and bool(node.inputs[i].name)


def ints_from(node: gs.Node, attr: str, index: int, opset_input_from: int, opset: int):
    """Read an int list given as attribute (old opsets) or constant input (new opsets).

    Returns (values or None if absent, ok) where ok=False means a non-constant input.
    """
    if opset >= opset_input_from:
        if not has_input(node, index):
            return None, True
        v = const(node.inputs[index])
        return (None, False) if v is None else ([int(x) for x in v.reshape(-1)], True)
    v = node.attrs.get(attr)
    return (None, True) if v is None else ([int(x) for x in v], True)


def _opset(node: gs.Node) -> int:
    return getattr(node, "_graphprune_opset", 13)


def _norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _freeze_inputs(node: gs.Node, ctx: PropagationContext, reason: str) -> None:
    for t in node.inputs:
        ctx.freeze_tensor(t, f"{reason}, at {node.name}")


def _set_all_outputs(node, ctx, axis, elems):
    for o in node.outputs:
        if o.name:
            ctx.set_map(o, axis, elems, node)


class Rule:
    """Default behaviour of a rule: nothing to rewrite, nothing mixes channels."""

    def propagate(self, node: gs.Node, ctx: PropagationContext) -> None:
        raise NotImplementedError

    def rewrite(self, node: gs.Node, rctx: RewriteContext) -> None:
        pass

    def zero(self, node: gs.Node, rctx: RewriteContext) -> None:
        pass


class Freeze(Rule):
    """Operators the analysis does not follow: their channels stay as they are."""

    def __init__(self, reason: str | None = None):
        self.reason = reason

    def propagate(self, node, ctx):
        _freeze_inputs(node, ctx, self.reason or f"{node.op} is not supported by the channel analysis")


class ShapeOnly(Rule):
    """Reads only the shape (Shape, Size): pruning changes its value consistently."""

    def propagate(self, node, ctx):
        pass


# --------------------------------------------------------------------------- elementwise
class Elementwise(Rule):
    """Unary and broadcasting n-ary elementwise ops: channels pass through; operands that
    both carry channels are coupled (residual Add, SE-block Mul); constant per-channel
    operands (bias, PRelu slope, scale) are sliced."""

    def propagate(self, node, ctx):
        out = node.outputs[0]
        tracked = [(t, ctx.map(t)) for t in node.inputs if ctx.map(t) is not None]
        if not tracked:
            return
        r_out = ctx.rank(out)
        if r_out is None:
            _freeze_inputs(node, ctx, "output rank unknown")
            return
        axes = {m.axis + r_out - m.rank for _, m in tracked}
        if len(axes) > 1:
            _freeze_inputs(node, ctx, f"{node.op} joins channels on different axes")
            return
        axis = axes.pop()
        base = tracked[0][1].elems
        for _, m in tracked[1:]:
            if len(m.elems) != len(base):
                _freeze_inputs(node, ctx, f"{node.op} joins different channel counts")
                return
            ctx.union(base, m.elems)
        for t in node.inputs:
            if not t.name or ctx.map(t) is not None:
                continue
            shape = ctx.shape(t)
            if shape is None:
                _freeze_inputs(node, ctx, f"operand {t.name} has no known shape")
                return
            a = axis - (r_out - len(shape))
            if a < 0 or shape[a] == 1:
                continue
            if isinstance(t, gs.Constant) and shape[a] == len(base):
                continue  # per-channel constant: sliced on rewrite
            _freeze_inputs(node, ctx, f"operand {t.name} spans the channel axis and is not followed")
            return
        _set_all_outputs(node, ctx, axis, base)

    def rewrite(self, node, rctx):
        out = node.outputs[0]
        if not rctx.changed(out):
            return
        mask, m = rctx.mask(out), rctx.maps[out.name]
        for i, t in enumerate(node.inputs):
            v = const(t)
            if v is None or t.name in rctx.maps:
                continue
            a = m.axis - (m.rank - v.ndim)
            if a >= 0 and v.shape[a] == len(mask) and len(mask) > 1:
                rctx.set_input(node, i, np.compress(mask, v, axis=a))


class PerChannelParams(Rule):
    """BatchNormalization, InstanceNormalization: statistics per channel, parameters sliced."""

    def __init__(self, params: tuple[int, ...]):
        self.params = params

    def propagate(self, node, ctx):
        m = ctx.map(node.inputs[0])
        if m is None:
            return
        if m.axis != 1 or any(has_input(node, i) and const(node.inputs[i]) is None for i in self.params):
            _freeze_inputs(node, ctx, f"{node.op} with non-constant parameters or channels off axis 1")
            return
        if any(o.outputs for o in node.outputs[1:]):
            _freeze_inputs(node, ctx, f"{node.op} running statistics are used")
            return
        ctx.set_map(node.outputs[0], 1, m.elems, node)

    def rewrite(self, node, rctx):
        x = node.inputs[0]
        if not rctx.changed(x):
            return
        mask = rctx.mask(x)
        for i in self.params:
            if has_input(node, i):
                rctx.set_input(node, i, const(node.inputs[i])[mask])


class ChannelPooling(Rule):
    """Ops whose output mixes statistics over an axis (LayerNorm, Softmax, LRN): exact when
    the channel axis is not pooled; otherwise pruning changes the result, so the channels
    are frozen unless the user allows inexact pruning, in which case it is reported."""

    def __init__(self, kind: str):
        self.kind = kind

    def _pooled(self, node, m, rank) -> bool:
        if self.kind == "lrn":
            return m.axis == 1
        old_softmax = self.kind == "softmax" and _opset(node) < 13  # coerced to 2-D at `axis`, default 1
        axis = _norm_axis(node.attrs.get("axis", 1 if old_softmax else -1), rank)
        if self.kind == "layernorm" or old_softmax:
            return m.axis >= axis
        return m.axis == axis

    def propagate(self, node, ctx):
        x = node.inputs[0]
        m = ctx.map(x)
        if m is None:
            return
        if self.kind == "layernorm" and any(has_input(node, i) and const(node.inputs[i]) is None for i in (1, 2)):
            _freeze_inputs(node, ctx, "LayerNormalization with non-constant scale")
            return
        if self._pooled(node, m, m.rank):
            reason = f"{node.op} {node.name} pools over the channel axis: pruning it cannot be exact"
            if not ctx.allow_inexact:
                ctx.freeze(m.elems, reason + " (use --allow-inexact)")
                return
            ctx.mark_inexact(m.elems, reason)
        ctx.set_map(node.outputs[0], m.axis, m.elems, node)

    def rewrite(self, node, rctx):
        if self.kind != "layernorm" or not rctx.changed(node.inputs[0]):
            return
        x = node.inputs[0]
        m, mask = rctx.maps[x.name], rctx.mask(x)
        axis = _norm_axis(node.attrs.get("axis", -1), m.rank)
        if m.axis < axis:
            return
        for i in (1, 2):
            if has_input(node, i):
                v = const(node.inputs[i])
                a = (m.axis - axis) - ((m.rank - axis) - v.ndim)
                if a >= 0 and v.shape[a] == len(mask):
                    rctx.set_input(node, i, np.compress(mask, v, axis=a))


class Pool(Rule):
    """Spatial pooling: channels pass through on axis 1."""

    def propagate(self, node, ctx):
        m = ctx.map(node.inputs[0])
        if m is None:
            return
        if m.axis != 1 or (len(node.outputs) > 1 and node.outputs[1].outputs):
            _freeze_inputs(node, ctx, f"{node.op} indices output or channels off axis 1")
            return
        ctx.set_map(node.outputs[0], 1, m.elems, node)


# --------------------------------------------------------------------------- producers
class Param:
    """A weight-like input: a constant, or DequantizeLinear of constants (the weights and
    biases of a QDQ model: integers with per-tensor or per-axis scales). Slicing slices the
    stored values and, along the quantization axis, the scales and zero points, so a QDQ
    model stays QDQ; zeroing writes the zero point, whose dequantized value is 0."""

    def __init__(self, node: gs.Node, index: int):
        self.node, self.index, self.dq, self.values = node, index, None, None
        if not has_input(node, index):
            return
        t = node.inputs[index]
        if isinstance(t, gs.Constant):
            self.values = const(t)
            return
        p = t.inputs[0] if len(t.inputs) == 1 else None
        if p is not None and p.op == "DequantizeLinear" and len(t.outputs) == 1 and "block_size" not in p.attrs \
                and all(isinstance(i, gs.Constant) for i in p.inputs if i.name):
            self.dq, self.values = p, const(p.inputs[0])

    @property
    def source(self) -> str:
        """Name of the stored tensor (the integers of a quantized weight)."""
        return (self.dq.inputs[0] if self.dq is not None else self.node.inputs[self.index]).name

    @property
    def present(self) -> bool:
        return has_input(self.node, self.index)

    @property
    def ok(self) -> bool:
        """Absent, or readable: the rule can slice it."""
        return not self.present or self.values is not None

    def _qaxis(self) -> int | None:
        """The axis the scales run along (None: per-tensor)."""
        scale = const(self.dq.inputs[1])
        if scale.size == 1 and scale.ndim <= 1:
            return None
        return _norm_axis(int(self.dq.attrs.get("axis", 1)), self.values.ndim)

    def _write(self, rctx: RewriteContext, values: np.ndarray, masks: dict[int, np.ndarray]) -> None:
        if self.dq is None:
            rctx.set_input(self.node, self.index, values)
            return
        rctx.set_input(self.dq, 0, values)
        qaxis = self._qaxis()
        if qaxis in masks:
            for i in (1, 2):
                if has_input(self.dq, i):
                    rctx.set_input(self.dq, i, const(self.dq.inputs[i])[masks[qaxis]])

    def take(self, rctx: RewriteContext, masks: dict[int, np.ndarray]) -> None:
        """Keep the positions `masks[axis]` selects along each axis."""
        v = self.values
        for axis, mask in sorted(masks.items()):
            if mask is not None and len(mask) == v.shape[axis] and not mask.all():
                v = np.take(v, np.flatnonzero(mask), axis=axis)
        masks = {a: k for a, k in masks.items() if k is not None and len(k) == self.values.shape[a] and not k.all()}
        if v is not self.values:
            self._write(rctx, v, masks)

    def zero(self, rctx: RewriteContext, axis: int, removed: np.ndarray) -> None:
        """Make the positions `removed` along `axis` contribute nothing."""
        v = self.values.copy()
        idx = [slice(None)] * v.ndim
        idx[axis] = removed
        if self.dq is None or not has_input(self.dq, 2):
            v[tuple(idx)] = 0
        else:
            zp = const(self.dq.inputs[2])
            qaxis = self._qaxis()
            if qaxis is not None:
                zp = zp.reshape([-1 if i == qaxis else 1 for i in range(v.ndim)])
            v[tuple(idx)] = np.broadcast_to(zp, v.shape)[tuple(idx)]
        self._write(rctx, v, {})


class Conv(Rule):
    """Conv / ConvTranspose: output channels are a new source; input channels are consumed
    (groups == 1) or, for grouped and depthwise convs, group k's input and output channels
    form one unit, removed together (the group count shrinks). Weights and bias may be
    DequantizeLinear outputs (QDQ models)."""

    def __init__(self, transposed: bool = False):
        self.transposed = transposed

    def _dims(self, node, w):
        g = int(node.attrs.get("group", 1))
        if self.transposed:
            ci, co = w.shape[0] // g, w.shape[1]
        else:
            ci, co = w.shape[1], w.shape[0] // g
        return g, ci, co

    def propagate(self, node, ctx):
        x, y = node.inputs[0], node.outputs[0]
        w, b = Param(node, 1), Param(node, 2)
        if w.values is None or not b.ok:
            _freeze_inputs(node, ctx, f"{node.op} with non-constant weights")
            return
        g, ci, co = self._dims(node, w.values)
        out = ctx.new_source(node, g * co, "convtranspose" if self.transposed else "conv")
        m = ctx.map(x)
        if m is not None and (m.axis != 1 or len(m.elems) != g * ci):
            ctx.freeze(m.elems, f"{node.op} input channels off axis 1")
            m = None
        if g > 1:
            if m is None:
                ctx.freeze(out, f"grouped {node.op} {node.name} reads channels that are not followed")
            else:
                blocks = np.concatenate([m.elems.reshape(g, ci), out.reshape(g, co)], axis=1)
                ctx.union(np.repeat(blocks[:, :1], blocks.shape[1] - 1, axis=1).ravel(), blocks[:, 1:].ravel())
        if m is not None:
            ctx.touch(node, m.elems)
        ctx.share_weight(w.source, "out", out)
        ctx.share_weight(w.source, "in", None if m is None or g > 1 else m.elems)
        ctx.set_map(y, 1, out, node)

    def rewrite(self, node, rctx):
        x, y = node.inputs[0], node.outputs[0]
        if not (rctx.changed(x) or rctx.changed(y)):
            return
        w = Param(node, 1)
        g, ci, co = self._dims(node, w.values)
        om = rctx.mask(y)
        im = rctx.mask(x)
        if g == 1:
            w.take(rctx, {0: im, 1: om} if self.transposed else {0: om, 1: im})
        else:
            node.attrs["group"] = int(om.reshape(g, co).all(axis=1).sum())
            w.take(rctx, {0: im} if self.transposed else {0: om})
        b = Param(node, 2)
        if b.present:
            b.take(rctx, {0: om})

    def zero(self, node, rctx):
        x = node.inputs[0]
        g = int(node.attrs.get("group", 1))
        if g != 1 or not rctx.changed(x):
            return
        Param(node, 1).zero(rctx, 0 if self.transposed else 1, ~rctx.mask(x))


class Gemm(Rule):
    """Gemm with constant B (a fully connected layer): consumes input features, creates
    output features; bias C sliced along the output features."""

    def propagate(self, node, ctx):
        a, b, c = node.inputs[0], Param(node, 1), Param(node, 2)
        if b.values is None or not c.ok:
            _freeze_inputs(node, ctx, "Gemm with non-constant weights")
            return
        m = ctx.map(a)
        feat_axis = 0 if node.attrs.get("transA", 0) else 1
        if m is not None and m.axis != feat_axis:
            ctx.freeze(m.elems, "Gemm input features off the feature axis")
            m = None
        elif m is not None:
            ctx.touch(node, m.elems)
        n_out = b.values.shape[0] if node.attrs.get("transB", 0) else b.values.shape[1]
        out = ctx.new_source(node, n_out, "gemm")
        ctx.share_weight(b.source, "out", out)
        ctx.share_weight(b.source, "in", None if m is None else m.elems)
        ctx.set_map(node.outputs[0], 1, out, node)

    def rewrite(self, node, rctx):
        a, y = node.inputs[0], node.outputs[0]
        if not (rctx.changed(a) or rctx.changed(y)):
            return
        om, im = rctx.mask(y), rctx.mask(a)
        Param(node, 1).take(rctx, {0: om, 1: im} if node.attrs.get("transB", 0) else {0: im, 1: om})
        c = Param(node, 2)
        if c.present and c.values.ndim >= 1 and c.values.shape[-1] == len(om) and len(om) > 1:
            c.take(rctx, {c.values.ndim - 1: om})

    def zero(self, node, rctx):
        a = node.inputs[0]
        if rctx.changed(a):
            Param(node, 1).zero(rctx, 1 if node.attrs.get("transB", 0) else 0, ~rctx.mask(a))


class MatMul(Rule):
    """MatMul by a constant 2-D weight (a Linear layer, as in channels-last MLPs)."""

    def propagate(self, node, ctx):
        a, y = node.inputs[0], node.outputs[0]
        param = Param(node, 1)
        w = param.values
        if w is None or w.ndim != 2 or isinstance(a, gs.Constant):
            _freeze_inputs(node, ctx, "MatMul without a constant 2-D weight")
            return
        m = ctx.map(a)
        if m is not None and m.axis != m.rank - 1:
            ctx.freeze(m.elems, "MatMul input channels not on the last axis")
            m = None
        elif m is not None:
            ctx.touch(node, m.elems)
        r = ctx.rank(y)
        out = ctx.new_source(node, w.shape[1], "matmul")
        ctx.share_weight(param.source, "out", out)
        ctx.share_weight(param.source, "in", None if m is None else m.elems)
        if r is None:
            ctx.freeze(out, f"no shape known for {y.name}")
            return
        ctx.set_map(y, r - 1, out, node)

    def rewrite(self, node, rctx):
        a, y = node.inputs[0], node.outputs[0]
        if rctx.changed(a) or rctx.changed(y):
            Param(node, 1).take(rctx, {0: rctx.mask(a), 1: rctx.mask(y)})

    def zero(self, node, rctx):
        a = node.inputs[0]
        if rctx.changed(a):
            Param(node, 1).zero(rctx, 0, ~rctx.mask(a))


# --------------------------------------------------------------------------- layout ops
class Transpose(Rule):
    def propagate(self, node, ctx):
        m = ctx.map(node.inputs[0])
        if m is None:
            return
        perm = list(node.attrs.get("perm", range(m.rank)[::-1]))
        ctx.set_map(node.outputs[0], perm.index(m.axis), m.elems, node, rank=m.rank)


class Unsqueeze(Rule):
    def propagate(self, node, ctx):
        m = ctx.map(node.inputs[0])
        if m is None:
            return
        axes, ok = ints_from(node, "axes", 1, 13, _opset(node))
        if not ok or axes is None:
            _freeze_inputs(node, ctx, "Unsqueeze with non-constant axes")
            return
        r_out = m.rank + len(axes)
        axes = {_norm_axis(a, r_out) for a in axes}
        kept = [p for p in range(r_out) if p not in axes]
        ctx.set_map(node.outputs[0], kept[m.axis], m.elems, node)


class Squeeze(Rule):
    def propagate(self, node, ctx):
        x = node.inputs[0]
        m = ctx.map(x)
        if m is None:
            return
        axes, ok = ints_from(node, "axes", 1, 13, _opset(node))
        if not ok:
            _freeze_inputs(node, ctx, "Squeeze with non-constant axes")
            return
        if axes is None:
            shape = ctx.shape(x)
            axes = [i for i, d in enumerate(shape) if d == 1] if shape and None not in shape else None
            if axes is None:
                _freeze_inputs(node, ctx, "Squeeze of unknown dims")
                return
        axes = [_norm_axis(a, m.rank) for a in axes]
        if m.axis in axes:
            _freeze_inputs(node, ctx, "Squeeze removes the channel axis")
            return
        ctx.set_map(node.outputs[0], m.axis - sum(a < m.axis for a in axes), m.elems, node)


class Flatten(Rule):
    """Flatten into a Gemm: each channel becomes a block of features."""

    def propagate(self, node, ctx):
        x = node.inputs[0]
        m = ctx.map(x)
        if m is None:
            return
        axis = _norm_axis(int(node.attrs.get("axis", 1)), m.rank)
        shape = ctx.shape(x)
        inner = shape[axis:] if shape else None
        if m.axis < axis or inner is None or not all(isinstance(d, (int, np.integer)) for d in inner):
            _freeze_inputs(node, ctx, "Flatten merges the channel axis with unknown or leading dims")
            return
        k = m.axis - axis
        grid = np.broadcast_to(m.elems.reshape([-1 if i == k else 1 for i in range(len(inner))]), inner)
        ctx.set_map(node.outputs[0], 1, grid.ravel().copy(), node, rank=2)


def _product_equal(a: list, b: list) -> bool:
    """Whether two dim lists hold the same number of elements (symbolic dims by name)."""
    if any(d is None for d in a) or any(d is None for d in b):
        return False
    sa = sorted(f for d in a if isinstance(d, str) for f in d.split("*"))  # "h*w": a -1 over two dynamic dims
    sb = sorted(f for d in b if isinstance(d, str) for f in d.split("*"))
    if sa != sb:
        return False
    return math.prod(int(d) for d in a if not isinstance(d, str)) == \
        math.prod(int(d) for d in b if not isinstance(d, str))


def reshape_channel_map(shape_in: list, shape_out: list, axis: int, elems: np.ndarray):
    """Where the channel axis lands after a Reshape: (axis_out, elems_out) or None.

    Supported: the axis moves intact (squeeze/unsqueeze-like), or merges with the dims
    right after it (flatten: each channel becomes a block of features). A Reshape that
    splits channels (channel shuffle, attention heads) or merges them with leading dims
    returns None and the caller freezes.
    """
    c = len(elems)
    left, right = shape_in[:axis], shape_in[axis + 1:]
    for o, d in enumerate(shape_out):
        if not isinstance(d, (int, np.integer)) or not _product_equal(left, shape_out[:o]):
            continue
        if d == c and _product_equal(right, shape_out[o + 1:]):
            return o, elems
        for k in range(1, len(right) + 1):
            block = right[:k]
            if not all(isinstance(b, (int, np.integer)) for b in block):
                break
            f = math.prod(block)
            if d == c * f and _product_equal(right[k:], shape_out[o + 1:]):
                return o, np.repeat(elems, f)
    return None


def _resolve_target(shape_in: list, target: list) -> list | None:
    """A Reshape's output dims from its target entries (ints, None where computed): 0 copies
    the input dim, -1 takes the rest: a symbolic batch (tf2onnx's `-1`) stays that symbol."""
    out = [shape_in[i] if t == 0 and i < len(shape_in) else t for i, t in enumerate(target)]
    if out.count(-1) != 1:
        return out if -1 not in out else None
    known = [d for d in out if d != -1]
    if None in shape_in or None in known:
        return None
    syms_in = sorted(d for d in shape_in if isinstance(d, str))
    syms_known = sorted(d for d in known if isinstance(d, str))
    rest = list(syms_in)
    for sym in syms_known:
        if sym not in rest:
            return None
        rest.remove(sym)
    num = math.prod(int(d) for d in shape_in if not isinstance(d, str))
    den = math.prod(int(d) for d in known if not isinstance(d, str))
    if den == 0 or num % den:
        return None
    factor = num // den
    if rest:
        if factor != 1:
            return None
        fill = "*".join(rest)
    else:
        fill = factor
    return [fill if d == -1 else d for d in out]


def _target_pieces(target: gs.Tensor) -> list[tuple[gs.Node | None, int, gs.Tensor]] | None:
    """The 1-D tensors a Reshape target is made of: itself, or the inputs of the Concat that
    builds it (`x.view(x.size(0), 20, -1)` after the static dims were folded)."""
    if isinstance(target, gs.Constant):
        return [(None, 1, target)]
    if len(target.inputs) == 1 and target.inputs[0].op == "Concat" and len(target.outputs) == 1:
        cat = target.inputs[0]
        return [(cat, i, t) for i, t in enumerate(cat.inputs)]
    return None


def _target_entries(node: gs.Node) -> list[tuple[gs.Node | None, int, int, gs.Tensor]] | None:
    """Per target position: (holder node or None for the Reshape itself, input index of the
    piece, position in the piece, piece tensor); None where the pieces are not 1-D or sized."""
    pieces = _target_pieces(node.inputs[1]) if len(node.inputs) > 1 else None
    if pieces is None:
        return None
    entries = []
    for holder, idx, t in pieces:
        shape = t.shape
        if shape is None or len(shape) != 1 or not isinstance(shape[0], (int, np.integer)):
            return None
        entries += [(holder, idx, k, t) for k in range(int(shape[0]))]
    return entries


# ops through which a shape value stays a function of shapes (constants only as indices)
_SHAPE_ARITHMETIC = {"Gather": (0,), "Slice": (0,), "Unsqueeze": (0,), "Squeeze": (0,), "Cast": (0,),
                     "Identity": (0,), "ReduceProd": (0,), "Concat": None, "Mul": None}


def _from_shapes_of(t: gs.Tensor, elems: np.ndarray, maps: dict, depth: int = 0) -> bool:
    """Whether `t` is computed only from the shapes of tensors that carry `elems` (so it
    follows the pruned channel count at run time)."""
    if depth > 16 or isinstance(t, gs.Constant) or len(t.inputs) != 1:
        return False
    p = t.inputs[0]
    if p.op == "Shape":
        m = maps.get(p.inputs[0].name)
        return m is not None and np.array_equal(m.elems, elems)
    if p.op not in _SHAPE_ARITHMETIC:
        return False
    which = _SHAPE_ARITHMETIC[p.op]
    ins = p.inputs if which is None else [p.inputs[i] for i in which]
    return all(_from_shapes_of(i, elems, maps, depth + 1) for i in ins)


def _channel_entry(node: gs.Node, o: int, in_axis: int, elems: np.ndarray, maps: dict):
    """How the target's entry `o` (where the channels land) follows pruning: 'fixed' (-1, or
    0 copying the channel axis), 'derived' (computed from the pruned tensors' shapes),
    ('const', holder, input index, position) to rewrite, or None (a stale literal)."""
    entries = _target_entries(node)
    if entries is None:
        return "derived" if len(node.inputs) > 1 and _from_shapes_of(node.inputs[1], elems, maps) else None
    if o >= len(entries):
        return None
    holder, idx, k, t = entries[o]
    v = const(t)
    if v is None:
        return "derived" if _from_shapes_of(t, elems, maps) else None
    val = int(v.reshape(-1)[k])
    if val == -1 or (val == 0 and in_axis == o):
        return "fixed"
    return ("const", holder, idx, k) if val > 0 else None


def _shape_values(t: gs.Tensor, shape_of, depth: int = 0) -> list | None:
    """The values of a small shape-computing tensor as dims (ints, or the symbol of a dynamic
    dim): Shape, Gather/Slice by constants, (Un)Squeeze, Concat, Cast. None where unknown."""
    v = const(t)
    if v is not None:
        return [int(d) for d in v.reshape(-1)] if v.ndim <= 1 and np.issubdtype(v.dtype, np.integer) else None
    if depth > 8 or len(t.inputs) != 1:
        return None
    p = t.inputs[0]
    if p.op == "Shape":
        dims = shape_of(p.inputs[0])
        return None if dims is None else dims[slice(p.attrs.get("start", 0), p.attrs.get("end"))]
    if p.op in ("Unsqueeze", "Squeeze", "Cast", "Identity"):
        return _shape_values(p.inputs[0], shape_of, depth + 1)
    if p.op == "Concat":
        parts = [_shape_values(i, shape_of, depth + 1) for i in p.inputs]
        return None if any(x is None for x in parts) else [d for x in parts for d in x]
    if p.op == "Slice" and all(const(i) is not None for i in p.inputs[1:] if i.name):
        src = _shape_values(p.inputs[0], shape_of, depth + 1)
        bounds = [const(i).reshape(-1) for i in p.inputs[1:] if i.name]
        if src is None or any(len(b) != 1 for b in bounds) or (len(bounds) > 2 and int(bounds[2][0]) != 0):
            return None
        step = int(bounds[3][0]) if len(bounds) > 3 else 1
        return src[slice(int(bounds[0][0]), int(bounds[1][0]), step)]
    if p.op == "Gather" and const(p.inputs[1]) is not None:
        src = _shape_values(p.inputs[0], shape_of, depth + 1)
        idx = const(p.inputs[1]).reshape(-1)
        return None if src is None or any(not -len(src) <= i < len(src) for i in idx) else [src[int(i)] for i in idx]
    return None


def _named_dims(t: gs.Tensor, dims: list | None) -> list | None:
    """Unknown dims named after their tensor and position: `Shape(x)[0]` then matches x's
    own unknown batch (Paddle's `-1` batch, read back by Shape to build a flatten target)."""
    return None if dims is None else [f"?{t.name}[{i}]" if d is None else d for i, d in enumerate(dims)]


def _literal_target(node: gs.Node, shape_of) -> list | None:
    """The target's entries: ints, symbols of dynamic dims read by Shape, None if unknown."""
    entries = _target_entries(node)
    if entries is None:
        return None
    out, cache = [], {}
    for _, _, k, t in entries:
        if t.name not in cache:
            cache[t.name] = _shape_values(t, shape_of)
        vals = cache[t.name]
        out.append(vals[k] if vals is not None and k < len(vals) else None)
    return out


class Reshape(Rule):
    """Channels move intact (a Squeeze/Unsqueeze written as Reshape, as tf2onnx does) or merge
    with the dims after them (flatten). The channel count in the target is rewritten, whether
    the target is a literal or a Concat of literal and computed pieces; a count that cannot
    be rewritten freezes the channels (a stale count makes a model onnxruntime refuses)."""

    def propagate(self, node, ctx):
        x, y = node.inputs[0], node.outputs[0]
        m = ctx.map(x)
        if m is None:
            return
        si, so = _named_dims(x, ctx.shape(x)), ctx.shape(y)
        res = reshape_channel_map(si, so, m.axis, m.elems) if si is not None and so is not None else None
        literal = _literal_target(node, lambda t: _named_dims(t, ctx.shape(t)))
        rank = len(so) if so is not None else None
        if res is None and si is not None and literal is not None and not node.attrs.get("allowzero", 0):
            resolved = _resolve_target(si, literal)
            res = reshape_channel_map(si, resolved, m.axis, m.elems) if resolved is not None else None
            rank = len(literal)
        if res is None:
            _freeze_inputs(node, ctx, "Reshape splits or mixes the channel axis, as a channel shuffle or attention heads do")
            return
        if _channel_entry(node, res[0], m.axis, m.elems, ctx.maps) is None:
            _freeze_inputs(node, ctx, "Reshape target holds the channel count in a form that cannot be rewritten")
            return
        ctx.set_map(y, res[0], res[1], node, rank=rank)

    def rewrite(self, node, rctx):
        x, y = node.inputs[0], node.outputs[0]
        if not rctx.changed(y):
            return
        o, m_in = rctx.maps[y.name].axis, rctx.maps[x.name]
        entry = _channel_entry(node, o, m_in.axis, m_in.elems, rctx.maps)
        if not isinstance(entry, tuple):
            return
        _, holder, idx, k = entry
        holder = holder or node
        v = const(holder.inputs[idx]).copy()
        flat = v.reshape(-1)
        flat[k] = int(rctx.mask(y).sum())
        rctx.set_input(holder, idx, v)


class Concat(Rule):
    """Concat along channels: the output's channels are the inputs' channels, in order.
    Along another axis: inputs must have the same channels, so they are coupled."""

    def propagate(self, node, ctx):
        y = node.outputs[0]
        tracked = [ctx.map(t) for t in node.inputs if ctx.map(t) is not None]
        if not tracked:
            return
        rank = ctx.rank(y)
        axis = _norm_axis(int(node.attrs.get("axis", 1)), rank if rank is not None else tracked[0].rank)
        if any(m.axis == axis for m in tracked):
            parts = []
            for t in node.inputs:
                m = ctx.map(t)
                if m is not None and m.axis == axis:
                    parts.append(m.elems)
                    continue
                if m is not None:
                    ctx.freeze(m.elems, "Concat of channels on different axes")
                shape = ctx.shape(t)
                d = shape[axis] if shape is not None and axis < len(shape) else None
                if not isinstance(d, (int, np.integer)):
                    _freeze_inputs(node, ctx, "Concat with an input of unknown size")
                    return
                parts.append(ctx.untracked(int(d), f"concatenated with {t.name}, which is not followed"))
            ctx.set_map(y, axis, np.concatenate(parts), node)
            return
        if len(tracked) != len(node.inputs) or len({m.axis for m in tracked}) > 1 \
                or len({len(m.elems) for m in tracked}) > 1:
            _freeze_inputs(node, ctx, "Concat of tensors whose channels do not line up")
            return
        for m in tracked[1:]:
            ctx.union(tracked[0].elems, m.elems)
        ctx.set_map(y, tracked[0].axis, tracked[0].elems, node)


class Split(Rule):
    def _sizes(self, node, c):
        opset = _opset(node)
        sizes, ok = ints_from(node, "split", 1, 13, opset)
        if not ok:
            return None
        if sizes is None:
            n = len(node.outputs)
            size = -(-c // n)
            sizes = [size] * (n - 1) + [c - size * (n - 1)]
        return sizes

    def propagate(self, node, ctx):
        m = ctx.map(node.inputs[0])
        if m is None:
            return
        axis = _norm_axis(int(node.attrs.get("axis", 0)), m.rank)
        if axis != m.axis:
            _set_all_outputs(node, ctx, m.axis, m.elems)
            return
        sizes = self._sizes(node, len(m.elems))
        if sizes is None or sum(sizes) != len(m.elems):
            _freeze_inputs(node, ctx, "Split with non-constant sizes")
            return
        off = np.cumsum([0] + sizes)
        for o, s, e in zip(node.outputs, off[:-1], off[1:]):
            if o.name:
                ctx.set_map(o, axis, m.elems[s:e], node)

    def rewrite(self, node, rctx):
        x = node.inputs[0]
        m = rctx.maps.get(x.name)
        if m is None or not rctx.changed(x) or _norm_axis(int(node.attrs.get("axis", 0)), m.rank) != m.axis:
            return
        mask = rctx.mask(x)
        sizes = self._sizes(node, len(mask))
        off = np.cumsum([0] + sizes)
        new = np.array([mask[s:e].sum() for s, e in zip(off[:-1], off[1:])], np.int64)
        node.attrs.pop("num_outputs", None)
        if rctx.opset >= 13:
            if has_input(node, 1):
                rctx.set_input(node, 1, new)
            else:
                while len(node.inputs) > 1:
                    node.inputs.pop()
                node.inputs.append(gs.Constant(f"{node.name}__split_sizes", new))
        else:
            node.attrs["split"] = [int(v) for v in new]


class Slice(Rule):
    _INPUTS = {"starts": 1, "ends": 2, "axes": 3, "steps": 4}

    def _params(self, node, rank):
        opset = _opset(node)
        vals = {}
        for key, idx in self._INPUTS.items():
            v, ok = ints_from(node, key, idx, 10, opset)
            if not ok:
                return None
            vals[key] = v
        n = len(vals["starts"])
        axes = [_norm_axis(a, rank) for a in (vals["axes"] or range(n))]
        return vals["starts"], vals["ends"], axes, vals["steps"] or [1] * n

    def propagate(self, node, ctx):
        m = ctx.map(node.inputs[0])
        if m is None:
            return
        p = self._params(node, m.rank)
        if p is None:
            _freeze_inputs(node, ctx, "Slice with non-constant bounds")
            return
        starts, ends, axes, steps = p
        if m.axis not in axes:
            ctx.set_map(node.outputs[0], m.axis, m.elems, node)
            return
        i = axes.index(m.axis)
        if steps[i] != 1:
            _freeze_inputs(node, ctx, "strided Slice along channels")
            return
        out = m.elems[slice(starts[i], ends[i])]
        if len(out) == 0:
            _freeze_inputs(node, ctx, "empty Slice along channels")
            return
        ctx.set_map(node.outputs[0], m.axis, out, node)

    def rewrite(self, node, rctx):
        x = node.inputs[0]
        if not rctx.changed(x):
            return
        m, mask = rctx.maps[x.name], rctx.mask(x)
        starts, ends, axes, _ = self._params(node, m.rank)
        if m.axis not in axes:
            return
        i = axes.index(m.axis)
        s, e, _ = slice(starts[i], ends[i]).indices(len(mask))
        new_s = int(mask[:s].sum())
        new_e = new_s + int(mask[s:e].sum())
        starts, ends = list(starts), list(ends)
        starts[i] = new_s
        if ends[i] < len(mask):  # "to the end" sentinels stay as they are
            ends[i] = new_e
        if _opset(node) >= 10:
            rctx.set_input(node, 1, np.array(starts, np.int64))
            rctx.set_input(node, 2, np.array(ends, np.int64))
        else:
            node.attrs["starts"], node.attrs["ends"] = starts, ends


class Pad(Rule):
    def propagate(self, node, ctx):
        m = ctx.map(node.inputs[0])
        if m is None:
            return
        opset = _opset(node)
        pads, ok = ints_from(node, "pads", 1, 11, opset)
        axes, ok2 = ints_from(node, "axes", 3, 18, opset) if opset >= 18 else (None, True)
        if not ok or not ok2 or pads is None:
            _freeze_inputs(node, ctx, "Pad with non-constant pads")
            return
        axes = [_norm_axis(a, m.rank) for a in (axes or range(m.rank))]
        n = len(axes)
        if m.axis in axes:
            i = axes.index(m.axis)
            if pads[i] != 0 or pads[i + n] != 0:
                _freeze_inputs(node, ctx, "Pad along channels")
                return
        ctx.set_map(node.outputs[0], m.axis, m.elems, node)


class Resize(Rule):
    """Resize / Upsample: spatial only; a constant `sizes` naming the channel count is fixed."""

    def _scales_sizes(self, node):
        if node.op == "Upsample" or _opset(node) < 11:
            idx_scales, idx_sizes = 1, None
        else:
            idx_scales, idx_sizes = 2, 3
        scales = node.inputs[idx_scales] if has_input(node, idx_scales) else None
        sizes = node.inputs[idx_sizes] if idx_sizes is not None and has_input(node, idx_sizes) else None
        if scales is None and "scales" in node.attrs:
            scales = gs.Constant("attr_scales", np.array(node.attrs["scales"], np.float32))
        return scales, sizes, idx_sizes

    def propagate(self, node, ctx):
        m = ctx.map(node.inputs[0])
        if m is None:
            return
        scales, sizes, _ = self._scales_sizes(node)
        axes = node.attrs.get("axes")
        pos = m.axis if axes is None else ([_norm_axis(a, m.rank) for a in axes].index(m.axis)
                                           if m.axis in [_norm_axis(a, m.rank) for a in axes] else None)
        if pos is not None:
            sv, zv = const(scales), const(sizes)
            if scales is not None and scales.name and sv is None or (sv is not None and sv.size and sv[pos] != 1):
                _freeze_inputs(node, ctx, "Resize along channels or with computed scales")
                return
            if zv is not None and zv[pos] != len(m.elems):
                _freeze_inputs(node, ctx, "Resize along channels")
                return
        ctx.set_map(node.outputs[0], m.axis, m.elems, node)

    def rewrite(self, node, rctx):
        x = node.inputs[0]
        if not rctx.changed(x):
            return
        _, sizes, idx = self._scales_sizes(node)
        zv = const(sizes)
        if zv is not None and node.attrs.get("axes") is None:
            zv = zv.copy()
            zv[rctx.maps[x.name].axis] = int(rctx.mask(x).sum())
            rctx.set_input(node, idx, zv)


class Reduce(Rule):
    """Reductions over other axes keep the channels (moved when keepdims=0). Over the channel
    axis (or all axes) the result mixes channels: frozen, or with --allow-inexact pruned and
    reported inexact, as for the other pooling ops."""

    def propagate(self, node, ctx):
        m = ctx.map(node.inputs[0])
        if m is None:
            return
        opset = _opset(node)
        from_input = 13 if node.op == "ReduceSum" else 18
        axes, ok = ints_from(node, "axes", 1, from_input, opset)
        if not ok:
            _freeze_inputs(node, ctx, f"{node.op} with non-constant axes")
            return
        if not axes and node.attrs.get("noop_with_empty_axes", 0):
            ctx.set_map(node.outputs[0], m.axis, m.elems, node)
            return
        axes = [_norm_axis(a, m.rank) for a in axes] if axes else list(range(m.rank))
        if m.axis in axes:
            reason = f"{node.op} {node.name} reduces over the channel axis: pruning it cannot be exact"
            if not ctx.allow_inexact:
                ctx.freeze(m.elems, reason + " (use --allow-inexact)")
            else:
                ctx.mark_inexact(m.elems, reason)
            return
        keep = node.attrs.get("keepdims", 1)
        axis = m.axis if keep else m.axis - sum(a < m.axis for a in axes)
        ctx.set_map(node.outputs[0], axis, m.elems, node)


class Recurrent(Rule):
    """LSTM / GRU / RNN read input features through W [directions, gates*hidden, input]:
    removing a feature removes W's column, exactly (a CRNN's CNN channels feeding its RNN).
    The hidden units stay (their outputs are not followed)."""

    def propagate(self, node, ctx):
        x = node.inputs[0]
        m = ctx.map(x)
        if m is None:
            return
        w = const(node.inputs[1]) if has_input(node, 1) else None
        if w is None or w.ndim != 3 or m.rank != 3 or m.axis != 2 or w.shape[2] != len(m.elems):
            _freeze_inputs(node, ctx, f"{node.op} with non-constant weights or input features off the last axis")
            return
        ctx.touch(node, m.elems)

    def rewrite(self, node, rctx):
        x = node.inputs[0]
        if rctx.changed(x):
            rctx.set_input(node, 1, np.compress(rctx.mask(x), const(node.inputs[1]), axis=2))

    def zero(self, node, rctx):
        x = node.inputs[0]
        if rctx.changed(x):
            w = const(node.inputs[1]).copy()
            w[..., ~rctx.mask(x)] = 0
            rctx.set_input(node, 1, w)


class ExpandTile(Rule):
    """Expand / Tile of a tensor carrying channels: they pass when the channel axis is not
    repeated (Expand to 1 or C there, Tile by 1); a literal C in Expand's shape is rewritten
    to the new count (a stale one would make the model fail to load)."""

    def propagate(self, node, ctx):
        x, y = node.inputs[0], node.outputs[0]
        m = ctx.map(x)
        if m is None:
            return
        v = const(node.inputs[1]) if has_input(node, 1) else None
        r_out = ctx.rank(y) if node.op == "Expand" else m.rank
        if v is None or r_out is None:
            _freeze_inputs(node, ctx, f"{node.op} with a computed shape")
            return
        axis = m.axis + r_out - m.rank
        k = axis - (r_out - len(v)) if node.op == "Expand" else m.axis
        if k >= 0 and int(v[k]) not in ((1, len(m.elems)) if node.op == "Expand" else (1,)):
            _freeze_inputs(node, ctx, f"{node.op} repeats the channel axis")
            return
        ctx.set_map(y, axis, m.elems, node, rank=r_out)

    def rewrite(self, node, rctx):
        x, y = node.inputs[0], node.outputs[0]
        if node.op != "Expand" or not rctx.changed(x):
            return
        v, m, mask = const(node.inputs[1]), rctx.maps[y.name], rctx.mask(x)
        k = m.axis - (m.rank - len(v))
        if k >= 0 and int(v[k]) == len(mask):
            v = v.copy()
            v[k] = int(mask.sum())
            rctx.set_input(node, 1, v)


class Gather(Rule):
    def propagate(self, node, ctx):
        data, idx = node.inputs[0], node.inputs[1]
        if ctx.map(idx) is not None:
            _freeze_inputs(node, ctx, "Gather with channel-carrying indices")
            return
        m = ctx.map(data)
        if m is None:
            return
        axis = _norm_axis(int(node.attrs.get("axis", 0)), m.rank)
        r_idx = ctx.rank(idx)
        if axis == m.axis or r_idx is None:
            _freeze_inputs(node, ctx, "Gather along channels")
            return
        ctx.set_map(node.outputs[0], m.axis + r_idx - 1 if axis < m.axis else m.axis, m.elems, node)


class QuantizeDequantize(Rule):
    """QuantizeLinear / DequantizeLinear on activations (QDQ models): per-tensor scales pass
    the channels through; per-channel scales along the channel axis are sliced with them."""

    def propagate(self, node, ctx):
        x = node.inputs[0]
        m = ctx.map(x)
        if m is None:
            return
        scale = const(node.inputs[1])
        zp = const(node.inputs[2]) if has_input(node, 2) else None
        if scale is None or (has_input(node, 2) and zp is None) or "block_size" in node.attrs:
            _freeze_inputs(node, ctx, f"{node.op} with computed or blocked quantization parameters")
            return
        per_tensor = scale.size == 1 and scale.ndim <= 1
        axis = _norm_axis(int(node.attrs.get("axis", 1)), m.rank)
        if not per_tensor and (scale.ndim != 1 or axis != m.axis or len(scale) != len(m.elems)):
            _freeze_inputs(node, ctx, f"{node.op} quantizes per channel along another axis")
            return
        ctx.set_map(node.outputs[0], m.axis, m.elems, node)

    def rewrite(self, node, rctx):
        x = node.inputs[0]
        if not rctx.changed(x):
            return
        for i in (1, 2):
            v = const(node.inputs[i]) if has_input(node, i) else None
            if v is not None and v.ndim == 1 and v.size > 1:
                rctx.set_input(node, i, v[rctx.mask(x)])


class Refuse(Rule):
    """Operators the model cannot be pruned through at all: a clear refusal, not a freeze."""

    def __init__(self, reason: str):
        self.reason = reason

    def propagate(self, node, ctx):
        raise GraphpruneError(f"{node.op} {node.name}: {self.reason}")


_OPERATOR_QUANTIZED = Refuse("operator-oriented quantized models (QLinearConv, ConvInteger) cannot be pruned; "
                             "prune the float model first, then quantize it (or quantize with QDQ)")


def check_supported(nodes) -> None:
    """Refuse models the channel rules cannot handle at all, before any other check."""
    for node in nodes:
        if isinstance(rule_for(node), Refuse):
            rule_for(node).propagate(node, None)


# --------------------------------------------------------------------------- the table
_ELEMENTWISE = Elementwise()
_POOL = Pool()
RULES: dict[str, Rule] = {
    "Conv": Conv(), "ConvTranspose": Conv(transposed=True),
    "Gemm": Gemm(), "MatMul": MatMul(),
    "BatchNormalization": PerChannelParams((1, 2, 3, 4)),
    "InstanceNormalization": PerChannelParams((1, 2)),
    "LayerNormalization": ChannelPooling("layernorm"),
    "Softmax": ChannelPooling("softmax"), "LogSoftmax": ChannelPooling("softmax"),
    "Hardmax": ChannelPooling("softmax"), "LRN": ChannelPooling("lrn"),
    "GroupNormalization": Freeze("GroupNormalization pools statistics over channel groups"),
    "MaxPool": _POOL, "AveragePool": _POOL, "LpPool": _POOL, "GlobalAveragePool": _POOL,
    "GlobalMaxPool": _POOL, "GlobalLpPool": _POOL,
    "Transpose": Transpose(), "Reshape": Reshape(), "Flatten": Flatten(),
    "Squeeze": Squeeze(), "Unsqueeze": Unsqueeze(),
    "Concat": Concat(), "Split": Split(), "Slice": Slice(), "Pad": Pad(),
    "Resize": Resize(), "Upsample": Resize(), "Gather": Gather(),
    "Expand": ExpandTile(), "Tile": ExpandTile(),
    "Shape": ShapeOnly(), "Size": ShapeOnly(),
    "LSTM": Recurrent(), "GRU": Recurrent(), "RNN": Recurrent(),
    "QuantizeLinear": QuantizeDequantize(), "DequantizeLinear": QuantizeDequantize(),
    **{op: _OPERATOR_QUANTIZED for op in ("QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger")},
    **{r: Reduce() for r in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd",
                             "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")},
    **{op: _ELEMENTWISE for op in (
        "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "PRelu", "Mod",
        "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "And", "Or", "Xor",
        "Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu", "Celu",
        "Gelu", "Tanh", "Exp", "Log", "Sqrt", "Neg", "Abs", "Erf", "Softplus", "Softsign", "Mish",
        "Cast", "CastLike", "Identity", "Dropout", "Floor", "Ceil", "Round", "Reciprocal", "Not",
        "Sign", "Sin", "Cos", "ThresholdedRelu", "Swish", "IsNaN", "IsInf", "BitShift")},
}



# --------------------------------------------------------------------------- control flow
class ControlFlow(Rule):
    """If / Loop / Scan: the rules of the body nodes run in the same context, so channels
    are followed into bodies (outer-scope reads included) and convs inside are prunable.
    If: an output carries channels only when both branches give it channels on the same
    axis and count; those are coupled (channel k of either branch goes together), so both
    branches keep agreeing on the output's shape. Any other branch output is frozen.
    Loop / Scan: what enters or leaves the body (loop-carried values, outer-scope reads,
    outputs) is frozen; channels that stay inside the body are followed."""

    def propagate(self, node, ctx):
        bodies = [v for v in node.attrs.values() if isinstance(v, gs.Graph)]
        for body in bodies:
            ctx.graph_outputs |= {t.name for t in body.outputs}  # set_map must not drop them
        if node.op != "If":
            _freeze_inputs(node, ctx, f"channels enter the body of {node.op}")
            for body in bodies:
                for name in _outer_reads(body):
                    if name in ctx.maps:
                        ctx.freeze(ctx.maps[name].elems, f"{name} is read inside the body of {node.op} {node.name}")
        for body in bodies:
            for inner in body.nodes:
                rule_for(inner).propagate(inner, ctx)
        if node.op != "If":
            for body in bodies:
                for t in body.outputs:
                    ctx.freeze_tensor(t, f"channels leave the body of {node.op} {node.name}")
            return
        ctx.freeze_tensor(node.inputs[0], "If condition")
        self._join_branches(node, ctx, node.attrs["then_branch"], node.attrs["else_branch"])

    def _join_branches(self, node, ctx, then_g, else_g):
        for k, out in enumerate(node.outputs):
            a, b = ctx.map(then_g.outputs[k]), ctx.map(else_g.outputs[k])
            if a is None and b is None:
                continue
            if a is None or b is None or (a.axis, a.rank, len(a.elems)) != (b.axis, b.rank, len(b.elems)):
                reason = f"the branches of If {node.name} give output {k} different channels"
                for m in (a, b):
                    if m is not None:
                        ctx.freeze(m.elems, reason)
                continue
            ctx.union(a.elems, b.elems)
            if out.name:
                ctx.set_map(out, a.axis, a.elems, node, rank=a.rank)


def _outer_reads(body: gs.Graph) -> set[str]:
    """Names a body (nested bodies included) reads from enclosing scopes."""
    produced, read = {t.name for t in body.inputs}, set()
    for inner in body.nodes:
        produced.update(t.name for t in inner.outputs)
        read.update(t.name for t in inner.inputs if not isinstance(t, gs.Constant))
        for v in inner.attrs.values():
            if isinstance(v, gs.Graph):
                read |= _outer_reads(v)
    return read - produced


BODY_OPS = ("If", "Loop", "Scan")
RULES.update({op: ControlFlow() for op in BODY_OPS})

def rule_for(node: gs.Node) -> Rule:
    if node.domain not in (None, "", "ai.onnx"):
        return Freeze(f"custom op {node.domain}::{node.op}")
    return RULES.get(node.op) or Freeze()
