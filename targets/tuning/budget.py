"""How a tuning budget (trials, seconds) is spread over tasks, and the progress bar.

Why: MetaSchedule's gradient task scheduler gives every task one warm-up round, then keeps
picking the task whose best latency (times its weight) promises the largest gain. With the old
cap (trials divided evenly over tasks, 64 per round) every task got exactly its one round, so the
scheduler never concentrated on the heavy convolutions, and tuning was in effect random sampling.
Here the rounds are smaller (allocate), so the warm-up takes about a third of the budget at most,
and each task may take up to twice its share of the model's FLOPs, so heavy tasks get several
rounds and trivial ones stop after their first. A time limit (`--tune-time`) ends tuning between
rounds: a task's search strategy (BudgetedSearch, a thin wrapper around the stock one) answers
"finished" once the deadline has passed (one round is always measured, so a tiny budget still
yields a record), and the stock gradient scheduler stops when every task is finished. Its
warm-up goes through the tasks in the order given, so tune.py passes them heaviest first: a
deadline that ends the warm-up leaves only the lightest tasks without a round of their own (they
get a replayed trace of a same-kind task when there is one, see replay.py).
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field

from graphprune.errors import GraphpruneError

MAX_PER_ROUND = 32
# Trials when only a time budget is given: the deadline ends tuning long before this.
TIME_ONLY_TRIALS = 1_000_000
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|m|min|h)?\s*$", re.IGNORECASE)
_UNIT = {None: 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_tune_time(value, name: str = "tune_time") -> float | None:
    """Seconds of a tuning time budget: a positive number (seconds) or text such as '90s', '20m',
    '1.5h'; None stays None (no time limit). Anything else is a one-line GraphpruneError."""
    if value is None:
        return None
    secs = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        secs = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        secs = float(m.group(1)) * _UNIT[m.group(2).lower() if m.group(2) else None]
    if secs is None or not math.isfinite(secs) or secs <= 0:
        raise GraphpruneError(f"{name} must be a positive duration such as 90s, 20m or 1h (got {value!r})")
    return secs


def allocate(trials: int, loads: list[float]) -> tuple[int, list[int]]:
    """(trials per round, trial cap per task) for `trials` in total over tasks whose loads
    (weight x FLOPs) are `loads`. The warm-up (one round per task) takes at most a third of the
    budget when the budget allows rounds of 16; each task may take twice its load share."""
    n = max(1, len(loads))
    per_iter = max(1, min(16, trials // n), min(MAX_PER_ROUND, trials // (3 * n)))
    total = sum(loads) or 1.0
    caps = [max(per_iter, math.ceil(2 * trials * load / total)) for load in loads]
    return per_iter, caps


def allocate_legacy(trials: int, n_tasks: int) -> tuple[int, list[int]]:
    """The allocation before issue 13 (pipeline.LEGACY): an even split, rounds of up to 64."""
    return min(64, trials), [max(1, math.ceil(trials / max(1, n_tasks)))] * n_tasks


def task_loads(tasks) -> list[float]:
    """Weight x estimated FLOPs of each extracted task (1 where TVM cannot estimate)."""
    from tvm.s_tir.analysis import estimate_tir_flops
    loads = []
    for t in tasks:
        try:
            flops = float(estimate_tir_flops(t.dispatched[0]))
        except Exception:  # estimation is a heuristic; an odd PrimFunc just gets the floor
            flops = 1.0
        loads.append(max(flops, 1.0) * float(t.weight))
    return loads


@dataclass
class Clock:
    """The tuning deadline (None: trials only) and what was measured so far."""
    limit_s: float | None = None
    start: float = field(default_factory=time.monotonic)
    trials: int = 0        # measured (the progress callback counts them)
    generated: int = 0     # sent to the builder

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def expired(self) -> bool:
        return self.limit_s is not None and self.elapsed() >= self.limit_s


_CLASSES: dict = {}


def _classes():
    """BudgetedSearch and ProgressCallback, made once (derived_object needs TVM imported)."""
    if _CLASSES:
        return _CLASSES["search"], _CLASSES["callback"]
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
    from tvm.s_tir.meta_schedule.search_strategy import PySearchStrategy

    @derived_object
    class BudgetedSearch(PySearchStrategy):
        """The stock strategy `inner`, finished after `cap` trials or at the deadline (after the first round overall)."""

        def __init__(self, inner, cap: int, clock: Clock):
            self.inner, self.cap, self.clock, self.used = inner, cap, clock, 0

        def _initialize_with_tune_context(self, context) -> None:
            self.inner._initialize_with_tune_context(context)  # pylint: disable=protected-access

        def pre_tuning(self, max_trials, num_trials_per_iter, design_spaces, database=None, cost_model=None):
            self.used = 0
            self.inner.pre_tuning(max_trials, num_trials_per_iter, design_spaces, database, cost_model)

        def post_tuning(self) -> None:
            self.inner.post_tuning()

        def generate_measure_candidates(self):
            if self.used >= self.cap or (self.clock.generated and self.clock.expired()):
                return None
            cands = self.inner.generate_measure_candidates()
            n = len(cands) if cands is not None else 0
            self.used += n
            self.clock.generated += n
            return cands

        def notify_runner_results(self, measure_candidates, results) -> None:
            self.inner.notify_runner_results(measure_candidates, results)

        def clone(self):
            return BudgetedSearch(self.inner.clone(), self.cap, self.clock)

    @derived_object
    class ProgressCallback(PyMeasureCallback):
        """Counts measured trials into the clock and a graphprune.progress bar."""

        def __init__(self, bar, clock: Clock, n_tasks: int):
            self.bar, self.clock, self.n_tasks, self.seen = bar, clock, n_tasks, set()

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
            n = len(measure_candidates)
            self.clock.trials += n
            self.seen.add(int(task_id))
            self.bar.set_postfix_str(f"{len(self.seen)}/{self.n_tasks} tasks started, {self.clock.elapsed():.0f} s",
                                     refresh=False)
            self.bar.update(n)

    _CLASSES.update(search=BudgetedSearch, callback=ProgressCallback)
    return BudgetedSearch, ProgressCallback


def budgeted_search(kind: str, cap: int, clock: Clock):
    """The stock search strategy `kind` ("evolutionary", "replay-trace", ...) within cap and clock."""
    from tvm.s_tir import meta_schedule as ms
    return _classes()[0](ms.search_strategy.SearchStrategy.create(kind), cap, clock)


def progress_callback(bar, clock: Clock, n_tasks: int):
    return _classes()[1](bar, clock, n_tasks)
