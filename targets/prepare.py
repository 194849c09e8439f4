"""Make an ONNX model importable by TVM's Relax frontend: static shapes, shape math folded.

Why: exporters (Paddle2ONNX, PyTorch with dynamic axes, tf2onnx) compute Reshape targets,
Pad widths and Resize sizes from Shape ops at run time. Relax's frontend turns those into
tensors, not shapes, and refuses them (`Reshape requires the input new shape to be Shape`,
`Dynamic pads are not supported`), or keeps symbolic H/W it cannot prove equal after a
Resize (`Concat expects the input tensors to have the same shape`). With the inputs pinned
to the one concrete shape every command uses (graphprune.inputs.concrete_shapes), all that
shape math is constant; onnxruntime's own graph optimizer at ORT_ENABLE_BASIC folds it
(constant folding with shape inference, Shape of a static tensor included, redundant node
elimination; only ONNX-domain ops, so Relax can read the result). onnxruntime is already a
dependency and the reference every TVM output is checked against, so folding with it adds
no package and no second interpretation of the graph (see docs/latency.md).

Recurrent layers: Relax has no LSTM/GRU/RNN converter, so after the shapes are pinned and
folded, import_relax unrolls them into primitive ops (passes/lower_rnn.py). That happens
here only, in the TVM import path: onnxruntime runs (the reference, prune's check, verify)
keep the original fused nodes. Clip is converted by graphprune's own converter (targets/
onnx_converters.py: Relax maximum/minimum instead of TVM's opaque TOPI call, so the NHWC layout
conversion and operator fusion see through it).
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings

import numpy as np
import onnx

from graphprune.errors import GraphpruneError
from graphprune.inputs import check_input_shapes, concrete_shapes, graph_inputs, with_static_inputs


def pinned_shapes(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None) -> dict[str, list[int]]:
    """The concrete input shapes (the one rule: batch 1, other dynamic dims 64, --input-shape overrides)."""
    check_input_shapes(model, input_shapes)
    return concrete_shapes(model, input_shapes)


def has_dynamic_dims(model: onnx.ModelProto) -> bool:
    """True when some input dim is symbolic: a compiled library then accepts only the pinned shape."""
    return any(not (d.HasField("dim_value") and d.dim_value > 0)
               for i in graph_inputs(model) for d in i.type.tensor_type.shape.dim)


def _ort_fold(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """onnxruntime's ORT_ENABLE_BASIC rewrite of `model`, or None when onnxruntime cannot load it
    (then TVM gets the unfolded model and reports what it cannot import)."""
    import onnxruntime as ort
    with tempfile.TemporaryDirectory(prefix="graphprune-fold-") as tmp:
        out = os.path.join(tmp, "folded.onnx")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = out
        so.log_severity_level = 3
        try:
            ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            return onnx.load(out)
        except Exception:  # onnxruntime's own load errors: the model goes to TVM as it is
            return None


def _drop_empty_resize_inputs(model: onnx.ModelProto) -> None:
    """Resize with an empty `scales` (or `roi`) initializer next to `sizes` means "not given";
    Relax asserts that only one of scales and sizes is given, so name them as absent ("")."""
    empty = {t.name for t in model.graph.initializer if int(np.prod(t.dims)) == 0}
    for node in model.graph.node:
        if node.op_type != "Resize":
            continue
        for i in (1, 2):
            if i < len(node.input) and node.input[i] in empty:
                node.input[i] = ""


def static_model(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None):
    """(model with static inputs and folded shape math, the pinned shapes)."""
    shapes = pinned_shapes(model, input_shapes)
    pinned = with_static_inputs(model, shapes)
    folded = _ort_fold(pinned) or pinned
    _drop_empty_resize_inputs(folded)
    return folded, shapes


def _unsupported(model: onnx.ModelProto) -> str | None:
    """'op (node NAME)' for the first node Relax's frontend has no converter for, else None."""
    try:
        from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map
        known = set(_get_convert_map()) | {"If", "Constant"}
    except Exception:  # a private helper of TVM's frontend: when it moves, TVM's own check speaks
        return None
    for node in model.graph.node:
        if node.op_type not in known:
            where = f"{node.domain}." if node.domain not in ("", "ai.onnx") else ""
            return f"operator {where}{node.op_type} (node {node.name or '(unnamed)'!r})"
    return None


def _last_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:300]


def import_relax(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None):
    """(Relax IRModule with weights bound as constants, pinned shapes), or a one-line
    GraphpruneError naming the operator TVM cannot import."""
    from tvm.relax.frontend.onnx import from_onnx
    from graphprune.passes.lower_rnn import LowerRNNPass
    from graphprune.targets.onnx_converters import layout_friendly_converters
    static, shapes = static_model(model, input_shapes)
    static = LowerRNNPass()(static)  # TVM only: the sequence length is static now
    missing = _unsupported(static)
    if missing:
        raise GraphpruneError(f"TVM cannot import this model: its ONNX frontend has no converter for {missing}")
    dtypes = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name
              for i in graph_inputs(static)}
    printed = io.StringIO()
    try:  # the frontend prints "Error converting operator X, with inputs: ..." to stdout (--json!)
        with contextlib.redirect_stdout(printed), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # renamed inputs, the outputs' cleared shapes: not the user's concern
            with layout_friendly_converters():   # Clip as Relax ops ConvertLayout and FuseOps see into
                mod = from_onnx(static, shape_dict=shapes, dtype_dict=dtypes, keep_params_in_input=False)
    except Exception as exc:  # the frontend raises many types for unsupported graphs
        op = next((ln.split(",")[0].replace("Error converting operator ", "")
                   for ln in printed.getvalue().splitlines() if ln.startswith("Error converting operator ")), "")
        where = f" (operator {op})" if op else ""
        raise GraphpruneError(f"TVM cannot import this model{where}: {type(exc).__name__}: {_last_line(exc)}") from None
    return mod, shapes

