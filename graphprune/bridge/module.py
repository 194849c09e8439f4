"""ONNX -> torch.nn.Module bridge, and trained weights back into the ONNX model.

Why our own and not onnx2torch: onnx2torch (unmaintained since 2024) fails on
plain ``torch.onnx.export`` output because of Identity nodes in front of
initializers, and does not give the per-node module mapping the XAI criteria
need. This bridge:

* builds every Conv / ConvTranspose / Gemm / constant-weight MatMul /
  BatchNormalization / activation / pooling node as an nn module registered
  under the sanitised ONNX node name (``bridge.module_for_node(name)``), so
  zennit composites and captum layer methods work unchanged and each Conv's
  output can be hooked by its ONNX node name;
* runs every other node as a small torch function (graphprune.bridge.ops) in
  graph order inside ``forward``, eagerly, so dynamic shapes and batch work;
* resolves weights given as initializers, as Constant nodes (Paddle exports)
  or through Identity nodes, and makes layers that share an initializer share
  one nn.Parameter;
* writes the (possibly trained) tensors back: ``bridge.write_back(model)``
  returns a copy of the ONNX model with every mapped constant replaced, bit-exact
  when nothing was trained.

Modules start in eval mode (BatchNorm uses the stored running statistics), as
XAI scores must be computed on the deployed function.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import numpy_helper

from graphprune.bridge.layers import Layer, Sum, WeightUse, build_layer
from graphprune.bridge.ops import OPS, _split
from graphprune.errors import GraphpruneError

__all__ = ["OnnxModule", "to_torch", "Sum"]

_PRODUCER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _attrs(node: onnx.NodeProto) -> dict:
    out = {}
    for at in node.attribute:
        v = onnx.helper.get_attribute_value(at)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, onnx.TensorProto):
            v = torch.from_numpy(numpy_helper.to_array(v).copy())
        elif isinstance(v, list):
            v = [x.decode() if isinstance(x, bytes) else x for x in v]
        out[at.name] = v
    return out


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    a = {at.name: at for at in node.attribute}
    if "value" in a:
        return numpy_helper.to_array(a["value"].t)
    if "value_float" in a:
        return np.array(a["value_float"].f, np.float32)
    if "value_floats" in a:
        return np.array(list(a["value_floats"].floats), np.float32)
    if "value_int" in a:
        return np.array(a["value_int"].i, np.int64)
    if "value_ints" in a:
        return np.array(list(a["value_ints"].ints), np.int64)
    raise GraphpruneError(f"Constant {node.name}: unsupported value attribute {sorted(a)}")


def _sanitize(name: str) -> str:
    s = re.sub(r"[^0-9A-Za-z_]", "_", name).strip("_") or "node"
    return ("n_" + s) if s[0].isdigit() else s


@dataclass
class _Step:
    node: onnx.NodeProto
    inputs: list[str]
    outputs: list[str]
    key: str | None = None        # module name when the node is a module
    layer: Layer | None = None
    attrs: dict | None = None


class OnnxModule(nn.Module):
    """An ONNX graph as an nn.Module; see the module docstring for the mapping rules."""

    def __init__(self, model: onnx.ModelProto):
        super().__init__()
        graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        self._ranks = _infer_ranks(model)
        init_names = {t.name for t in graph.initializer}
        self.input_names = [i.name for i in graph.input if i.name not in init_names]
        self.output_names = [o.name for o in graph.output]
        # static input dims (None where symbolic), so callers can check data before running
        self.input_shapes = [[d.dim_value if d.HasField("dim_value") else None
                              for d in i.type.tensor_type.shape.dim]
                             for i in graph.input if i.name not in init_names]

        # constants: initializers, Constant node outputs, and Identity aliases of either
        self._const_np: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self._const_source: dict[str, str] = {t.name: "initializer" for t in graph.initializer}
        self._alias: dict[str, str] = {}
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                self._const_np[node.output[0]] = _constant_value(node)
                self._const_source[node.output[0]] = "constant:" + node.output[0]
            elif node.op_type == "Identity" and self._canon(node.input[0]) in self._const_np:
                self._alias[node.output[0]] = self._canon(node.input[0])
        self._const_t = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in self._const_np.items()}

        self._node_to_key: dict[str, str] = {}
        self._ambiguous: set[str] = set()  # node names given to more than one module
        self._uses: dict[str, tuple[str, WeightUse]] = {}   # canonical const -> (module key, use)
        self._shared: dict[tuple, torch.Tensor] = {}  # (const, kind, shape, is_param) -> tensor
        self._steps: list[_Step] = []
        self._bufkeys: dict[str, str] = {}
        for i, node in enumerate(graph.node):
            if node.op_type == "Constant" or node.output[0] in self._alias:
                continue
            self._steps.append(self._build_step(i, node))
        # constants still read at run time become buffers, so .to(device) moves them
        needed = {self._canon(n) for s in self._steps for n in s.node.input if n}
        needed |= {self._canon(n) for n in self.output_names}
        for name in sorted(needed):
            if name in self._const_t and name not in self._uses:
                key = f"const{len(self._bufkeys)}"
                self.register_buffer(key, self._const_t[name], persistent=False)
                self._bufkeys[name] = key
        self.eval()

    # -- building -------------------------------------------------------
    def _canon(self, name: str) -> str:
        while name in self._alias:
            name = self._alias[name]
        return name

    def _const(self, name: str):
        if not name:
            return None
        return self._const_t.get(self._canon(name))

    def _rank(self, name: str):
        return self._ranks.get(name)

    def _unique_key(self, node: onnx.NodeProto, index: int) -> str:
        base = _sanitize(node.name) if node.name else f"{node.op_type}_{index}"
        key, n = base, 1
        while key in self._modules or hasattr(self, key):
            n += 1
            key = f"{base}_{n}"
        return key

    def _build_step(self, index: int, node: onnx.NodeProto) -> _Step:
        attrs = _attrs(node)
        step = _Step(node, list(node.input), list(node.output), attrs=attrs)
        if node.domain not in ("", "ai.onnx"):
            raise GraphpruneError(f"node {node.name or index}: custom domain {node.domain}::{node.op_type} "
                                  "is not supported")
        layer = build_layer(node, attrs, self._const, self._rank, self.opset)
        if layer is None and node.op_type == "Add" and len(node.input) == 2 and \
                self._const(node.input[0]) is None and self._const(node.input[1]) is None:
            layer = Layer(Sum())
        if layer is None:
            if node.op_type not in OPS and node.op_type != "Split":
                raise GraphpruneError(f"node {node.name or index}: operator {node.op_type} is not supported "
                                      "by the torch bridge")
            return step
        key = self._unique_key(node, index)
        self.add_module(key, layer.module)
        for use in layer.weights:
            self._bind(layer.module, key, use)
        step.key, step.layer = key, layer
        step.inputs = list(node.input[:1])
        if node.op_type == "Add":
            step.inputs = list(node.input)
        name = node.name or node.output[0]
        if name in self._node_to_key:
            self._ambiguous.add(name)
        self._node_to_key[name] = key
        return step

    def _bind(self, module: nn.Module, key: str, use: WeightUse) -> None:
        """Load a constant into module.attr; layers sharing a constant share one tensor."""
        const = self._canon(use.const)
        use = WeightUse(const, use.attr, use.kind)
        value = self._const_t[const]
        current = getattr(module, use.attr)
        is_param = isinstance(current, nn.Parameter)
        # exporters deduplicate equal initializers (a zero bias and a zero running_mean become
        # one): a constant used as a parameter and as a buffer gets one tensor of each kind
        cache_key = (const, use.kind, tuple(current.shape), is_param)
        shared = self._shared.get(cache_key)
        if shared is None:
            data = value.t() if use.kind == "T" else value.reshape(current.shape)
            data = data.to(current.dtype).clone()
            shared = nn.Parameter(data) if is_param else data
            self._shared[cache_key] = shared
        if is_param:
            setattr(module, use.attr, shared)
        else:
            module.register_buffer(use.attr, shared)
        self._uses.setdefault(const, (key, use))

    # -- running ----------------------------------------------------------
    def _onnx_value(self, const: str) -> torch.Tensor:
        key, use = self._uses[const]
        t = getattr(self._modules[key], use.attr)
        shape = self._const_np[const].shape
        return t.t() if use.kind == "T" else t.reshape(shape)

    def forward(self, *inputs):
        if len(inputs) != len(self.input_names):
            raise GraphpruneError(f"the model takes {len(self.input_names)} inputs, got {len(inputs)}")
        env = dict(zip(self.input_names, inputs))

        def get(name):
            if not name:
                return None
            if name in env:
                return env[name]
            c = self._canon(name)
            if c in self._bufkeys:
                return getattr(self, self._bufkeys[c])
            if c in self._uses:
                return self._onnx_value(c)
            if c in env:
                return env[c]
            raise GraphpruneError(f"tensor {name} is used before it is computed")

        for step in self._steps:
            ins = [get(n) for n in step.inputs]
            if step.layer is not None:
                layer = step.layer
                if step.node.op_type == "Add":
                    x = torch.stack(torch.broadcast_tensors(ins[0], ins[1]))  # Sum adds over axis 0
                else:
                    x = ins[0] if layer.pre is None else layer.pre(ins[0])
                y = layer.module(x)
                out = layer.post(y, get) if layer.post is not None else y
            elif step.node.op_type == "Split":
                out = _split(ins, step.attrs, self.opset, len(step.outputs))
            else:
                out = OPS[step.node.op_type](ins, step.attrs, self.opset)
            if isinstance(out, (tuple, list)):
                for name, t in zip(step.outputs, out):
                    if name:
                        env[name] = t
            else:
                env[step.outputs[0]] = out
        outs = [get(n) for n in self.output_names]
        return outs[0] if len(outs) == 1 else tuple(outs)

    # -- mapping ------------------------------------------------------------
    def module_for_node(self, node_name: str) -> nn.Module:
        """The nn module an ONNX node became (KeyError naming the node when it runs as a function)."""
        if node_name in self._ambiguous:  # which of them? refuse rather than hook the wrong layer
            raise GraphpruneError(f"ONNX node name {node_name!r} is not unique in the model; "
                                  "bridge graphprune.load(model), which names nodes uniquely")
        if node_name not in self._node_to_key:
            raise KeyError(f"ONNX node {node_name!r} has no module in the bridge")
        return self._modules[self._node_to_key[node_name]]

    def node_names(self, op_type: str | None = None) -> list[str]:
        """ONNX names of the nodes that became modules, in graph order (optionally of one op type)."""
        return [s.node.name or s.outputs[0] for s in self._steps
                if s.key is not None and (op_type is None or s.node.op_type == op_type)]

    def conv_nodes(self) -> list[str]:
        """ONNX names of the Conv nodes that became nn.Conv modules, in graph order."""
        return self.node_names("Conv")

    def producer_nodes(self) -> list[str]:
        """ONNX names of the nodes whose output channels pruning removes (Conv, ConvTranspose,
        Gemm, constant-weight MatMul) and that became modules, in graph order. A hook on
        such a module sees the node's output channels (Gemm's alpha/beta and an unfolded
        bias, or an asymmetric ConvTranspose's crop, are applied after the module)."""
        return [s.node.name or s.outputs[0] for s in self._steps
                if s.key is not None and s.node.op_type in _PRODUCER_OPS]

    def conv_bn_pairs(self) -> list[tuple[str, str]]:
        """(Conv, BatchNormalization) node pairs where the BN is the Conv output's only consumer."""
        consumers: dict[str, list[_Step]] = {}
        for s in self._steps:
            for n in s.inputs:
                consumers.setdefault(n, []).append(s)
        pairs = []
        for s in self._steps:
            if s.key is None or s.node.op_type != "Conv" or s.outputs[0] in self.output_names:
                continue
            cons = consumers.get(s.outputs[0], [])
            if len(cons) == 1 and cons[0].node.op_type == "BatchNormalization" and cons[0].key is not None:
                pairs.append((s.node.name or s.outputs[0], cons[0].node.name or cons[0].outputs[0]))
        return pairs

    def hook(self, node_name: str, fn):
        """register_forward_hook on the module of ONNX node `node_name`."""
        return self.module_for_node(node_name).register_forward_hook(fn)

    # -- write-back ------------------------------------------------------------
    def write_back(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """A copy of `model` whose mapped constants hold this module's current tensors."""
        out = copy.deepcopy(model)
        inits = {t.name: t for t in out.graph.initializer}
        consts = {n.output[0]: n for n in out.graph.node if n.op_type == "Constant"}
        for const in self._uses:
            orig = self._const_np[const]
            arr = self._onnx_value(const).detach().cpu().numpy().astype(orig.dtype).reshape(orig.shape)
            if const in inits:
                inits[const].CopyFrom(numpy_helper.from_array(arr, const))
            elif const in consts:
                node = consts[const]
                del node.attribute[:]
                node.attribute.append(onnx.helper.make_attribute("value", numpy_helper.from_array(arr, const)))
            else:
                raise GraphpruneError(f"write_back: the model has no initializer or Constant named {const}")
        return out


def _infer_ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor ranks from ONNX shape inference (empty where it fails); used to pick 1-D/2-D/3-D modules."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:
        return {}
    ranks = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            ranks[vi.name] = len(t.shape.dim)
    return ranks


def to_torch(model) -> OnnxModule:
    """Bridge an onnx.ModelProto or a path to an .onnx file."""
    if not isinstance(model, onnx.ModelProto):
        from graphprune.modelio import read_model
        model = read_model(model)
    return OnnxModule(model)
