"""Evaluating configurations through the journal: never measure one twice.

`Evaluator.evaluate(configs)` answers configurations already in the journal from
it, runs the rest (rewrite + error + counts) on the executor, then measures their
latency one at a time in this process and appends each record (fsync'd) before
moving on, so a kill loses at most the candidate being measured.
"""
from __future__ import annotations

import time

import onnx

from graphprune.search import objectives as obj
from graphprune.search.journal import Journal
from graphprune.search.space import SearchSpace


class Evaluator:
    def __init__(self, space: SearchSpace, journal: Journal, executor, spec: obj.LatencySpec,
                 measure_latency: bool = True, on_record=None):
        self.space, self.journal, self.executor, self.spec = space, journal, executor, spec
        self.measure_latency = measure_latency
        self.n_measured = 0       # measured in this run
        self.n_reused = 0         # answered from the journal
        self.on_record = on_record
        self.job = obj.evaluate_job   # graphprune.search.candidates.evaluate_job with --bn-recalibrate
        self.after_measure = None     # model -> more fields, measured after latency (--quantize: RAPL energy)

    def known(self, config: dict[int, int]) -> dict | None:
        return self.journal.get("measured", self.space.key(config))

    def evaluate(self, configs: list[dict[int, int]], phase: str, extra: list[dict] | None = None) -> list[dict]:
        extra = extra or [{} for _ in configs]
        out: list[dict | None] = [None] * len(configs)
        todo = []
        for i, cfg in enumerate(configs):
            rec = self.known(cfg)
            if rec is not None:
                self.n_reused += 1
                out[i] = rec
            else:
                todo.append(i)
        futures = {}
        for i in todo:   # identical configurations within one batch are built once
            k = self.space.key(configs[i])
            if k not in futures:
                futures[k] = self.executor.submit(self.job, {int(g): int(v) for g, v in configs[i].items()})
        for i in todo:
            k = self.space.key(configs[i])
            if self.known(configs[i]) is not None:
                out[i] = self.known(configs[i])
                continue
            res = futures[k].result()
            model = onnx.load_from_string(res.pop("model"))
            rec = {"type": "measured", "key": k, "phase": phase,
                   "config": {str(g): int(v) for g, v in configs[i].items()}, **extra[i], **res}
            if self.measure_latency:
                rec.update(obj.measure(model, self.spec))
            if self.after_measure:
                rec.update(self.after_measure(model))
            rec["t"] = time.time()
            self.journal.append(rec)
            self.n_measured += 1
            if self.on_record:
                self.on_record(rec)
            out[i] = rec
        return out  # type: ignore[return-value]

    def add_latency(self, rec: dict, model: onnx.ModelProto) -> dict:
        """Latency for a record measured without it (MACs-driven search): journaled as its own line."""
        lat = self.journal.get("latency", rec["key"])
        if lat is None:
            lat = {"type": "latency", "key": rec["key"], **obj.measure(model, self.spec)}
            self.journal.append(lat)
        rec.update({k: v for k, v in lat.items() if k not in ("type", "key")})
        return rec
