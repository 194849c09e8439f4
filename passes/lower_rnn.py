"""LowerRNNPass: ONNX LSTM, GRU and RNN nodes unrolled into primitive ONNX ops.

Why: TVM 0.27's Relax ONNX frontend has no converter for LSTM, GRU or RNN, so a model with
one (silero-vad, CRNN text recognisers) could not be compiled or benchmarked with TVM. Once
the input shapes are pinned (targets/prepare.py) the sequence length is a constant, and a
recurrent layer is exactly a fixed chain of MatMul/Add/Slice/Sigmoid/Tanh/Mul per time step,
which Relax imports and fuses. The pass runs in the TVM import path only: onnxruntime has
fused kernels for these ops, so every onnxruntime path keeps the original nodes.

Semantics are the ONNX operator's (opset 7-22): gate order LSTM i,o,f,c and GRU z,r,h; W/R/B
with num_directions first; forward, reverse and bidirectional; absent initial_h/initial_c
are zeros (the recurrent terms are left out, so the batch size need not be known);
outputs Y [seq, num_directions, batch, hidden], Y_h, Y_c; GRU's linear_before_reset;
layout 0 and 1. Activations may be Sigmoid, Tanh or Relu in any slot (torch exports
RNN(nonlinearity='relu') as Relu). sequence_lens, peepholes, clip, input_forget and the
parametric activations are refused with one line naming the node: their exact lowering is
not needed by any model we compile, and a silent approximation would be worse than a refusal.
Nodes inside If/Loop/Scan bodies are lowered too (silero-vad's LSTMs sit in If branches).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphprune.errors import GraphpruneError
from graphprune.passes.base import Pass
from graphprune.shapes import infer_shapes

RECURRENT = ("LSTM", "GRU", "RNN")
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_DEFAULT_ACTS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}
_ACTS = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu"}


class LowerRNNPass(Pass):
    """Unroll every LSTM/GRU/RNN node (any scope) over its static sequence length."""

    name = "lower-rnn"

    def run(self, model: onnx.ModelProto) -> onnx.ModelProto:
        if not any(n.op_type in RECURRENT and n.domain in ("", "ai.onnx") for n in _all_nodes(model.graph)):
            return model
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        out = infer_shapes(copy)  # seq lengths inside If bodies too (graphprune.shapes copies body shapes)
        opset = next((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), 1)
        names = {name for n in _all_nodes(out.graph) for name in list(n.input) + list(n.output)}
        names |= {n.name for n in _all_nodes(out.graph)}
        static = all(d.HasField("dim_value") for i in out.graph.input for d in i.type.tensor_type.shape.dim)
        _lower_graph(out.graph, {}, _Model(opset, names, static))
        return out


def _all_nodes(graph: onnx.GraphProto):
    for n in graph.node:
        yield n
        for a in n.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                yield from _all_nodes(g)


def _known(graph: onnx.GraphProto, outer: dict) -> dict:
    """name -> (elem_type, dims with None for unknown), this scope over the outer ones."""
    info = dict(outer)
    for v in list(graph.input) + list(graph.value_info) + list(graph.output):
        tt = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim] \
            if tt.HasField("shape") else None
        info[v.name] = (tt.elem_type, dims)
    for t in graph.initializer:
        info[t.name] = (t.data_type, list(t.dims))
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            t = n.attribute[0].t
            info[n.output[0]] = (t.data_type, list(t.dims))
    return info


@dataclass
class _Model:
    """What every scope's lowering needs of the whole model."""
    opset: int
    names: set             # every tensor and node name in any scope: new names avoid them
    static_inputs: bool    # all graph inputs static: an unknown length is not the user's to pin


def _lower_graph(graph: onnx.GraphProto, outer: dict, model: _Model) -> None:
    info = _known(graph, outer)
    for n in graph.node:
        for a in n.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                _lower_graph(g, info, model)
    if not any(n.op_type in RECURRENT and n.domain in ("", "ai.onnx") for n in graph.node):
        return
    nodes = []
    for n in graph.node:
        if n.op_type in RECURRENT and n.domain in ("", "ai.onnx"):
            e = _Emitter(n.name or f"{n.op_type}_{n.output[0]}", model.names, model.opset)
            _lower_node(n, _config(n, info, model.static_inputs), e)
            nodes.extend(e.nodes)
        else:
            nodes.append(n)
    del graph.node[:]
    graph.node.extend(nodes)


@dataclass
class _Config:
    op: str
    name: str
    hidden: int
    seq: int
    layout: int
    directions: list       # one bool per direction: True = reverse
    acts: list             # one tuple of op names per direction
    lbr: bool              # GRU linear_before_reset
    dtype: int


def _refuse(node: onnx.NodeProto, what: str) -> GraphpruneError:
    return GraphpruneError(f"cannot lower {node.op_type} node {node.name or node.output[0]!r} for TVM: "
                           f"{what} is not supported (TVM has no {node.op_type} converter; graphprune "
                           "unrolls only plain LSTM/GRU/RNN)")


def _config(node: onnx.NodeProto, info: dict, static_inputs: bool) -> _Config:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    ins = list(node.input) + [""] * (8 - len(node.input))
    for bad in ("clip", "activation_alpha", "activation_beta"):
        if bad in attrs:
            raise _refuse(node, f"attribute {bad}")
    if attrs.get("input_forget", 0):
        raise _refuse(node, "attribute input_forget=1")
    if ins[4]:
        raise _refuse(node, "input sequence_lens")
    if node.op_type == "LSTM" and ins[7]:
        raise _refuse(node, "input P (peepholes)")
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    dirs = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}.get(direction)
    if dirs is None:
        raise _refuse(node, f"direction {direction!r}")
    defaults = _DEFAULT_ACTS[node.op_type]
    given = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])] or \
        list(defaults) * len(dirs)
    if len(given) != len(defaults) * len(dirs) or any(a.lower() not in _ACTS for a in given):
        raise _refuse(node, f"activations {given} (only Sigmoid, Tanh, Relu)")
    acts = [tuple(_ACTS[a.lower()] for a in given[k * len(defaults):(k + 1) * len(defaults)])
            for k in range(len(dirs))]
    layout = int(attrs.get("layout", 0))
    x_type, x_dims = info.get(ins[0], (0, None))
    seq = x_dims[layout] if x_dims and len(x_dims) == 3 else None
    if not seq:
        raise _dynamic_seq(node, static_inputs)
    hidden = attrs.get("hidden_size") or ((info.get(ins[2], (0, None))[1] or [None] * 3)[2])
    if not hidden:
        raise _refuse(node, "an unknown hidden_size")
    dtype = x_type or info.get(ins[1], (onnx.TensorProto.FLOAT, None))[0]
    return _Config(node.op_type, node.name, int(hidden), int(seq), layout, dirs, acts,
                   bool(attrs.get("linear_before_reset", 0)), dtype)


def _dynamic_seq(node: onnx.NodeProto, static_inputs: bool) -> GraphpruneError:
    where = f"{node.op_type} node {node.name or node.output[0]!r}"
    if static_inputs:  # already pinned: the length comes out of control flow inference cannot resolve
        return GraphpruneError(f"{where} has a sequence length that shape inference cannot tell even at "
                               "static input shapes (it flows through If/Loop outputs of unknown shape): "
                               "TVM needs a static length to unroll it")
    return GraphpruneError(f"{where} has a dynamic sequence length: TVM needs it unrolled at a static "
                           "length; pin the input's dims with --input-shape")


class _Emitter:
    """Builds the replacement nodes with names unique in the whole model."""

    def __init__(self, prefix: str, names: set, opset: int):
        self.prefix, self.names, self.opset = prefix, names, opset
        self.nodes: list[onnx.NodeProto] = []
        self._consts: dict = {}

    def fresh(self, hint: str) -> str:
        base = f"{self.prefix}/lowered/{hint}"
        name, k = base, 0
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def op(self, op_type: str, inputs: list, out: str | None = None, **attrs) -> str:
        out = out or self.fresh(op_type)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.fresh(op_type + "_node"), **attrs))
        return out

    def const(self, value: np.ndarray) -> str:
        key = (value.dtype.str, value.shape, value.tobytes())
        if key not in self._consts:
            out = self.fresh("const")
            self.nodes.append(helper.make_node("Constant", [], [out], name=self.fresh("Constant_node"),
                                               value=numpy_helper.from_array(value, out)))
            self._consts[key] = out
        return self._consts[key]

    def split(self, x: str, axis: int, sizes: list[int]) -> list[str]:
        """Consecutive pieces of `x` along `axis`, one Slice each. Not Split: inside If bodies
        TVM 0.27's frontend leaves a Split's outputs as tuple items, and its binary-op converter
        then takes two of them for constants and fails ('TupleGetItem' object has no attribute 'value')."""
        outs, start = [], 0
        for size in sizes:
            bounds = [start], [start + size], [axis]
            if self.opset >= 10:
                outs.append(self.op("Slice", [x, *(self.const(np.array(b, np.int64)) for b in bounds)]))
            else:
                outs.append(self.op("Slice", [x], starts=bounds[0], ends=bounds[1], axes=bounds[2]))
            start += size
        return outs

    def pick(self, x: str, index: int) -> str:
        """x[index] along axis 0 (the num_directions or time axis), that axis dropped."""
        return self.op("Gather", [x, self.const(np.array(index, np.int64))], axis=0)

    def reshape(self, x: str, shape: list[int], out: str | None = None) -> str:
        return self.op("Reshape", [x, self.const(np.array(shape, np.int64))], out)


def _lower_node(node: onnx.NodeProto, cfg: _Config, e: _Emitter) -> None:
    ins = list(node.input) + [""] * (8 - len(node.input))
    outs = list(node.output) + [""] * (3 - len(node.output))
    x, init_h, init_c = ins[0], ins[5], ins[6]
    if cfg.layout == 1:  # batch-major: the same computation between transposes
        x = e.op("Transpose", [x], perm=[1, 0, 2])
        init_h = init_h and e.op("Transpose", [init_h], perm=[1, 0, 2])
        init_c = init_c and e.op("Transpose", [init_c], perm=[1, 0, 2])
    per_dir = [_direction(e, cfg, x, ins, d, init_h, init_c) for d in range(len(cfg.directions))]
    hd = cfg.hidden
    if outs[0]:
        ys = [e.op("Concat", [e.reshape(h, [1, -1, hd]) for h in hs], axis=0) if cfg.seq > 1
              else e.reshape(hs[0], [1, -1, hd]) for hs, _, _ in per_dir]
        final = outs[0] if cfg.layout == 0 else None
        if len(ys) == 1:
            y = e.reshape(ys[0], [cfg.seq, 1, -1, hd], final)
        else:
            y = e.op("Concat", [e.reshape(y, [cfg.seq, 1, -1, hd]) for y in ys], final, axis=1)
        if cfg.layout == 1:
            e.op("Transpose", [y], outs[0], perm=[2, 0, 1, 3])
    for slot, out in ((1, outs[1]), (2, outs[2] if cfg.op == "LSTM" else "")):
        if out:
            _stack_last(e, cfg, [d[slot] for d in per_dir], out)


def _stack_last(e: _Emitter, cfg: _Config, states: list[str], out: str) -> None:
    """Y_h / Y_c: [num_directions, batch, hidden] (layout 1: [batch, num_directions, hidden])."""
    final = out if cfg.layout == 0 else None
    if len(states) == 1:
        y = e.reshape(states[0], [1, -1, cfg.hidden], final)
    else:
        y = e.op("Concat", [e.reshape(s, [1, -1, cfg.hidden]) for s in states], final, axis=0)
    if cfg.layout == 1:
        e.op("Transpose", [y], out, perm=[1, 0, 2])


def _direction(e: _Emitter, cfg: _Config, x: str, ins: list, d: int, init_h: str, init_c: str):
    """Unroll direction `d`: (hidden state per time step in time order, last h, last c)."""
    hd, g = cfg.hidden, _GATES[cfg.op]
    wt = e.op("Transpose", [e.pick(ins[1], d)], perm=[1, 0])     # [input, gates*hidden]
    rt = e.op("Transpose", [e.pick(ins[2], d)], perm=[1, 0])     # [hidden, gates*hidden]
    xw = e.op("MatMul", [x, wt])                                 # every time step at once
    rbh = None
    if ins[3]:
        wb, rb = e.split(e.pick(ins[3], d), 0, [g * hd, g * hd])
        if cfg.op == "GRU" and cfg.lbr:  # Rbh stays inside r * (H Rh^T + Rbh)
            wb_zr, wb_h = e.split(wb, 0, [2 * hd, hd])
            rb_zr, rbh = e.split(rb, 0, [2 * hd, hd])
            bias = e.op("Concat", [e.op("Add", [wb_zr, rb_zr]), wb_h], axis=0)
        else:
            bias = e.op("Add", [wb, rb])
        xw = e.op("Add", [xw, bias])
    h = e.pick(init_h, d) if init_h else None   # None: zeros, the recurrent terms vanish
    c = e.pick(init_c, d) if init_c else None
    step = {"LSTM": _lstm_step, "GRU": _gru_step, "RNN": _rnn_step}[cfg.op]
    if cfg.op == "GRU" and not cfg.lbr:
        rt = e.split(rt, 1, [2 * hd, hd])
    hs = [None] * cfg.seq
    reverse = cfg.directions[d]
    for t in (reversed(range(cfg.seq)) if reverse else range(cfg.seq)):
        h, c = step(e, cfg, cfg.acts[d], e.pick(xw, t), h, c, rt, rbh)
        hs[t] = h
    return hs, h, c


def _lstm_step(e, cfg, acts, xt, h, c, rt, _rbh):
    f, g, hact = acts
    gates = e.op("Add", [xt, e.op("MatMul", [h, rt])]) if h else xt
    hd = cfg.hidden
    if f == g:
        i, o, fg, cand = [e.op(f, [s]) for s in e.split(gates, 1, [hd] * 4)]
    else:
        iof, cand = e.split(gates, 1, [3 * hd, hd])
        i, o, fg = e.split(e.op(f, [iof]), 1, [hd] * 3)
        cand = e.op(g, [cand])
    new_c = e.op("Mul", [i, cand])
    if c:
        new_c = e.op("Add", [e.op("Mul", [fg, c]), new_c])
    return e.op("Mul", [o, e.op(hact, [new_c])]), new_c


def _gru_step(e, cfg, acts, xt, h, c, rt, rbh):
    f, g = acts
    hd = cfg.hidden
    xzr, xh = e.split(xt, 1, [2 * hd, hd])
    if cfg.lbr:
        if h:
            hzr, hh = e.split(e.op("MatMul", [h, rt]), 1, [2 * hd, hd])
            xzr = e.op("Add", [xzr, hzr])
            hh = e.op("Add", [hh, rbh]) if rbh else hh
        else:
            hh = rbh
    elif h:
        xzr = e.op("Add", [xzr, e.op("MatMul", [h, rt[0]])])
    z, r = e.split(e.op(f, [xzr]), 1, [hd, hd])
    if cfg.lbr:
        pre = e.op("Add", [xh, e.op("Mul", [r, hh])]) if hh else xh
    else:
        pre = e.op("Add", [xh, e.op("MatMul", [e.op("Mul", [r, h]), rt[1]])]) if h else xh
    cand = e.op(g, [pre])
    one = e.const(np.array(1, helper.tensor_dtype_to_np_dtype(cfg.dtype)))
    new_h = e.op("Mul", [e.op("Sub", [one, z]), cand])
    if h:
        new_h = e.op("Add", [new_h, e.op("Mul", [z, h])])
    return new_h, None


def _rnn_step(e, cfg, acts, xt, h, c, rt, _rbh):
    pre = e.op("Add", [xt, e.op("MatMul", [h, rt])]) if h else xt
    return e.op(acts[0], [pre]), None
