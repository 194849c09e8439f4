"""MetaSchedule tuning with a persistent database per target, and replay onto pruned shapes.

The base architecture is tuned once per target; pruned variants replay its traces (see
tuning/replay.py). Tasks are extracted from the NHWC + weight-prepack module of
tuning/pipeline.py, and compile applies the database to that same module. Tuning is restricted
to conv/matmul tasks (where the time goes); a budget of trials and/or seconds is spread over them
by tuning/budget.py (MetaSchedule's gradient task scheduler, caps weighted by FLOPs). The
builder skips the stock f_build's `import tvm.s_tir.tensor_intrin` (~18 s per batch of worker
processes on this class of machine), and the tuning contexts are made without it too
(tuning/contexts.py). Databases: tuning/records.py.

Where candidates run: on this CPU (MetaSchedule's LocalRunner) when the target runs here, or,
given an RPCTuning (tracker + key), on the devices registered under the key (tuning/rpc.py).
"""
from __future__ import annotations

import re
import shutil
from functools import partial
from pathlib import Path

from graphprune.errors import GraphpruneError
from graphprune.targets.registry import Target
from graphprune.targets.tuning import budget, pipeline
from graphprune.targets.tuning.records import (base_provenance, database_dir, json_db, log_run, record_count,
                                               valid_records)
from graphprune.targets.tuning.rpc import RPCTuning, rpc_runner, tuning_target
from graphprune.targets.tuning.workers import alloc_args, export_so, fast_build

__all__ = ["RPCTuning", "tune_module", "database_for", "database_dir", "base_provenance", "tuning_pipeline",
           "fast_build", "export_so", "alloc_args", "SEARCH"]

TUNABLE = re.compile(r"conv|matmul|dense")
# MetaSchedule search strategy and cost model. The evolutionary search with the XGBoost model is
# the right thing for real budgets; each round costs tens of seconds on a small machine whatever
# the number of trials, so quick checks (tests) may swap in ("replay-trace", "random").
SEARCH = ("evolutionary", "xgb")
_valid_records = valid_records   # the tests' name for it
tuning_pipeline = pipeline.tuning_module


def _tasks(fused_mod, tvm_target):
    from tvm.s_tir import meta_schedule as ms
    tasks = ms.relax_integration.extract_tasks(fused_mod, tvm_target)
    return [t for t in tasks if TUNABLE.search(t.task_name)]


def _check_runner(target: Target, rpc: RPCTuning | None) -> int:
    """Refuse what cannot tune before anything is built; returns the number of RPC devices (0 here)."""
    if target.kind != "llvm":
        raise GraphpruneError(f"cannot tune target {target.name!r}: MetaSchedule tuning is wired up for "
                              "llvm (CPU) targets only")
    if rpc is None:
        from graphprune.targets.registry import check_runs_here
        try:
            check_runs_here(target)
        except GraphpruneError as exc:  # the local runner times candidates on this CPU
            raise GraphpruneError(f"cannot tune here: {exc} (tuning then runs there too)") from None
        return 0
    from graphprune.targets.measure_rpc import check_key
    n_devices = check_key(rpc.tracker, rpc.key, timeout=min(rpc.timeout, 10.0))
    if target.cc and shutil.which(target.cc) is None:
        raise GraphpruneError(f"target {target.name!r} links with {target.cc}, which is not on PATH "
                              "(Debian: apt-get install gcc-aarch64-linux-gnu)")
    return n_devices


def _budget(trials: int, tune_time) -> tuple[int, float | None]:
    """(trial budget, seconds or None); trials 0 with a time limit means 'until the time is up'."""
    limit = budget.parse_tune_time(tune_time)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 0 or (trials == 0 and limit is None):
        raise GraphpruneError(f"tuning needs trials > 0 or a tune time (got trials={trials!r})")
    return (trials or budget.TIME_ONLY_TRIALS), limit


def _builder_runner(target: Target, rpc: RPCTuning | None, n_devices: int):
    from tvm.s_tir import meta_schedule as ms
    if rpc is None:
        return ms.builder.LocalBuilder(f_build=fast_build), "local"
    builder = ms.builder.LocalBuilder(f_build=fast_build, f_export=partial(export_so, target.cc))
    return builder, rpc_runner(rpc, max(1, rpc.workers or n_devices))


def tune_module(mod, target: Target, trials: int, work_dir=None, fused: bool = False,
                rpc: RPCTuning | None = None, tune_time=None, progress: bool = False) -> str:
    """Tune the conv/matmul tasks of a Relax module with at most `trials` trials and, with
    tune_time (seconds, or text such as '20m'), at most about that long (no round starts after it,
    rounds in flight finish, tasks are warmed up heaviest first); records go to the target's
    persistent database. Candidates run on this CPU, or with `rpc` on the devices under rpc.key.
    Returns a one-line description (trials measured, seconds, whether the time limit ended it)."""
    import cloudpickle
    from tvm.s_tir import meta_schedule as ms
    from graphprune.progress import progress_bar
    from graphprune.targets.tuning import workers
    from graphprune.targets.tuning.contexts import tune_contexts
    trials, limit = _budget(trials, tune_time)
    n_devices = _check_runner(target, rpc)
    tvm_target = tuning_target(target, rpc)
    fused_mod = mod if fused else pipeline.tuning_module(mod, tvm_target)
    tasks = _tasks(fused_mod, tvm_target)
    if not tasks:
        return "no conv/matmul tasks to tune"
    db_dir = Path(work_dir) if work_dir else database_dir(target) / "base"
    db = json_db(db_dir)
    before = record_count(db)
    cloudpickle.register_pickle_by_value(workers)  # workers get fast_build without importing graphprune
    builder, runner = _builder_runner(target, rpc, n_devices)
    loads = budget.task_loads(tasks)
    tasks = [t for _, t in sorted(zip(loads, tasks), key=lambda lt: -lt[0])]   # warm-up: heaviest first
    loads = sorted(loads, reverse=True)
    if pipeline.active() == pipeline.LEGACY:
        per_iter, caps = budget.allocate_legacy(trials, len(tasks))
    else:
        per_iter, caps = budget.allocate(trials, loads)
    clock = budget.Clock(limit)
    ctxs, weights = tune_contexts(tasks, str(db_dir / "logs"),
                                  lambda i: budget.budgeted_search(SEARCH[0], caps[i], clock), console=not progress)
    bar = progress_bar(None if trials == budget.TIME_ONLY_TRIALS else trials, "tuning", unit="trials",
                       enabled=progress)
    callbacks = ms.measure_callback.MeasureCallback.create("default") + [budget.progress_callback(bar, clock, len(ctxs))]
    try:
        ms.tune_tasks(tasks=ctxs, task_weights=weights, work_dir=str(db_dir / "logs"), max_trials_global=trials,
                      max_trials_per_task=max(caps), num_trials_per_iter=per_iter, builder=builder, runner=runner,
                      database=db, cost_model=SEARCH[1], measure_callbacks=callbacks, task_scheduler="gradient")
    finally:
        bar.close()
        if rpc is not None:
            runner.pool.shutdown(wait=False)   # no runner worker outlives the tuning
    secs = clock.elapsed()
    where = "" if rpc is None else f" {rpc.where()}, {n_devices} device(s)"
    ok = record_count(json_db(db_dir)) > before
    log_run(db_dir, trials=clock.trials, trials_budget=None if trials == budget.TIME_ONLY_TRIALS else trials,
            time_limit_s=limit, tasks=len(ctxs), per_round=per_iter, seconds=round(secs, 1), target=target.name,
            pipeline=pipeline.active(), runner="local" if rpc is None else f"rpc:{rpc.key}@{rpc.tracker}",
            devices=n_devices or None, emulated=bool(rpc and rpc.emulated), ok=ok)
    if not ok:
        raise GraphpruneError(f"tuning{where} timed no candidate successfully ({clock.trials} trials); "
                              f"the runner's errors are in {db_dir / 'logs'}")
    stopped = f", stopped by the {limit:g} s time limit" if clock.expired() and clock.generated < trials else ""
    return f"tuned {clock.trials} trials over {len(ctxs)} conv/matmul tasks in {secs:.0f} s{where}{stopped}"


def database_for(mod, target: Target, trials: int, fresh: bool = False, rpc: RPCTuning | None = None,
                 tune_time=None, progress: bool = False):
    """(database, description) for compiling `mod`: exact tuned records, replayed base traces for
    tasks without one, and tuning of this model as the base when the target has no base yet
    (or fresh=True); with `rpc` that tuning times candidates on the devices under rpc.key."""
    from graphprune.targets.tuning.replay import FOLDER, assemble
    tvm_target = target.tvm_target()
    fused = pipeline.tuning_module(mod, tvm_target)
    base_dir = database_dir(target) / "base"
    base = json_db(base_dir)
    how_tuned = ""
    if fresh or not valid_records(base):
        how_tuned = tune_module(fused, target, trials, fused=True, rpc=rpc, tune_time=tune_time,
                                progress=progress) + "; "
        base = json_db(base_dir)
    out, exact, replayed, untuned = assemble(_tasks(fused, tvm_target), tvm_target, base,
                                             json_db(database_dir(target) / FOLDER))
    how = f"{how_tuned}{exact} tasks with exact tuned records, {replayed} replayed from base traces"
    if untuned:
        how += f", {untuned} left untuned"
    if not how_tuned and base_provenance(target):
        how += f" ({base_provenance(target)})"
    return out, how
