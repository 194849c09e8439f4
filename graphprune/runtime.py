"""Running models in onnxruntime (the reference runtime of every check)."""
from __future__ import annotations

import numpy as np
import onnx

from graphprune.errors import GraphpruneError


def session(model: onnx.ModelProto, threads: int = 0) -> "ort.InferenceSession":
    import onnxruntime as ort  # here, not at the top: `graphprune prune` without --verify never runs a model

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = str(exc).strip().splitlines()
        raise GraphpruneError(f"onnxruntime cannot load the model: {first[0] if first else exc}") from None


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return session(model).run(None, feeds)
