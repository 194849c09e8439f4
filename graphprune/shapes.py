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
    return skel


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with value_info filled in (best effort: unchanged where inference fails)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(_skeleton(model), data_prop=True)
    except Exception:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.value_info[:]
    out.graph.value_info.extend(inferred.graph.value_info)
    # graph outputs gain shapes too when they had none
    by_name = {o.name: o for o in inferred.graph.output}
    for o in out.graph.output:
        if not o.type.tensor_type.HasField("shape") and o.name in by_name:
            o.CopyFrom(by_name[o.name])
    return out


def check(model: onnx.ModelProto) -> None:
    """onnx.checker with strict shape inference; raises onnx's own exception types."""
    onnx.checker.check_model(_skeleton(model), full_check=True)
