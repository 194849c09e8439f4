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
worker processes on this class of machine), and the tuning contexts are made
without it too (only the CPU intrinsics are registered, see _tune_contexts).
Databases live under $GRAPHPRUNE_CACHE/tuning/<target>-<hash of target dict>/: `base/` holds real
tuning records (JSONDatabase), `replayed/` the replayed ones, so a rerun is instant.

Where candidates run: on this CPU (MetaSchedule's LocalRunner) when the target
runs here, or, given an RPCTuning (tracker + key), on the devices registered
under the key with MetaSchedule's own RPCRunner: the LocalBuilder here compiles
each candidate for the target and links it into a .so with the target's (cross)
compiler, the runner uploads it through the tracker, times it on the device and
hands the time back to the search. One runner worker per device under the key
measures candidates in parallel; each candidate has a deadline (a hung device
costs one timeout, never a hung tuning run).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from graphprune.errors import GraphpruneError
from graphprune.targets.cache import cache_dir
from graphprune.targets.registry import Target

TUNABLE = re.compile(r"conv|matmul|dense")
# MetaSchedule search strategy and cost model. The evolutionary search with the XGBoost model is
# the right thing for real budgets; each round costs tens of seconds on a small machine whatever
# the number of trials, so quick checks (tests) may swap in ("replay-trace", "random").
SEARCH = ("evolutionary", "xgb")


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


def export_so(cc_name, mod) -> str:
    """MetaSchedule builder export for RPC runners: a shared library linked with the target's
    (cross) compiler, so the device loads it without a compiler of its own (the stock export is
    a tar of object files that the RPC server links on the device)."""
    import os
    import tempfile
    from tvm.support import cc
    path = os.path.join(tempfile.mkdtemp(prefix="graphprune-ms-"), "tvm_tmp_mod.so")
    mod.export_library(path, fcompile=cc.cross_compiler(cc_name) if cc_name else cc.create_shared)
    return path


def alloc_args(session, device, args_info, alloc_repeat):
    """RPCRunner argument allocation: random inputs from the device's own random fill when its
    runtime has one, else made here and copied over. Runtime-only TVM builds (the pip wheel with
    TVM_USE_RUNTIME_LIB=1, as on the qemu server, or a board's minimal runtime) lack
    tvm.contrib.random, and the stock allocation then fails every candidate."""
    import numpy as np
    from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common
    try:
        fill = session.get_function("tvm.contrib.random.random_fill_for_measure")
    except Exception:  # AttributeError on 0.27; whatever a server without it raises
        fill = None
    if fill is None:
        rng = np.random.default_rng(0)

        def fill(tensor):
            dt = np.dtype(str(tensor.dtype))
            shape = tuple(int(d) for d in tensor.shape)
            if dt.kind == "f":
                data = rng.uniform(-1.0, 1.0, shape).astype(dt)
            elif dt.kind == "b":
                data = rng.integers(0, 2, shape).astype(dt)
            else:
                data = rng.integers(0, 8, shape).astype(dt)
            tensor.copyfrom(data)
    return alloc_argument_common(fill, device, args_info, alloc_repeat)


@dataclass(frozen=True)
class RPCTuning:
    """Tune on the devices registered under `key` at the tracker `tracker` (HOST:PORT).

    timeout: seconds per candidate (wait for a device, upload, time); workers: candidates measured
    at once (default: one per device under the key); emulated: the devices are emulators, so the
    tuned schedules were chosen on emulated timings."""
    tracker: str
    key: str
    timeout: float = 60.0
    workers: int | None = None
    emulated: bool = False

    def where(self) -> str:
        return f"over RPC on key {self.key!r}" + (" (emulated device)" if self.emulated else "")


_RUNNER_CLASS = None


def _bounded_rpc_runner_class():
    """MetaSchedule's RPCRunner with a deadline per candidate.

    The stock RPCRunner submits every candidate to a PopenPoolExecutor without a timeout, so a
    device that stops answering mid-upload or mid-run blocks its worker, and the tuning run,
    forever. This subclass gives the pool the library's own per-call timeout: the popen worker
    answers TIMEOUT and is killed with its children, RPCRunnerFuture turns that into a failed
    candidate ("RPCRunner: Timeout, killed after N seconds") and tuning goes on. Arguments are
    allocated by alloc_args. The stock sanity check is skipped: it only looks up function names
    in the worker, and we pass functions, not names."""
    global _RUNNER_CLASS
    if _RUNNER_CLASS is None:
        from tvm.ir.utils import derived_object
        from tvm.s_tir.meta_schedule.runner import RPCRunner
        from tvm.support.popen_pool import PopenPoolExecutor

        @derived_object
        class BoundedRPCRunner(RPCRunner._cls):  # pylint: disable=protected-access
            def __init__(self, rpc_config, evaluator_config=None, max_workers: int = 1, timeout_sec: float = 60.0):
                super().__init__(rpc_config=rpc_config, evaluator_config=evaluator_config, max_workers=max_workers,
                                 f_alloc_argument=alloc_args)
                self.pool.shutdown()   # started no process yet (no sanity check)
                self.pool = PopenPoolExecutor(max_workers=max_workers, timeout=timeout_sec)

            def _sanity_check(self) -> None:
                pass
        _RUNNER_CLASS = BoundedRPCRunner
    return _RUNNER_CLASS


def rpc_runner(rpc: RPCTuning, workers: int):
    """A MetaSchedule runner that times candidates on the devices under rpc.key."""
    from tvm.s_tir.meta_schedule.runner import RPCConfig
    from graphprune.targets.measure_rpc import parse_address
    host, port = parse_address(rpc.tracker)
    config = RPCConfig(tracker_host=host, tracker_port=port, tracker_key=rpc.key,
                       session_timeout_sec=max(1, int(math.ceil(rpc.timeout))))
    return _bounded_rpc_runner_class()(config, max_workers=workers, timeout_sec=rpc.timeout)


def _tuning_target(target: Target, rpc: RPCTuning | None):
    """The TVM target candidates are generated for. MetaSchedule needs num-cores on CPU targets
    (it sizes parallel loops with it); for a device it is the device's thread count, asked over
    RPC, unless the target's JSON states it."""
    if rpc is None or target.kind != "llvm" or "num-cores" in target.tvm:
        return target.tvm_target()
    from graphprune.targets.measure_rpc import device_num_threads
    return target.tvm_target(num_cores=device_num_threads(rpc.tracker, rpc.key, timeout=rpc.timeout))


def _register_cpu_tensor_intrinsics() -> None:
    """Register the CPU tensor intrinsics MetaSchedule's default rules look up by name (ARM NEON
    dot products for aarch64 targets, VNNI/AVX-512 for x86 ones) without the package import
    that TuneContext's Python __init__ does: that one also parses every CUDA, ROCm and Hexagon
    intrinsic (about 50 s of CPU here; the two CPU modules take 2 s). The package module is
    stubbed only while its CPU submodules load, so a later `import tvm.s_tir.tensor_intrin`
    still runs the real package and registers the rest."""
    import importlib
    import sys
    import types
    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules or f"{name}.arm_cpu" in sys.modules:
        return
    import tvm.s_tir
    stub = types.ModuleType(name)
    stub.__path__ = [str(Path(tvm.s_tir.__file__).parent / "tensor_intrin")]
    stub.__package__ = name
    sys.modules[name] = stub
    try:
        for sub in ("arm_cpu", "x86"):
            importlib.import_module(f"{name}.{sub}")
    finally:
        del sys.modules[name]


class StderrHandler(logging.StreamHandler):
    """A StreamHandler on whatever sys.stderr is when a record is emitted (not the one at
    configuration time, which a test harness or a redirect may have closed since)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def _loggers(work_dir: str, task_names: list[str]):
    """MetaSchedule's per-task loggers (ms.logging.get_loggers_from_work_dir), except that its
    console output goes to stderr instead of stdout (`bench --json` prints its result on stdout,
    and the tuning progress must not end up in it), and that MetaSchedule's top logger gets
    exactly its console and file handlers (the stock code re-lists the existing ones by name and
    fails on a second run in a process that attached an unnamed one). Full logs still go to
    work_dir/logs."""
    import os
    from tvm.s_tir.meta_schedule import logging as ms_logging
    log_dir = os.path.join(work_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    pattern = ms_logging.__name__ + ".task_{i:0" + f"{len(str(len(task_names) - 1))}" + "d}_{name}"
    names = [pattern.format(i=i, name=name[:100]) for i, name in enumerate(task_names)]
    top_name = "tvm.s_tir.meta_schedule"
    top = logging.getLogger(top_name)
    level = logging.getLevelName(top.level if top.level != logging.NOTSET else logging.DEBUG)
    config = {
        "loggers": {top_name: {"level": logging.DEBUG, "propagate": False,
                               "handlers": [f"{top_name}.console", f"{top_name}.file"]}},
        "handlers": {f"{top_name}.console": {"class": f"{__name__}.StderrHandler", "level": level,
                                             "formatter": f"{top_name}.standard_formatter"}},
    }
    ms_logging.create_loggers(log_dir=log_dir, params=[{"log_dir": log_dir, "logger_name": n} for n in names],
                              logger_config=config)
    return [logging.getLogger(n) for n in names]


def _tune_contexts(tasks, work_dir: str):
    """(contexts, weights) as ms.relax_integration.extracted_tasks_to_tune_contexts makes them
    (post-order-apply space, evolutionary search, one logger per task under work_dir), but
    through the FFI constructor: see _register_cpu_tensor_intrinsics for why."""
    import psutil
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.utils import fork_seed
    _register_cpu_tensor_intrinsics()
    threads = psutil.cpu_count(logical=False) or 1
    ctxs, weights = [], []
    loggers = _loggers(work_dir, [t.task_name for t in tasks])

    def make(task, logger, seed):
        return _bare_context(task.dispatched[0], task.target, task.task_name,
                             space=ms.space_generator.SpaceGenerator.create("post-order-apply"),
                             strategy=ms.search_strategy.SearchStrategy.create(SEARCH[0]),
                             threads=threads, seed=seed, logger=logger).clone()
    for task, logger, seed in zip(tasks, loggers, fork_seed(None, n=len(tasks))):
        try:
            ctxs.append(make(task, logger, seed))
        except Exception as exc:  # a target whose rules want other intrinsics (e.g. RISC-V vector)
            if "is not registered" not in str(exc):
                raise
            import tvm.s_tir.tensor_intrin  # noqa: F401  all of them: slow, but complete
            ctxs.append(make(task, logger, seed))
        weights.append(task.weight)
    return ctxs, weights


def _mean_secs(record) -> float:
    """Mean measured run time of a record; inf for a candidate that failed to build or run
    (MetaSchedule commits those too, with the 1e10 s placeholder, and never returns them from
    queries, so they must not count as tuned or serve as replay donors)."""
    secs = [float(x) for x in (record.run_secs or [])]
    mean = sum(secs) / len(secs) if secs else math.inf
    return mean if mean < 1e9 else math.inf


def _valid_records(db) -> list:
    return [r for r in db.get_all_tuning_records() if _mean_secs(r) < math.inf]


def _record_count(db) -> int:
    return len(_valid_records(db))


def tune_module(mod, target: Target, trials: int, work_dir=None, fused: bool = False,
                rpc: RPCTuning | None = None) -> str:
    """Tune the conv/matmul tasks of a Relax module with `trials` trials in total; records go to the
    target's persistent database. Candidates run on this CPU, or with `rpc` on the devices under
    rpc.key (see the module docstring). Returns a one-line description."""
    import cloudpickle
    from tvm.s_tir import meta_schedule as ms
    import graphprune.targets.tune as this
    if trials <= 0:
        raise GraphpruneError("tuning needs trials > 0")
    if target.kind != "llvm":
        raise GraphpruneError(f"cannot tune target {target.name!r}: MetaSchedule tuning is wired up for "
                              "llvm (CPU) targets only")
    n_devices = 0
    if rpc is None:
        from graphprune.targets.registry import check_runs_here
        try:
            check_runs_here(target)
        except GraphpruneError as exc:  # the local runner times candidates on this CPU
            raise GraphpruneError(f"cannot tune here: {exc} (tuning then runs there too)") from None
    else:
        from graphprune.targets.measure_rpc import check_key
        n_devices = check_key(rpc.tracker, rpc.key, timeout=min(rpc.timeout, 10.0))
        if target.cc:
            import shutil
            if shutil.which(target.cc) is None:
                raise GraphpruneError(f"target {target.name!r} links with {target.cc}, which is not on PATH "
                                      "(Debian: apt-get install gcc-aarch64-linux-gnu)")
    tvm_target = _tuning_target(target, rpc)
    fused_mod = mod if fused else tuning_pipeline(mod, tvm_target)
    tasks = _tasks(fused_mod, tvm_target)
    if not tasks:
        return "no conv/matmul tasks to tune"
    db_dir = Path(work_dir) if work_dir else database_dir(target) / "base"
    db = _json_db(db_dir)
    before = _record_count(db)
    cloudpickle.register_pickle_by_value(this)  # workers get fast_build without importing graphprune
    if rpc is None:
        builder, runner = ms.builder.LocalBuilder(f_build=fast_build), "local"
    else:
        workers = max(1, rpc.workers or n_devices)
        builder = ms.builder.LocalBuilder(f_build=fast_build, f_export=partial(export_so, target.cc))
        runner = rpc_runner(rpc, workers)
    ctxs, weights = _tune_contexts(tasks, str(db_dir / "logs"))
    t0 = time.monotonic()
    try:
        ms.tune_tasks(tasks=ctxs, task_weights=weights, work_dir=str(db_dir / "logs"), max_trials_global=trials,
                      max_trials_per_task=max(1, math.ceil(trials / len(ctxs))), num_trials_per_iter=min(64, trials),
                      builder=builder, runner=runner, database=db, cost_model=SEARCH[1])
    finally:
        if rpc is not None:
            runner.pool.shutdown(wait=False)   # no runner worker outlives the tuning
    secs = time.monotonic() - t0
    where = "" if rpc is None else f" {rpc.where()}, {n_devices} device(s)"
    ok = _record_count(_json_db(db_dir)) > before
    with open(db_dir / "tuning_runs.jsonl", "a") as f:  # how each base was tuned, for reports
        f.write(json.dumps({"trials": trials, "tasks": len(ctxs), "seconds": round(secs, 1),
                            "target": target.name, "runner": "local" if rpc is None else f"rpc:{rpc.key}@{rpc.tracker}",
                            "devices": n_devices or None, "emulated": bool(rpc and rpc.emulated), "ok": ok,
                            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
    if not ok:
        raise GraphpruneError(f"tuning{where} timed no candidate successfully ({trials} trials); "
                              f"the runner's errors are in {db_dir / 'logs'}")
    return f"tuned {trials} trials over {len(ctxs)} conv/matmul tasks in {secs:.0f} s{where}"


def base_provenance(target: Target) -> str:
    """How the target's base database was last tuned, from tuning_runs.jsonl ("" when unknown)."""
    runs = database_dir(target) / "base" / "tuning_runs.jsonl"
    try:
        done = [r for r in map(json.loads, runs.read_text().split("\n")[:-1]) if r.get("ok", True)]
        last = done[-1]
    except (OSError, IndexError, ValueError):
        return ""
    runner = str(last.get("runner", "local"))
    if runner.startswith("rpc:"):
        key = runner[4:].rsplit("@", 1)[0]
        return f"base tuned over RPC on key {key!r}" + (" (emulated device)" if last.get("emulated") else "")
    return "base tuned on this host"


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


def _bare_context(mod, tvm_target, task_name, space=None, strategy=None, threads: int = 1, seed=None,
                  logger=None):
    """A TuneContext made through the FFI constructor: the Python __init__ imports
    tvm.s_tir.tensor_intrin unconditionally (18 s idle, over 100 s on a busy 2-core machine),
    which would make replay slower than the compile it saves, and tuning start slower than
    it runs. Replay needs neither space nor strategy (only postprocessors)."""
    from tvm.s_tir.meta_schedule import _ffi_api
    from tvm.s_tir.meta_schedule.logging import get_logger, get_logging_func
    from tvm.s_tir.meta_schedule.utils import fork_seed
    ctx = _ffi_api.TuneContext(mod, tvm_target, space, strategy, task_name, threads,
                               fork_seed(None, n=1)[0] if seed is None else seed,
                               get_logging_func(logger or get_logger(__name__)))
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


def database_for(mod, target: Target, trials: int, fresh: bool = False, rpc: RPCTuning | None = None):
    """(database, description) for compiling `mod`: exact tuned records, replayed base traces for
    tasks without one, and tuning of this model as the base when the target has no base yet
    (or fresh=True); with `rpc` that tuning times candidates on the devices under rpc.key."""
    from tvm.s_tir import meta_schedule as ms
    tvm_target = target.tvm_target()
    fused = tuning_pipeline(mod, tvm_target)
    base_dir = database_dir(target) / "base"
    base = _json_db(base_dir)
    how_tuned = ""
    if fresh or not _valid_records(base):
        how_tuned = tune_module(fused, target, trials, fused=True, rpc=rpc) + "; "
        base = _json_db(base_dir)
    replay_db = _json_db(database_dir(target) / "replayed")
    records = [(r, *_signature(r.workload.mod)) for r in _valid_records(base)]
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
        # closest shapes first; among a task's several trials, the fastest
        cands = [r for r, _ in sorted(cands, key=lambda c: (_distance(c[1], mine), _mean_secs(c[0])))]
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
    if not how_tuned and base_provenance(target):
        how += f" ({base_provenance(target)})"
    return out, how
