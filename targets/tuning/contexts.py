"""MetaSchedule tuning contexts and loggers, made without the slow tensor-intrinsic import.

TuneContext's Python __init__ imports tvm.s_tir.tensor_intrin unconditionally, which parses every
CUDA, ROCm and Hexagon intrinsic (18 s idle, over 100 s on a busy 2-core machine): that would make
replay slower than the compile it saves, and tuning start slower than it runs. Contexts are made
through the FFI constructor instead, with only the CPU intrinsics registered.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path


def register_cpu_tensor_intrinsics() -> None:
    """Register the CPU tensor intrinsics MetaSchedule's default rules look up by name (ARM NEON
    dot products for aarch64 targets, VNNI/AVX-512 for x86 ones) without the package import
    that TuneContext's Python __init__ does (the two CPU modules take 2 s). The package module is
    stubbed only while its CPU submodules load, so a later `import tvm.s_tir.tensor_intrin`
    still runs the real package and registers the rest."""
    import importlib
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


def task_loggers(work_dir: str, task_names: list[str], console: bool = True):
    """MetaSchedule's per-task loggers (ms.logging.get_loggers_from_work_dir), except that its
    console output goes to stderr instead of stdout (`bench --json` prints its result on stdout,
    and the tuning progress must not end up in it), that the console is left out when a progress
    bar speaks instead (`console=False`), and that MetaSchedule's top logger gets exactly its
    console and file handlers (the stock code re-lists the existing ones by name and fails on a
    second run in a process that attached an unnamed one). Full logs still go to work_dir/logs."""
    import os
    from tvm.s_tir.meta_schedule import logging as ms_logging
    log_dir = os.path.join(work_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    pattern = ms_logging.__name__ + ".task_{i:0" + f"{len(str(len(task_names) - 1))}" + "d}_{name}"
    names = [pattern.format(i=i, name=name[:100]) for i, name in enumerate(task_names)]
    top_name = "tvm.s_tir.meta_schedule"
    top = logging.getLogger(top_name)
    level = logging.getLevelName(top.level if top.level != logging.NOTSET else logging.DEBUG)
    if not console:
        level = "CRITICAL"
    config = {
        "loggers": {top_name: {"level": logging.DEBUG, "propagate": False,
                               "handlers": [f"{top_name}.console", f"{top_name}.file"]}},
        "handlers": {f"{top_name}.console": {"class": f"{__name__}.StderrHandler", "level": level,
                                             "formatter": f"{top_name}.standard_formatter"}},
    }
    ms_logging.create_loggers(log_dir=log_dir, params=[{"log_dir": log_dir, "logger_name": n} for n in names],
                              logger_config=config)
    return [logging.getLogger(n) for n in names]


def bare_context(mod, tvm_target, task_name, space=None, strategy=None, threads: int = 1, seed=None,
                 logger=None):
    """A TuneContext made through the FFI constructor (see the module docstring). Replay needs
    neither space nor strategy (only postprocessors)."""
    from tvm.s_tir.meta_schedule import _ffi_api
    from tvm.s_tir.meta_schedule.logging import get_logger, get_logging_func
    from tvm.s_tir.meta_schedule.utils import fork_seed
    ctx = _ffi_api.TuneContext(mod, tvm_target, space, strategy, task_name, threads,
                               fork_seed(None, n=1)[0] if seed is None else seed,
                               get_logging_func(logger or get_logger(__name__)))
    _ffi_api.TuneContextInitialize(ctx)
    return ctx


def tune_contexts(tasks, work_dir: str, make_strategy, console: bool = True):
    """(contexts, weights) as ms.relax_integration.extracted_tasks_to_tune_contexts makes them
    (post-order-apply space, one logger per task under work_dir), through the FFI constructor.
    make_strategy(i) gives task i's search strategy (see budget.BudgetedSearch)."""
    import psutil
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.utils import fork_seed
    register_cpu_tensor_intrinsics()
    threads = psutil.cpu_count(logical=False) or 1
    ctxs, weights = [], []
    loggers = task_loggers(work_dir, [t.task_name for t in tasks], console=console)

    def make(i, task, logger, seed):
        return bare_context(task.dispatched[0], task.target, task.task_name,
                            space=ms.space_generator.SpaceGenerator.create("post-order-apply"),
                            strategy=make_strategy(i), threads=threads, seed=seed, logger=logger).clone()
    for i, (task, logger, seed) in enumerate(zip(tasks, loggers, fork_seed(None, n=len(tasks)))):
        try:
            ctxs.append(make(i, task, logger, seed))
        except Exception as exc:  # a target whose rules want other intrinsics (e.g. RISC-V vector)
            if "is not registered" not in str(exc):
                raise
            import tvm.s_tir.tensor_intrin  # noqa: F401  all of them: slow, but complete
            ctxs.append(make(i, task, logger, seed))
        weights.append(task.weight)
    return ctxs, weights
