"""Quantization support shared by the quantization passes and `graphprune quantize`.

The passes themselves live in passes/ (quantize_int8.py, float16.py): model in, model
out. This package holds what they and the CLI share:
* `calibration`: feeding numpy data (or a graphprune.data Dataset) to
  onnxruntime.quantization's calibrator;
* `precision`: the per-node / per-group precision map (fp32 / int8 / fp16), validated
  against the model, and the metadata entry that records it in the output;
* `check`: the numerical check of a quantized model against its fp32 original.

Only `calibration` imports onnxruntime at module level; the passes import it when they run.
"""
from graphprune.quant.precision import (MAC_OPS, PRECISION_KEY, PRECISIONS, graph_precision, group_precision,
                                        precision_of, quantizable_nodes, resolve_exclusions)

__all__ = ["MAC_OPS", "PRECISIONS", "PRECISION_KEY", "graph_precision", "group_precision", "precision_of",
           "quantizable_nodes", "resolve_exclusions"]
