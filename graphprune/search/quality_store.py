"""Quality results shared by the searches of one multi-target run (graphprune.search.multitarget).

A candidate's error, MACs and parameter bytes depend on the model, the data, the metric, the
ranking criterion and BN recalibration, never on the target that times it. When several
targets are searched in one run, each target's Evaluator looks a configuration up here before
sending it to the executor; a hit is rebuilt in this process (one rewrite, no data pass) and
only its latency is measured. Every new evaluation is added (one fsync'd JSONL line), so a
resumed run shares what the killed one computed.

It is a cache, not a source of truth: each target's own journal is. Its header holds what
the results depend on; a store written for other inputs is refused with one line.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from graphprune.errors import GraphpruneError
from graphprune.search.jsonsafe import dumps

FIELDS = ("error", "macs", "params", "param_bytes")


def data_hash(x, y) -> str:
    h = hashlib.sha1()
    for k, a in (sorted(x.items()) if isinstance(x, dict) else [(None, x)]):
        h.update((k or "").encode())
        h.update(np.ascontiguousarray(a).tobytes())
    if y is not None:
        h.update(np.ascontiguousarray(y).tobytes())
    return h.hexdigest()[:16]


def store_header(st) -> dict:
    """What a candidate's quality depends on (the quality half of the journal's header)."""
    from graphprune.targets.cache import graph_hash
    o = st.o
    return {"model_sha": graph_hash(st.model)[:16], "data": data_hash(st.x, st.y), "criterion": o.criterion,
            "metric": st.metric.name, "input_shapes": o.input_shapes,
            "bn_recalibrate": {"samples": o.bn_samples, "seed": o.seed} if o.bn_recalibrate else None,
            **({"reconstruct": {"samples": o.reconstruct_samples, "seed": o.seed}} if o.reconstruct else {})}


class QualityStore:
    def __init__(self, path: str | os.PathLike, header: dict):
        self.path = Path(path)
        self.results: dict[str, dict] = {}
        self.hits = 0
        if self.path.exists() and self.path.stat().st_size > 0:
            self._read(header)
            self._fh = open(self.path, "a", encoding="utf-8")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
            self._write({"type": "header", **header})

    def _read(self, header: dict) -> None:
        lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        partial = False
        for i, line in enumerate(lines):
            try:
                rec = json.loads(line)
            except ValueError:
                if i == len(lines) - 1:
                    partial = True   # a line cut by a kill: that result is computed again
                    continue
                raise GraphpruneError(f"{self.path}: line {i + 1} is not JSON; remove the file") from None
            if not isinstance(rec, dict):
                raise GraphpruneError(f"{self.path}: line {i + 1} is not a record; remove the file")
            if rec.get("type") == "header":
                old = {k: v for k, v in rec.items() if k != "type"}
                if old != header:
                    diff = sorted(k for k in set(old) | set(header) if old.get(k) != header.get(k))
                    raise GraphpruneError(f"{self.path} was written for other inputs ({', '.join(diff)} differ); "
                                          "use a new output folder")
            elif "key" in rec:
                self.results[rec["key"]] = {k: rec[k] for k in FIELDS if k in rec}
        data = self.path.read_bytes()
        if partial:   # cut by a kill: drop the partial line
            os.truncate(self.path, data.rstrip(b"\n").rfind(b"\n") + 1)
        elif not data.endswith(b"\n"):
            with open(self.path, "ab") as f:
                f.write(b"\n")

    def _write(self, rec: dict) -> None:
        self._fh.write(dumps(rec, separators=(",", ":")) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def get(self, key: str) -> dict | None:
        r = self.results.get(key)
        if r is not None:
            self.hits += 1
        return None if r is None else dict(r)

    def put(self, key: str, res: dict) -> None:
        if key not in self.results:
            self.results[key] = {k: res[k] for k in FIELDS if k in res}
            self._write({"key": key, **self.results[key]})

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


def attach(st) -> None:
    """The run's Evaluator reads and fills the store named by OptimizeOptions.quality_store."""
    path = getattr(st.o, "quality_store", None)
    if not path:
        return
    from graphprune.search import candidates
    st.ev.quality = QualityStore(path, store_header(st))
    st.ev.build = candidates.build   # a hit is rebuilt here (recalibrated when --bn-recalibrate)
