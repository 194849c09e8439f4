"""The pass interface: one object, one job, model in, model out (as in LLVM/TVM).

A pass never mutates its input ModelProto; pipelines compose passes in order.
"""
from __future__ import annotations

import onnx


class Pass:
    """A graph transformation. Subclasses implement `run` and keep `name` short."""

    name = "pass"

    def run(self, model: onnx.ModelProto) -> onnx.ModelProto:  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(self, model: onnx.ModelProto) -> onnx.ModelProto:
        return self.run(model)


class Pipeline(Pass):
    """Runs passes in sequence; the output of one is the input of the next."""

    name = "pipeline"

    def __init__(self, passes: list[Pass]):
        self.passes = list(passes)

    def run(self, model: onnx.ModelProto) -> onnx.ModelProto:
        for p in self.passes:
            model = p.run(model)
        return model


def copy_model_fields(src: onnx.ModelProto, dst: onnx.ModelProto) -> None:
    """Give a re-exported model the user's model-level fields, which gs export resets:
    IR version, opsets, producer, metadata, functions. IR < 4 requires initializers to
    be listed as graph inputs too, so they are (with their current shapes)."""
    dst.ir_version = src.ir_version
    del dst.opset_import[:]
    dst.opset_import.extend(src.opset_import)
    for f in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(dst, f, getattr(src, f))
    del dst.metadata_props[:]
    dst.metadata_props.extend(src.metadata_props)
    if src.functions and not dst.functions:
        dst.functions.extend(src.functions)
    if dst.ir_version < 4:
        inits = {t.name: t for t in dst.graph.initializer}
        keep = [i for i in dst.graph.input if i.name not in inits]
        del dst.graph.input[:]
        dst.graph.input.extend(keep)
        dst.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                               for t in inits.values())
