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
