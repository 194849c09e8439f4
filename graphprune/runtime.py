"""Running models in onnxruntime (the reference runtime of every check)."""
from __future__ import annotations

import numpy as np
import onnx

from graphprune.errors import GraphpruneError


def session(model: onnx.ModelProto, threads: int = 0, quick: bool = False) -> "ort.InferenceSession":
    """An onnxruntime CPU session of `model`.

    quick=True is for checks that run a model once (does the pruned model load and run, with
    which output shapes): its weights reach onnxruntime as in-memory external initializers
    instead of inside a serialised copy of the model (serialising a 100 MB resnet50 took longer
    than running it), and graph optimisations are off (they pay back over many runs, not one).
    Loading still resolves the graph with onnxruntime's type and shape checks, which is what
    rejects a broken model; the numbers are those of the unfused kernels."""
    import onnxruntime as ort  # here, not at the top: `graphprune prune` without --verify never runs a model

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    payload, keep = model, []
    if quick:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        payload, names, keep = _weights_apart(model)
        if names:
            opts.add_external_initializers(names, keep)
    try:
        sess = ort.InferenceSession(payload.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = str(exc).strip().splitlines()
        raise GraphpruneError(f"onnxruntime cannot load the model: {first[0] if first else exc}") from None
    sess._graphprune_weights = keep  # onnxruntime reads them from these buffers: alive as long as it
    return sess


_APART_BYTES = 4096  # small tensors (shape constants) stay in the model: not worth an OrtValue each


def _weights_apart(model: onnx.ModelProto):
    """(copy of `model` whose large main-graph initializers are marked external, their names,
    OrtValues viewing their bytes). Tensors without raw_data or already external stay."""
    import onnxruntime as ort

    g = model.graph
    skel = onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import,
                           functions=model.functions)
    skel.graph.CopyFrom(onnx.GraphProto(name=g.name, node=g.node, input=g.input, output=g.output,
                                        value_info=g.value_info, sparse_initializer=g.sparse_initializer))
    names, values = [], []
    for t in g.initializer:
        raw = t.raw_data if t.data_location != onnx.TensorProto.EXTERNAL else b""
        try:
            value = ort.OrtValue.ortvalue_from_numpy(np.frombuffer(
                raw, dtype=onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).reshape(tuple(t.dims))) \
                if len(raw) >= _APART_BYTES else None
        except Exception:  # a dtype numpy or onnxruntime's binding cannot view (bfloat16, 4-bit): inline
            value = None
        if value is None:
            skel.graph.initializer.append(t)
            continue
        e = skel.graph.initializer.add()
        e.name, e.data_type, e.data_location = t.name, t.data_type, onnx.TensorProto.EXTERNAL
        e.dims.extend(t.dims)
        for key, text in (("location", "graphprune-in-memory"), ("offset", "0"), ("length", str(len(raw)))):
            kv = e.external_data.add()
            kv.key, kv.value = key, text
        names.append(t.name)
        values.append(value)
    return skel, names, values


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return session(model).run(None, feeds)
