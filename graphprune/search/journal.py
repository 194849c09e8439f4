"""Append-only JSONL journal: one line per measured configuration, fsync'd.

A search that is killed (even SIGKILL) loses at most the line being written; a
line cut short is ignored on reading. `--resume` reads the journal back and
every configuration already in it is answered from there, never measured again.
The first line is a header with the settings that change what is measured; a
resume with other settings is refused rather than mixing incomparable numbers.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from graphprune.errors import GraphpruneError


class Journal:
    def __init__(self, path: str | os.PathLike, header: dict, resume: bool):
        self.path = Path(path)
        self.records: list[dict] = []
        self.by_key: dict[tuple[str, str], dict] = {}
        self.dropped_partial = False
        if self.path.exists() and self.path.stat().st_size > 0:
            if not resume:
                raise GraphpruneError(f"{self.path} exists: pass --resume to continue that search, "
                                      "or choose another output folder")
            self._read(header)
            if self.dropped_partial:   # a record torn by a kill was never complete: cut it off
                data = self.path.read_bytes()
                end = data.rstrip(b"\n").rfind(b"\n") + 1
                os.truncate(self.path, end)
            self._fh = open(self.path, "a", encoding="utf-8")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
            self.append({"type": "header", **header})

    def _read(self, header: dict) -> None:
        lines = self.path.read_text(encoding="utf-8").split("\n")
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if all(not rest.strip() for rest in lines[i + 1:]):  # the last line, torn by a kill: drop it
                    self.dropped_partial = True
                    continue
                raise GraphpruneError(f"{self.path}: line {i + 1} is not JSON; the journal is damaged") from None
            if rec.get("type") == "header":
                old = {k: v for k, v in rec.items() if k != "type"}
                diff = sorted(k for k in set(old) | set(header) if old.get(k) != header.get(k))
                if diff:
                    raise GraphpruneError(f"--resume: {self.path} was written with other settings "
                                          f"({', '.join(diff)} differ); use a new output folder")
                continue
            self.records.append(rec)
            if "key" in rec:
                self.by_key[(rec["type"], rec["key"])] = rec

    def get(self, kind: str, key: str) -> dict | None:
        return self.by_key.get((kind, key))

    def append(self, rec: dict) -> None:
        self._fh.write(json.dumps(rec, separators=(",", ":"), default=_default) + "\n")
        self._sync()
        if rec.get("type") != "header":
            self.records.append(rec)
            if "key" in rec:
                self.by_key[(rec["type"], rec["key"])] = rec

    def _sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def of_type(self, kind: str) -> list[dict]:
        return [r for r in self.records if r.get("type") == kind]

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


def _default(o):
    import numpy as np
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)
