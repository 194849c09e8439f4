"""Shape inference and the ONNX check, run on the graph without its weights.

onnx's C++ checker and shape inference take a serialised model: for a VGG that is 500 MB
copied and parsed twice per call. Both only need each weight's type and shape, so large
initializers are replaced by graph inputs of the same type and shape; small ones (Reshape
targets, Slice bounds, which data propagation reads) stay.
"""
from __future__ import annotations

import onnx
from onnx import helper

_KEEP_ELEMENTS = 64


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    skel = onnx.ModelProto()
    graph = model.graph
    skel.CopyFrom(onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import,
                                  functions=model.functions))
    skel.graph.CopyFrom(onnx.GraphProto(name=graph.name, node=graph.node, input=graph.input,
                                        output=graph.output, value_info=graph.value_info,
                                        sparse_initializer=graph.sparse_initializer))
    listed = {i.name for i in graph.input}
    for t in graph.initializer:
        n = 1
        for d in t.dims:
            n *= d
        if n <= _KEEP_ELEMENTS and t.data_location != onnx.TensorProto.EXTERNAL:
            skel.graph.initializer.append(t)
        elif t.name not in listed:
            skel.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    if skel.ir_version < 4:  # inputs may only be listed initializers there; checking needs >= 4
        skel.ir_version = 4
    _localize_small_constants(skel.graph)
    return skel


def names_read(graph: onnx.GraphProto) -> set:
    """Names read by the nodes of `graph` and of every body nested in it, and by their outputs
    (a body may return an outer-scope tensor as it is)."""
    names = {o.name for o in graph.output}
    for n in graph.node:
        names.update(n.input)
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                names |= names_read(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    names |= names_read(g)
    return names


def _localize_small_constants(graph: onnx.GraphProto) -> None:
    """Move each small initializer that only If/Loop bodies read into the bodies that read it.

    Why: onnx's shape inference reads constant *values* (Reshape targets, Pad widths, Slice
    bounds) only from the graph being inferred, not from the outer scope, and graphprune's
    export keeps every constant in the main graph. Inside a body, an outer-scope Pad width
    makes every shape after it unknown, and with it the rank tests (`if x.dim() == 3`) that
    TorchScript exports as nested Ifs (silero-vad). Moved one level at a time, recursively;
    a constant the graph's own nodes read stays where it is."""
    own = {i for n in graph.node for i in n.input} | {i.name for i in graph.input}
    bodies = [a.g for n in graph.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH]
    if not bodies:
        return
    reads = [names_read(b) for b in bodies]
    keep = []
    for t in graph.initializer:
        users = [b for b, r in zip(bodies, reads) if t.name in r]
        if t.name not in own and users and _elements(t) <= _KEEP_ELEMENTS:
            for body in users:  # sibling bodies (then/else) are separate scopes: each gets its copy
                body.initializer.append(t)
        else:
            keep.append(t)
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)
    for b in bodies:
        _localize_small_constants(b)


def _elements(t: onnx.TensorProto) -> int:
    n = 1
    for d in t.dims:
        n *= d
    return n


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with value_info filled in (best effort: unchanged where inference fails)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(_skeleton(model), data_prop=True)
    except Exception:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    recorded = {v.name: v for v in model.graph.value_info}
    del out.graph.value_info[:]
    out.graph.value_info.extend(inferred.graph.value_info)
    for vi in out.graph.value_info:  # a dim the exporter recorded beats an unknown one inferred
        if vi.name in recorded:
            _keep_recorded_dims(vi, recorded[vi.name])
    _copy_body_shapes(inferred.graph, out.graph)
    # graph outputs gain shapes too when they had none
    by_name = {o.name: o for o in inferred.graph.output}
    for o in out.graph.output:
        if not o.type.tensor_type.HasField("shape") and o.name in by_name:
            o.CopyFrom(by_name[o.name])
    return out


def _keep_recorded_dims(inferred: onnx.ValueInfoProto, recorded: onnx.ValueInfoProto) -> None:
    """Data propagation cannot see through a Reshape target built from a graph input, but the
    exporter recorded the size it traced: keep such dims (same rank only)."""
    got, had = inferred.type.tensor_type.shape.dim, recorded.type.tensor_type.shape.dim
    if not recorded.type.tensor_type.HasField("shape") or len(got) != len(had):
        return
    for g, h in zip(got, had):
        if not g.HasField("dim_value") and h.HasField("dim_value") and h.dim_value > 0:
            g.Clear()
            g.dim_value = h.dim_value


def inferred_at(model: onnx.ModelProto, concrete: dict[str, list[int]]) -> onnx.ModelProto:
    """The weight-less skeleton of `model` with its inputs at `concrete` dims, shapes inferred:
    shapes need no weights, and copying a 100 MB model per query would cost more than inferring."""
    from graphprune.inputs import with_static_inputs

    skel = _skeleton(model)
    weights = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in skel.graph.input
               if i.name not in concrete}
    return infer_shapes(with_static_inputs(skel, {**weights, **concrete}))


def static_output_shapes(model: onnx.ModelProto, concrete: dict[str, list[int]]) -> list[tuple] | None:
    """Every graph output's dims at `concrete` input dims, if inference resolves them all."""
    out = []
    for o in inferred_at(model, concrete).graph.output:
        tt = o.type.tensor_type
        if not tt.HasField("shape") or not all(d.HasField("dim_value") and d.dim_value > 0 for d in tt.shape.dim):
            return None
        out.append(tuple(d.dim_value for d in tt.shape.dim))
    return out


def check(model: onnx.ModelProto) -> None:
    """onnx.checker with strict shape inference; raises onnx's own exception types."""
    onnx.checker.check_model(_skeleton(model), full_check=True)


def _copy_body_shapes(src: onnx.GraphProto, dst: onnx.GraphProto) -> None:
    """Shapes onnx inferred inside If/Loop bodies (the skeleton has the same nodes, in order)."""
    for sn, dn in zip(src.node, dst.node):
        for sa, da in zip(sn.attribute, dn.attribute):
            if sa.type == onnx.AttributeProto.GRAPH and da.type == onnx.AttributeProto.GRAPH:
                del da.g.value_info[:]
                da.g.value_info.extend(sa.g.value_info)
                for so, do in zip(sa.g.output, da.g.output):
                    if not do.type.tensor_type.HasField("shape") and so.type.tensor_type.HasField("shape"):
                        do.CopyFrom(so)
                _copy_body_shapes(sa.g, da.g)


def pin_input_shapes(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> onnx.ModelProto:
    """A copy whose named inputs have the given static dims, shapes re-inferred: what the
    analysis sees when `--input-shape` pins dynamic dims (the user's model keeps them).
    Graph outputs lose their declared shapes: symbolic dims there would contradict the
    now-static inferred ones. Known intermediate shapes are kept: inference refines their
    symbolic dims and cannot always re-derive them (exporters' shapes inside If bodies)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for inp in m.graph.input:
        if inp.name in shapes:
            dims = inp.type.tensor_type.shape.dim
            for d, v in zip(dims, shapes[inp.name]):
                d.Clear()
                d.dim_value = int(v)
    for o in m.graph.output:
        o.type.tensor_type.ClearField("shape")
    return infer_shapes(m)
