"""Base traces re-applied to the tasks of a pruned variant.

Why replay: tuning records are keyed by exact shapes, so a pruned variant (conv with 56 instead of
64 filters) finds no record and would compile untuned, tens of times slower than onnxruntime.
Tuning every candidate is minutes each. Instead the base architecture is tuned once per target,
and each variant task without an exact record gets the trace of the closest same-kind base task
re-applied to its own shapes (tile sizes re-fitted to the new loop extents, the target's
postprocessors re-run: the layout rewrite of pre-packed weights is one of them, so the variant's
weights are packed for its own tiles). That takes about a second per variant and keeps near-tuned
speed.
"""
from __future__ import annotations

import math
import re

from graphprune.targets.tuning.contexts import bare_context

# The folder (next to base/) where replays are kept. Named for the refit rule: replays made by an
# earlier rule (any largest divisor, folder "replayed") are never reused.
FOLDER = "replayed-pow2"
from graphprune.targets.tuning.records import mean_secs, valid_records


def signature(mod) -> tuple[tuple[str, ...], list[int]]:
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


def distance(a: list[int], b: list[int]) -> float:
    if len(a) != len(b):
        return math.inf
    return sum(abs(math.log(max(x, 1)) - math.log(max(y, 1))) for x, y in zip(a, b))


def refit(old: list[int], extent: int) -> list[int]:
    """Perfect-tile factors for `extent`, close to the base decision `old`: from the innermost, each
    factor is the largest divisor of what is left that is at most the base's factor, and a power of
    two where the base's factor is one.

    Why powers of two: the innermost factor of a conv's output channels is the vector width in the
    NHWC schedules (16 fp32 lanes with AVX-512). Taking any largest divisor turned a base factor of 16
    into 14 for 56 channels, 15 for 120 and 12 for 24, vectors the code generator splits or masks:
    ResNet-18 at widths 24-56-120-248 replayed at 9.1x onnxruntime's time against 2.3x at 32-64-128-256;
    with 8 there, at 2.9x (tools/bench_channel_step.py, docs/latency.md)."""
    rest, new = extent, []
    for f in reversed(old[1:]):
        f = int(f)
        divisors = [d for d in range(1, min(f, rest) + 1) if rest % d == 0]
        if f & (f - 1) == 0:   # a power of two stays one (1 always qualifies)
            divisors = [d for d in divisors if d & (d - 1) == 0]
        g = max(divisors)
        new.append(g)
        rest //= g
    return [rest] + list(reversed(new))


def replay(record, task_mod, tvm_target, task_name):
    """Apply a base record's trace to another task's module; returns a traced Schedule or raises."""
    from tvm.s_tir import Schedule
    from tvm.s_tir import meta_schedule as ms
    sch = Schedule(task_mod, debug_mask="all")

    def provider(inst, inputs, attrs, decision):
        if inst.kind.name == "SamplePerfectTile" and decision is not None:
            extent = int(sch.get(inputs[0]).extent)
            return refit([int(x) for x in decision], extent)
        return decision
    record.trace.apply_to_schedule(sch, remove_postproc=True, decision_provider=provider)
    # postprocessors are built and initialised directly: they only need the target
    ctx = bare_context(task_mod, tvm_target, task_name)
    kind = "cuda" if tvm_target.kind.name == "cuda" else "llvm"
    for post in ms.postproc.Postproc.create(kind):
        post._initialize_with_tune_context(ctx)  # pylint: disable=protected-access
        if not post.apply(sch):
            raise RuntimeError(f"postprocessor {type(post).__name__} rejected the replayed schedule")
    return sch


def _commit(db, tmod, trace, run_secs, tvm_target, args_info=None) -> None:
    from tvm.s_tir import meta_schedule as ms
    wl = db.commit_workload(tmod)
    db.commit_tuning_record(ms.database.TuningRecord(trace, wl, run_secs, tvm_target, args_info))


def _replay_closest(task, tvm_target, donors, out, replay_db) -> bool:
    """Replay the closest same-kind donor that replays cleanly onto the task; False if none does."""
    tmod = task.dispatched[0]
    kind, mine = signature(tmod)
    cands = [(r, shp) for r, k, shp in donors if k == kind]
    # closest shapes first; among a task's several trials, the fastest
    cands = [r for r, _ in sorted(cands, key=lambda c: (distance(c[1], mine), mean_secs(c[0])))]
    for rec in cands[:5]:
        try:
            sch = replay(rec, tmod, tvm_target, task.task_name)
        except Exception:
            continue
        for db in (out, replay_db):
            # run_secs: the donor's (databases only return records that have run times); the
            # variant itself was not timed here
            _commit(db, tmod, sch.trace, rec.run_secs, tvm_target)
        return True
    return False


def assemble(tasks, tvm_target, base, replay_db):
    """(MemoryDatabase for these tasks, exact, replayed, untuned): exact records from base or from
    earlier replays, else a fresh replay of the closest base trace (kept in replay_db)."""
    from tvm.s_tir import meta_schedule as ms
    donors = [(r, *signature(r.workload.mod)) for r in valid_records(base)]
    out = ms.database.MemoryDatabase()
    exact = replayed = untuned = 0
    for task in tasks:
        tmod = task.dispatched[0]
        for db in (base, replay_db):
            rec = db.query_tuning_record(tmod, tvm_target, task.task_name)
            if rec is not None:
                exact += db is base
                replayed += db is replay_db
                _commit(out, tmod, rec.trace, rec.run_secs, tvm_target, rec.args_info)
                break
        else:
            if _replay_closest(task, tvm_target, donors, out, replay_db):
                replayed += 1
            else:
                untuned += 1
    return out, exact, replayed, untuned
