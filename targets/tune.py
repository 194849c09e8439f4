"""MetaSchedule tuning with a persistent database per target, and replay onto pruned shapes.

Why replay: tuning records are keyed by exact shapes, so a pruned variant
(conv with 56 instead of 64 filters) finds no record and would compile untuned,
tens of times slower than onnxruntime. Tuning every candidate is minutes each.
Instead the base architecture is tuned once per target, and each variant task
without an exact record gets the trace of the closest same-kind base task
re-applied to its own shapes (tile sizes re-fitted to the new loop extents,
target postprocessors re-run). That takes about a second per variant and keeps
near-tuned speed.

Tuning is restricted to conv/matmul tasks (where the time goes); the builder
skips the stock f_build's `import tvm.s_tir.tensor_intrin` (~18 s per batch of
worker processes on this class of machine). Databases live under
$GRAPHPRUNE_CACHE/tuning/<target>-<hash of target dict>/: `base/` holds real
tuning records (JSONDatabase), `replayed/` the replayed ones, so a rerun is instant.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import time
from pathlib import Path

from graphprune.errors import GraphpruneError
from graphprune.targets.cache import cache_dir
from graphprune.targets.registry import Target

TUNABLE = re.compile(r"conv|matmul|dense")


def database_dir(target: Target) -> Path:
    h = hashlib.sha256(json.dumps(target.tvm_dict(), sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir() / "tuning" / f"{target.name}-{h}"


def tuning_pipeline(mod, tvm_target):
    """The Relax passes after which tasks are extracted and databases applied (must match both ways)."""
    import tvm
    from tvm import relax
    with tvm_target, tvm.transform.PassContext(opt_level=3):
        return tvm.transform.Sequential([
            relax.transform.DecomposeOpsForInference(),
            relax.transform.CanonicalizeBindings(),
            relax.get_pipeline("zero"),
        ])(mod)


def _json_db(path: Path):
    from tvm.s_tir import meta_schedule as ms
    path.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(work_dir=str(path), module_equality="structural")


def _tasks(fused_mod, tvm_target):
    from tvm.s_tir import meta_schedule as ms
    tasks = ms.relax_integration.extract_tasks(fused_mod, tvm_target)
    return [t for t in tasks if TUNABLE.search(t.task_name)]


def fast_build(mod, target, _params):
    """MetaSchedule builder without the tensor_intrin import: fp32 conv/matmul schedules never use
    tensor intrinsics, and the import dominates build time on small machines."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def tune_module(mod, target: Target, trials: int, work_dir=None, fused: bool = False) -> str:
    """Tune the conv/matmul tasks of a Relax module with `trials` trials in total; records go to the
    target's persistent database. Returns a one-line description."""
    import cloudpickle
    from tvm.s_tir import meta_schedule as ms
    import graphprune.targets.tune as this
    if trials <= 0:
        raise GraphpruneError("tuning needs trials > 0")
    tvm_target = target.tvm_target()
    from graphprune.targets.registry import check_runs_here
    try:
        check_runs_here(target)
    except GraphpruneError as exc:  # MetaSchedule's runner here is the local CPU
        raise GraphpruneError(f"cannot tune here: {exc}; tuning on RPC runners is not implemented") from None
    fused_mod = mod if fused else tuning_pipeline(mod, tvm_target)
    tasks = _tasks(fused_mod, tvm_target)
    if not tasks:
        return "no conv/matmul tasks to tune"
    db_dir = Path(work_dir) if work_dir else database_dir(target) / "base"
    db = _json_db(db_dir)
    cloudpickle.register_pickle_by_value(this)  # workers get fast_build without importing graphprune
    ctxs, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(tasks, str(db_dir / "logs"))
    t0 = time.monotonic()
    ms.tune_tasks(tasks=ctxs, task_weights=weights, work_dir=str(db_dir / "logs"), max_trials_global=trials,
                  max_trials_per_task=max(1, math.ceil(trials / len(ctxs))), num_trials_per_iter=min(64, trials),
                  builder=ms.builder.LocalBuilder(f_build=fast_build), runner="local", database=db,
                  cost_model="xgb")
    secs = time.monotonic() - t0
    with open(db_dir / "tuning_runs.jsonl", "a") as f:  # how each base was tuned, for reports
        f.write(json.dumps({"trials": trials, "tasks": len(ctxs), "seconds": round(secs, 1),
                            "target": target.name, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
    return f"tuned {trials} trials over {len(ctxs)} conv/matmul tasks in {secs:.0f} s"


def _signature(mod) -> tuple[tuple[str, ...], list[int]]:
    """(block names, flattened buffer shapes) of a task's PrimFunc, read from its TVMScript.

    A trace addresses blocks by name, so it can only be replayed onto a task with the same blocks
    (same op kind and fusion); among those the closest shapes are the best donor. (PrimFunc in
    0.27 exposes no buffer_map to Python, hence the script.)"""
    text = mod.script(show_meta=False)
    blocks = tuple(re.findall(r'T\.s?block\("(\w+)"', text))
    sig = next((ln for ln in text.splitlines() if "def main(" in ln), "")
    shapes = []
    for group in re.findall(r"T\.Buffer\(\(([^\"]*?)\),\s*\"", sig):
        shapes += [int(x) for x in re.findall(r"(?:int64\()?(\d+)\)?", group)]
    return blocks, shapes


def _distance(a: list[int], b: list[int]) -> float:
    if len(a) != len(b):
        return math.inf
    return sum(abs(math.log(max(x, 1)) - math.log(max(y, 1))) for x, y in zip(a, b))


def _refit(old: list[int], extent: int) -> list[int]:
    """Perfect-tile factors for `extent`, close to the base decision `old` (inner factors kept when they divide)."""
    rest, new = extent, []
    for f in reversed(old[1:]):
        g = max(d for d in range(1, min(int(f), rest) + 1) if rest % d == 0)
        new.append(g)
        rest //= g
    return [rest] + list(reversed(new))


def _bare_context(mod, tvm_target, task_name):
    """A TuneContext made through the FFI constructor: the Python __init__ imports
    tvm.s_tir.tensor_intrin unconditionally (18 s idle, over 100 s on a busy 2-core machine),
    which would make replay slower than the compile it saves."""
    from tvm.s_tir.meta_schedule import _ffi_api
    from tvm.s_tir.meta_schedule.logging import get_logger, get_logging_func
    from tvm.s_tir.meta_schedule.utils import fork_seed
    ctx = _ffi_api.TuneContext(mod, tvm_target, None, None, task_name, 1, fork_seed(None, n=1)[0],
                               get_logging_func(get_logger(__name__)))
    _ffi_api.TuneContextInitialize(ctx)
    return ctx


def _replay(record, task_mod, tvm_target, task_name):
    """Apply a base record's trace to another task's module; returns a traced Schedule or raises."""
    from tvm.s_tir import Schedule
    from tvm.s_tir import meta_schedule as ms
    sch = Schedule(task_mod, debug_mask="all")

    def provider(inst, inputs, attrs, decision):
        if inst.kind.name == "SamplePerfectTile" and decision is not None:
            extent = int(sch.get(inputs[0]).extent)
            return _refit([int(x) for x in decision], extent)
        return decision
    record.trace.apply_to_schedule(sch, remove_postproc=True, decision_provider=provider)
    # postprocessors are built and initialised directly: they only need the target
    ctx = _bare_context(task_mod, tvm_target, task_name)
    kind = "cuda" if tvm_target.kind.name == "cuda" else "llvm"
    for post in ms.postproc.Postproc.create(kind):
        post._initialize_with_tune_context(ctx)  # pylint: disable=protected-access
        if not post.apply(sch):
            raise RuntimeError(f"postprocessor {type(post).__name__} rejected the replayed schedule")
    return sch


def database_for(mod, target: Target, trials: int, fresh: bool = False):
    """(database, description) for compiling `mod`: exact tuned records, replayed base traces for
    tasks without one, and tuning of this model as the base when the target has no base yet
    (or fresh=True)."""
    from tvm.s_tir import meta_schedule as ms
    tvm_target = target.tvm_target()
    fused = tuning_pipeline(mod, tvm_target)
    base_dir = database_dir(target) / "base"
    base = _json_db(base_dir)
    how_tuned = ""
    if fresh or not base.get_all_tuning_records():
        how_tuned = tune_module(fused, target, trials, fused=True) + "; "
        base = _json_db(base_dir)
    replay_db = _json_db(database_dir(target) / "replayed")
    records = [(r, *_signature(r.workload.mod)) for r in base.get_all_tuning_records()]
    out = ms.database.MemoryDatabase()
    exact = replayed = untuned = 0
    for task in _tasks(fused, tvm_target):
        tmod = task.dispatched[0]
        for db in (base, replay_db):
            rec = db.query_tuning_record(tmod, tvm_target, task.task_name)
            if rec is not None:
                break
        if rec is not None:
            exact += db is base
            replayed += db is replay_db
            wl = out.commit_workload(tmod)
            out.commit_tuning_record(ms.database.TuningRecord(rec.trace, wl, rec.run_secs, tvm_target, rec.args_info))
            continue
        kind, mine = _signature(tmod)
        cands = [(r, shp) for r, k, shp in records if k == kind]
        cands = [r for r, _ in sorted(cands, key=lambda c: _distance(c[1], mine))]
        for rec in cands[:5]:
            try:
                sch = _replay(rec, tmod, tvm_target, task.task_name)
            except Exception:
                continue
            for db in (out, replay_db):
                wl = db.commit_workload(tmod)
                # run_secs: the donor's (databases only return records that have run times); the
                # variant itself was not timed here
                db.commit_tuning_record(ms.database.TuningRecord(sch.trace, wl, rec.run_secs, tvm_target, None))
            replayed += 1
            break
        else:
            untuned += 1
    how = f"{how_tuned}{exact} tasks with exact tuned records, {replayed} replayed from base traces"
    if untuned:
        how += f", {untuned} left untuned"
    return out, how
