"""Per-channel importance scores stored in the model's metadata_props.

Format (key ``graphprune.importance``): a JSON object
``{"method": str, "scores": {conv_node_name: [one float per output channel]}, ...}``
with any further provenance keys (parameters, samples, data hash). Per-class
scores live under ``graphprune.importance.per_class``. The XAI scorer writes
this, the `metadata` criterion reads it, and the pruning pass keeps it in step
with the channels it keeps.
"""
from __future__ import annotations

import json

import onnx

IMPORTANCE_KEY = "graphprune.importance"
PER_CLASS_KEY = "graphprune.importance.per_class"


def get_json(model: onnx.ModelProto, key: str) -> dict | None:
    for prop in model.metadata_props:
        if prop.key == key:
            return json.loads(prop.value)
    return None


def set_json(model: onnx.ModelProto, key: str, value: dict | None) -> None:
    """Set (or with None, remove) one JSON metadata entry, keeping all others."""
    keep = [(p.key, p.value) for p in model.metadata_props if p.key != key]
    del model.metadata_props[:]
    for k, v in keep:
        model.metadata_props.add(key=k, value=v)
    if value is not None:
        model.metadata_props.add(key=key, value=json.dumps(value, separators=(",", ":")))


def read_importance(model: onnx.ModelProto) -> dict | None:
    return get_json(model, IMPORTANCE_KEY)


def write_importance(model: onnx.ModelProto, method: str, scores: dict[str, list[float]], **provenance) -> None:
    set_json(model, IMPORTANCE_KEY, {"method": method, **provenance,
                                     "scores": {k: [float(x) for x in v] for k, v in scores.items()}})


def encode_per_class(method: str, per_class: dict) -> dict:
    """Compact JSON for (classes, C) score arrays: base64 of little-endian float16 + shape."""
    import base64

    import numpy as np
    return {"method": method, "encoding": "base64-float16-le",
            "scores": {k: {"shape": list(np.shape(v)),
                           "data": base64.b64encode(np.asarray(v, "<f2").tobytes()).decode("ascii")}
                       for k, v in per_class.items()}}


def decode_per_class(entry: dict) -> dict:
    """{node: float32 array (classes, C)} from `encode_per_class`'s JSON."""
    import base64

    import numpy as np
    return {k: np.frombuffer(base64.b64decode(v["data"]), "<f2").astype(np.float32).reshape(v["shape"])
            for k, v in entry["scores"].items()}
