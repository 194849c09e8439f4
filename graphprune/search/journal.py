"""Append-only JSONL journal: one line per measured configuration, fsync'd.

A search that is killed (even SIGKILL) loses at most the line being written; a
line cut short is dropped on resume, with a note. A last record that is complete but
lacks its newline (a kill between the two writes, an editor) gets the newline before
anything is appended, or the next record would be glued onto it and the journal
refused as damaged on the resume after. `--resume` reads the journal back and
every configuration already in it is answered from there, never measured again.
The first line is a header with the settings that change what is measured; a
resume with other settings is refused rather than mixing incomparable numbers.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from graphprune.errors import GraphpruneError
from graphprune.search.jsonsafe import dumps


class Journal:
    def __init__(self, path: str | os.PathLike, header: dict, resume: bool):
        self.path = Path(path)
        self.records: list[dict] = []
        self.by_key: dict[tuple[str, str], dict] = {}
        self.dropped_partial = False
        self.notes: list[str] = []       # what reading it back repaired, for the log
        self.created = False
        if self.path.exists() and self.path.stat().st_size > 0:
            if not resume:
                raise GraphpruneError(f"{self.path} exists: pass --resume to continue that search, "
                                      "or choose another output folder")
            self._read(header)
            self._repair_tail()
            self._fh = open(self.path, "a", encoding="utf-8")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
            self.created = True
            self.append({"type": "header", **header})

    def _repair_tail(self) -> None:
        data = self.path.read_bytes()
        if self.dropped_partial:   # a record torn by a kill was never complete: cut it off
            end = data.rstrip(b"\n").rfind(b"\n") + 1
            os.truncate(self.path, end)
            self.notes.append(f"{self.path.name}: dropped an incomplete last line ({len(data) - end} bytes, "
                              "a write cut short); that configuration is measured again")
        elif not data.endswith(b"\n"):
            with open(self.path, "ab") as f:
                f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())
            self.notes.append(f"{self.path.name}: the last record lacked its newline; added it")

    def _read(self, header: dict) -> None:
        lines = self.path.read_text(encoding="utf-8", errors="replace").split("\n")
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            last = all(not rest.strip() for rest in lines[i + 1:])
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if last:   # the last line, torn by a kill: drop it
                    self.dropped_partial = True
                    continue
                raise GraphpruneError(f"{self.path}: line {i + 1} is not JSON; the journal is damaged") from None
            if not isinstance(rec, dict):
                raise GraphpruneError(f"{self.path}: line {i + 1} is JSON but not a record (an object); "
                                      "the journal is damaged")
            if rec.get("type") == "header":
                old = {k: v for k, v in rec.items() if k != "type"}
                diff = sorted(k for k in set(old) | set(header) if old.get(k) != header.get(k))
                if diff:
                    raise GraphpruneError(f"--resume: {self.path} was written with other settings "
                                          f"({', '.join(diff)} differ); use a new output folder")
                continue
            self.records.append(rec)
            if "key" in rec:
                self.by_key[(rec.get("type"), str(rec["key"]))] = rec

    def get(self, kind: str, key: str) -> dict | None:
        return self.by_key.get((kind, key))

    def append(self, rec: dict) -> None:
        self._fh.write(dumps(rec, separators=(",", ":")) + "\n")
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
