"""ONNX -> TVM Relax -> deployable shared library for one target.

Untuned Relax CPU code is tens of times slower than onnxruntime, so compile
accepts a MetaSchedule database (see tune.py) whose schedules are applied with
MetaScheduleApplyDatabase before the default lowering; `tuning` says what was
applied so every result can report it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import onnx

from graphprune.errors import GraphpruneError
from graphprune.targets.inputs import input_specs
from graphprune.targets.registry import Target, get_target


@dataclass
class Compiled:
    executable: object   # tvm.relax.VMExecutable
    target: Target
    tuned: bool
    tuning: str


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    # TVM errors start with a traceback; the last line carries the message
    return (lines[-1] if lines else type(exc).__name__)[:300]


def import_onnx(model: onnx.ModelProto):
    """Relax IRModule with weights bound as constants and static input shapes, or a clean error."""
    from tvm.relax.frontend.onnx import from_onnx
    shapes = {name: list(shape) for name, shape, _ in input_specs(model)}
    dtypes = {name: dt for name, _, dt in input_specs(model)}
    try:
        return from_onnx(model, shape_dict=shapes, dtype_dict=dtypes, keep_params_in_input=False)
    except Exception as exc:  # the frontend raises many types for unsupported graphs
        raise GraphpruneError(f"TVM cannot import this model: {type(exc).__name__}: {_first_line(exc)}") from None


def _gpu_schedule(mod, tvm_target):
    """GPU targets need every PrimFunc thread-bound; dlight's default rules do that without tuning."""
    import tvm
    from tvm.s_tir import dlight as dl
    with tvm_target:
        mod = tvm.relax.transform.LegalizeOps()(mod)
        mod = dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                      dl.gpu.GeneralReduction(), dl.gpu.Fallback())(mod)
    return mod


def compile_relax(mod, target: Target, database=None, tuning: str = "untuned") -> Compiled:
    """Compile a Relax module; with `database`, apply its tuned schedules first."""
    import tvm
    from tvm import relax
    tvm_target = target.tvm_target()
    try:
        if database is not None:
            with tvm_target, tvm.transform.PassContext(opt_level=3):
                mod = relax.transform.LegalizeOps()(mod)
                mod = relax.transform.AnnotateTIROpPattern()(mod)
                mod = relax.transform.FoldConstant()(mod)
                mod = relax.transform.FuseOps()(mod)
                mod = relax.transform.FuseTIR()(mod)
                with database:
                    mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
        if target.kind == "cuda":
            mod = _gpu_schedule(mod, tvm_target)
        with tvm.transform.PassContext(opt_level=3):
            ex = tvm.compile(mod, target=tvm_target)
    except GraphpruneError:
        raise
    except Exception as exc:
        raise GraphpruneError(f"TVM failed to compile for target {target.name!r}: {_first_line(exc)}") from None
    return Compiled(ex, target, database is not None, tuning)


def export_library(compiled: Compiled, path: str | os.PathLike) -> Path:
    """Write the deployable .so atomically, linking with the target's (cross) compiler."""
    from tvm.support import cc
    from graphprune.modelio import atomic_path  # temp name, the user's umask, one rename
    out = Path(path)
    kwargs = {}
    if compiled.target.cc:
        import shutil
        if shutil.which(compiled.target.cc) is None:
            raise GraphpruneError(f"target {compiled.target.name!r} links with {compiled.target.cc}, "
                                  "which is not on PATH (Debian: apt-get install gcc-aarch64-linux-gnu)")
        kwargs["fcompile"] = cc.cross_compiler(compiled.target.cc)
    with atomic_path(out, suffix=".so") as tmp:  # TVM picks the format by the suffix
        try:
            compiled.executable.export_library(tmp, **kwargs)
        except Exception as exc:
            raise GraphpruneError(f"exporting the library for {compiled.target.name!r} failed: "
                                  f"{_first_line(exc)}") from None
    return out


def compile_model(model: onnx.ModelProto, target: "str | Target" = "x86", tune_trials: int = 0,
                  output: str | os.PathLike | None = None, extra_target_files=None, rpc=None) -> Compiled:
    """Public API: compile `model` for `target`; tune_trials > 0 applies per-target MetaSchedule
    schedules (tuning the base once if needed, replaying onto pruned shapes; see tune.py).
    rpc (a tune.RPCTuning): when the base must be tuned, time its candidates on those devices."""
    tgt = get_target(target, extra_target_files)
    mod = import_onnx(model)
    if tune_trials > 0:
        from graphprune.targets.tune import database_for
        db, how = database_for(mod, tgt, tune_trials, rpc=rpc)
        compiled = compile_relax(mod, tgt, database=db, tuning=how)
    else:
        compiled = compile_relax(mod, tgt)
    if output is not None:
        export_library(compiled, output)
    return compiled
