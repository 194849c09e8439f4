"""Evaluating configurations through the journal: never measure one twice.

`Evaluator.evaluate(configs)` answers configurations already in the journal from
it, runs the rest (rewrite + error + counts) on the executor, then measures their
latency one at a time in this process and appends each record (fsync'd) before
moving on, so a kill loses at most the candidate being measured. On a device farm
(latency_slots > 1: several devices under the RPC key) up to
latency_slots candidates are timed at once, each on its own device, and each record is
appended as its timing ends: a kill then loses at most the candidates being timed.
"""
from __future__ import annotations

import time
from concurrent.futures import Future

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
        self.latency_slots = 1        # candidates timed at once (a device farm: the devices under the key)
        self.quality = None           # a QualityStore shared with other targets' searches (multitarget)
        self.build = None             # config -> model in this process, for quality-store hits
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
                cfg = {int(g): int(v) for g, v in configs[i].items()}
                hit = self.quality.get(k) if self.quality is not None else None
                futures[k] = self._rebuilt(cfg, hit) if hit else self.executor.submit(self.job, cfg)
        first = {}
        for i in todo:
            first.setdefault(self.space.key(configs[i]), i)
        built = ((i, self._record(configs[i], phase, extra[i], futures[k].result())) for k, i in first.items())
        done = self._time_all(built) if self.measure_latency and self.latency_slots > 1 else self._time_each(built)
        for i in todo:
            out[i] = done[self.space.key(configs[i])]
        return out  # type: ignore[return-value]

    def _rebuilt(self, cfg: dict, hit: dict) -> Future:
        """Another target's search evaluated this configuration: its quality is reused, the model
        is rebuilt here (a rewrite, no pass over the data) for timing."""
        f: Future = Future()
        f.set_result({**hit, "model": self.build(cfg).SerializeToString(), "quality_shared": True})
        return f

    def _record(self, cfg, phase: str, extra: dict, res: dict) -> tuple[dict, onnx.ModelProto]:
        model = onnx.load_from_string(res.pop("model"))
        if self.quality is not None and not res.get("quality_shared"):
            self.quality.put(self.space.key(cfg), res)
        rec = {"type": "measured", "key": self.space.key(cfg), "phase": phase,
               "config": {str(g): int(v) for g, v in cfg.items()}, **extra, **res}
        return rec, model

    def _timed(self, rec: dict, model) -> dict:
        if self.measure_latency:
            rec["latency_started"] = time.time()
            rec.update(obj.measure(model, self.spec))
            rec["latency_finished"] = time.time()
        if self.after_measure:
            rec.update(self.after_measure(model))
        return rec

    def _keep(self, rec: dict) -> None:
        rec["t"] = time.time()
        self.journal.append(rec)
        self.n_measured += 1
        if self.on_record:
            self.on_record(rec)

    def _time_each(self, built) -> dict:
        """One candidate at a time: its evaluation, its latency, its journal line."""
        done = {}
        for _, (rec, model) in built:
            self._timed(rec, model)
            self._keep(rec)
            done[rec["key"]] = rec
        return done

    def _time_all(self, built) -> dict:
        """A device farm: up to latency_slots candidates timed at once, each on its own device (the
        tracker hands a device to one session at a time). Every record is journaled as its timing
        ends; a failed timing is raised after the others are journaled."""
        from concurrent.futures import ThreadPoolExecutor, as_completed
        done, errors = {}, []
        with ThreadPoolExecutor(max_workers=self.latency_slots, thread_name_prefix="graphprune-device") as pool:
            running = [pool.submit(self._timed, rec, model) for _, (rec, model) in built]
            for f in as_completed(running):
                try:
                    rec = f.result()
                except Exception as exc:  # noqa: BLE001 - the first one is raised below
                    errors.append(exc)
                    continue
                self._keep(rec)
                done[rec["key"]] = rec
        if errors:
            raise errors[0]
        return done

    def add_latency(self, rec: dict, model: onnx.ModelProto) -> dict:
        """Latency for a record measured without it (MACs-driven search): journaled as its own line."""
        lat = self.journal.get("latency", rec["key"])
        if lat is None:
            lat = {"type": "latency", "key": rec["key"], **obj.measure(model, self.spec)}
            self.journal.append(lat)
        rec.update({k: v for k, v in lat.items() if k not in ("type", "key")})
        return rec
