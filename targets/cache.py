"""On-disk measurement cache, so rerunning a search or a bench is instant.

Key = (graph content hash, target, backend, tuning state, measurement settings).
The graph hash is over the serialised ModelProto with the doc strings and
producer fields that do not change the computation removed, so re-exporting
the same model hits the cache. One small JSON file per entry, written
atomically, under $GRAPHPRUNE_CACHE or ~/.cache/graphprune/latency.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import onnx

from graphprune.modelio import atomic_path


def cache_dir() -> Path:
    root = os.environ.get("GRAPHPRUNE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "graphprune"
    return Path(root)


def graph_hash(model: onnx.ModelProto) -> str:
    """sha256 of the computation: the model bytes minus producer and doc strings."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.producer_name = m.producer_version = m.doc_string = ""
    m.graph.doc_string = ""
    for n in m.graph.node:
        n.doc_string = ""
    return hashlib.sha256(m.SerializeToString(deterministic=True)).hexdigest()


def entry_key(ghash: str, **parts) -> str:
    blob = json.dumps({"graph": ghash, **parts}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _path(key: str) -> Path:
    return cache_dir() / "latency" / key[:2] / f"{key}.json"


def get(key: str) -> dict | None:
    p = _path(key)
    try:
        value = json.loads(p.read_text())
    except (OSError, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None  # missing, half-written by a killed older version, or garbage: measure again
    return value if isinstance(value, dict) else None


def put(key: str, value: dict) -> None:
    p = _path(key)
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(p) as tmp:
        with open(tmp, "w") as f:
            json.dump(value, f)
