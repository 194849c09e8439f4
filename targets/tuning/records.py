"""The per-target tuning databases on disk.

Databases live under $GRAPHPRUNE_CACHE/tuning/<target>-<hash>/: `base/` holds real tuning records
(JSONDatabase), `replayed-pow2/` (replay.FOLDER) the replayed ones, so a rerun is instant. The hash covers the target's
TVM dict and the pipeline in use (pipeline.active()): records of tasks made by another Relax pipeline (the NCHW one
before it) describe other PrimFuncs, so they live in another folder and are never mixed in.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

from graphprune.targets.cache import cache_dir
from graphprune.targets.registry import Target
from graphprune.targets.tuning.pipeline import active


def database_dir(target: Target) -> Path:
    from graphprune.targets.onnx_converters import key_fields
    key = {**target.tvm_dict(), "graphprune_pipeline": active(), **key_fields("graphprune_frontend")}
    h = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir() / "tuning" / f"{target.name}-{h}"


def json_db(path: Path):
    from tvm.s_tir import meta_schedule as ms
    path.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(work_dir=str(path), module_equality="structural")


def mean_secs(record) -> float:
    """Mean measured run time of a record; inf for a candidate that failed to build or run
    (MetaSchedule commits those too, with the 1e10 s placeholder, and never returns them from
    queries, so they must not count as tuned or serve as replay donors)."""
    secs = [float(x) for x in (record.run_secs or [])]
    mean = sum(secs) / len(secs) if secs else math.inf
    return mean if mean < 1e9 else math.inf


def valid_records(db) -> list:
    return [r for r in db.get_all_tuning_records() if mean_secs(r) < math.inf]


def record_count(db) -> int:
    return len(valid_records(db))


def log_run(db_dir: Path, **fields) -> None:
    """Append how a base was tuned to tuning_runs.jsonl (for reports and base_provenance)."""
    fields["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(db_dir / "tuning_runs.jsonl", "a") as f:
        f.write(json.dumps(fields) + "\n")


def base_provenance(target: Target) -> str:
    """How the target's base database was last tuned, from tuning_runs.jsonl ("" when unknown)."""
    runs = database_dir(target) / "base" / "tuning_runs.jsonl"
    try:
        done = [r for r in map(json.loads, runs.read_text().split("\n")[:-1]) if r.get("ok", True)]
        last = done[-1]
    except (OSError, IndexError, ValueError):
        return ""
    runner = str(last.get("runner", "local"))
    if runner.startswith("rpc:"):
        key = runner[4:].rsplit("@", 1)[0]
        return f"base tuned over RPC on key {key!r}" + (" (emulated device)" if last.get("emulated") else "")
    return "base tuned on this host"
