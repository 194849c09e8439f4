"""The evolutionary multi-objective search: nevergrad ask/tell with surrogate screening.

Each asked candidate is decoded onto the grid. Configurations in the journal are
answered from it. New ones are screened by the surrogate: only those whose
predicted point would not be clearly dominated by the measured front (margins =
the surrogate's measured prediction error), and that could meet the constraints,
are built and measured; the others are told their predicted values (and counted
as screened). The optimizer is told normalised objectives (latency and the counts
relative to the original, error as increase in percentage points) plus a penalty
for constraint violations. Replaying a journal in the same order with the same
seed reproduces the optimizer's state, so --resume continues where it stopped.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphprune.errors import GraphpruneError
from graphprune.search.pareto import Constraints, dominates
from graphprune.search.surrogate import Surrogate

DEFAULT_OPTIMIZER = "DE"


def check_optimizer(name: str) -> None:
    import nevergrad as ng
    if name not in ng.optimizers.registry:
        close = [n for n in ng.optimizers.registry if n.lower() == name.lower()]
        hint = f" (did you mean {close[0]}?)" if close else " (e.g. DE, TwoPointsDE, NGOpt, CMA, RandomSearch)"
        raise GraphpruneError(f"unknown nevergrad optimizer {name!r}{hint}")


def make_optimizer(name: str, dims: int, budget: int, workers: int, seed: int):
    import nevergrad as ng
    check_optimizer(name)
    param = ng.p.Array(shape=(dims,), lower=0.0, upper=1.0)
    param.random_state = np.random.RandomState(seed)
    return ng.optimizers.registry[name](parametrization=param, budget=budget, num_workers=workers)


def first_population(opt) -> int | None:
    """How many candidates a population-based optimizer (nevergrad's DE family, PSO: `llambda`)
    asks before it learns anything from the values it was told; None for the others."""
    n = getattr(opt, "llambda", None)
    return int(n) if isinstance(n, (int, np.integer)) and n > 0 else None


@dataclass
class SearchStats:
    asked: int = 0
    measured: int = 0
    reused: int = 0
    screened: int = 0
    duplicates: int = 0


class Search:
    def __init__(self, space, evaluator, objectives: list[str], baseline: dict, constraints: Constraints,
                 surrogate: Surrogate | None, margins: dict, optimizer: str = DEFAULT_OPTIMIZER,
                 budget: int = 60, workers: int = 1, seed: int = 0, refit_every: int = 8, exact_counts=None,
                 progress=None):
        self.space, self.ev, self.objectives, self.baseline = space, evaluator, objectives, baseline
        self.constraints, self.sur, self.margins = constraints, surrogate, margins
        self.budget, self.workers, self.seed, self.refit_every = budget, max(1, workers), seed, refit_every
        self.opt = make_optimizer(optimizer, space.dims, budget, self.workers, seed)
        # Screening tells the optimizer predicted values instead of measuring; that only pays once the
        # optimizer learns from them. A budget below its first population is random sampling to the end,
        # where screening could leave nothing measured: then every candidate is measured.
        self.population = first_population(self.opt)
        self.screening = self.population is None or budget >= self.population
        self.exact_counts = exact_counts          # config -> {"macs":..., "param_bytes":...} without measuring
        self.stats = SearchStats()
        self.progress = progress
        self._since_refit = 0

    # ---- objective vectors ----
    def losses(self, r: dict) -> list[float]:
        b = self.baseline
        out = []
        for o in self.objectives:
            if o == "error":
                out.append((r["error"] - b["error"]) * 100.0)
            else:
                out.append(r[o] / b[o] if b[o] else r[o])
        pen = 0.0
        if self.constraints.max_error is not None:
            pen += max(0.0, r["error"] - self.constraints.max_error) * 1000.0
        if self.constraints.max_latency_ms is not None and r.get("latency_ms") is not None:
            pen += max(0.0, r["latency_ms"] / self.constraints.max_latency_ms - 1.0) * 10.0
        return [v + pen for v in out]

    def _predict(self, cfg) -> dict | None:
        if self.sur is None or self.sur.err_model is None:
            return None
        counts = self.exact_counts(cfg) if self.exact_counts is not None else None
        macs_rel = [counts["macs"] / self.baseline["macs"]] if (counts and self.sur.uses_macs) else None
        if self.sur.uses_macs and macs_rel is None:
            return None
        lat, err = self.sur.predict(self.space.fractions(cfg)[None], macs_rel)
        p = {"error": float(err[0])}
        if lat is not None:
            p["latency_ms"] = float(lat[0])
        if self.b_power and "latency_ms" in p:
            p["energy_mj"] = p["latency_ms"] * self.b_power
        if counts is not None:
            p.update(counts)
        if any(o not in p for o in self.objectives):
            return None
        return p

    @property
    def b_power(self):
        return self.ev.spec.power_w

    def _promising(self, p: dict, measured: list[dict]) -> bool:
        m_lat = self.margins.get("latency_rel", 0.1)
        m_err = self.margins.get("error_abs", 0.01)
        c = self.constraints
        if c.max_error is not None and p["error"] - 2 * m_err > c.max_error:
            return False
        if c.max_latency_ms is not None and "latency_ms" in p and p["latency_ms"] * (1 - 2 * m_lat) > c.max_latency_ms:
            return False
        # optimistic version of the prediction: is even that dominated by something measured?
        opt = {}
        for o in self.objectives:
            if o == "error":
                opt[o] = p[o] - m_err
            elif o in ("latency_ms", "energy_mj"):
                opt[o] = p[o] * (1 - m_lat)
            else:
                opt[o] = p[o]
        v = [opt[o] for o in self.objectives]
        for r in measured:
            if any(r.get(o) is None for o in self.objectives) or any(o not in opt for o in self.objectives):
                continue
            if dominates([r[o] for o in self.objectives], v):
                return False
        return True

    def refit(self, measured: list[dict]) -> None:
        if self.sur is None:
            return
        rows = measured
        if len(rows) < 4:
            return
        with_lat = all(r.get("latency_ms") is not None for r in rows)
        F = np.asarray([self.space.fractions({int(k): v for k, v in r["config"].items()}) for r in rows])
        self.sur.fit(F, np.asarray([r["latency_ms"] for r in rows]) if with_lat else None,
                     np.asarray([r["error"] for r in rows]), self.seed,
                     macs_rel=np.asarray([r["macs"] / self.baseline["macs"] for r in rows]))

    def run(self, measured: list[dict]) -> list[dict]:
        """`measured`: the records before the search (baseline, sensitivity, hold-out); extended in
        place with the search's. Journaled configurations are answered by the evaluator, so a
        replay after --resume walks the same path without measuring anything again."""
        keys = {r["key"] for r in measured}
        n_search = sum(r.get("phase") == "search" for r in measured)
        while self.stats.asked < self.budget:
            n = min(self.workers, self.budget - self.stats.asked)
            cands = [self.opt.ask() for _ in range(n)]
            cfgs = [self.space.decode(c.value) for c in cands]
            self.stats.asked += n
            plan = []   # per candidate: ["seen", rec] | ["measure", prediction] | ["screened", prediction]
            for cfg in cfgs:
                k = self.space.key(cfg)
                if k in keys:
                    plan.append(["seen", next(r for r in measured if r["key"] == k)])
                    continue
                p = self._predict(cfg)
                # a configuration the journal holds is answered from it, never screened (a resume with a
                # larger budget replays what the first run measured)
                screen = (self.screening and p is not None and self.ev.known(cfg) is None
                          and not self._promising(p, measured))
                plan.append(["screened", p] if screen else ["measure", p])
            idx = [i for i, (kind, _) in enumerate(plan) if kind == "measure"]
            before_new, before_reused = self.ev.n_measured, self.ev.n_reused
            recs = self.ev.evaluate([cfgs[i] for i in idx], "search",
                                    [{"predicted": plan[i][1]} if plan[i][1] else {} for i in idx])
            self.stats.measured += self.ev.n_measured - before_new
            self.stats.reused += self.ev.n_reused - before_reused
            for i, rec in zip(idx, recs):
                plan[i] = ["measured", rec]
                if rec["key"] not in keys:
                    keys.add(rec["key"])
                    measured.append(rec)
                    n_search += 1
                    if n_search % self.refit_every == 0:
                        self.refit(measured)
            for cand, (kind, r) in zip(cands, plan):
                if kind == "seen":
                    self.stats.duplicates += 1
                elif kind == "screened":
                    self.stats.screened += 1
                if any(r.get(o) is None for o in self.objectives):
                    continue
                self.opt.tell(cand, self.losses(r))
            if self.progress:
                self.progress(self, measured)
        return measured
