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
