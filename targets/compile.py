"""ONNX -> TVM Relax -> deployable shared library for one target.

Untuned Relax CPU code is tens of times slower than onnxruntime, so compile
accepts a MetaSchedule database (see tune.py) whose schedules are applied before
the default lowering: on CPU targets through the NHWC + weight-prepack pipeline
of tuning/pipeline.py (the module the database was tuned on, weights packed at
compile time); `tuning` says what was applied so every result can report it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from graphprune.errors import GraphpruneError
from graphprune.modelio import atomic_path
from graphprune.targets.prepare import has_dynamic_dims, import_relax
from graphprune.targets.registry import Target, get_target


@dataclass
class Compiled:
    executable: object   # tvm.relax.VMExecutable
    target: Target
    tuned: bool
    tuning: str
    input_shapes: dict = field(default_factory=dict)  # the static shapes the library accepts
    pinned: bool = False   # True when the model's dynamic dims were pinned to input_shapes

    def shape_note(self) -> str:
        """How the library's input shapes relate to the model's (printed by `compile`)."""
        from graphprune.targets.result import shape_text
        if self.pinned:
            return (f"compiled at the static input shape {shape_text(self.input_shapes)}: the model's dynamic "
                    "dims are pinned, the library accepts only this shape (--input-shape to choose another)")
        return f"input shape {shape_text(self.input_shapes)}"


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    # TVM errors start with a traceback; the last line carries the message
    return (lines[-1] if lines else type(exc).__name__)[:300]


def import_onnx(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None):
    """Relax IRModule with weights bound as constants and static input shapes (pinned and shape
    math folded, see prepare.py), or a one-line error naming what TVM cannot import."""
    return import_relax(model, input_shapes)[0]


def _gpu_schedule(mod, tvm_target):
    """GPU targets need every PrimFunc thread-bound; dlight's default rules do that without tuning."""
    import tvm
    from tvm.s_tir import dlight as dl
    with tvm_target:
        mod = tvm.relax.transform.LegalizeOps()(mod)
        mod = dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                      dl.gpu.GeneralReduction(), dl.gpu.Fallback())(mod)
    return mod


def compile_relax(mod, target: Target, database=None, tuning: str = "untuned", input_shapes=None,
                  pinned: bool = False) -> Compiled:
    """Compile a Relax module; with `database`, apply its tuned schedules first."""
    import tvm
    from tvm import relax
    tvm_target = target.tvm_target()
    try:
        if database is not None and target.kind == "llvm":
            from graphprune.targets.tuning.pipeline import apply_database
            mod = apply_database(mod, database, tvm_target)
        elif database is not None:
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
    return Compiled(ex, target, database is not None, tuning, dict(input_shapes or {}), pinned)


def export_library(compiled: Compiled, path: str | os.PathLike) -> Path:
    """Write the deployable .so atomically (graphprune.modelio.atomic_path: temp file beside it,
    one rename, the user's umask), linking with the target's (cross) compiler."""
    from tvm.support import cc
    out = Path(path)
    kwargs = {}
    if compiled.target.cc:
        import shutil
        if shutil.which(compiled.target.cc) is None:
            raise GraphpruneError(f"target {compiled.target.name!r} links with {compiled.target.cc}, "
                                  "which is not on PATH (Debian: apt-get install gcc-aarch64-linux-gnu)")
        kwargs["fcompile"] = cc.cross_compiler(compiled.target.cc)
    from graphprune.targets import TVM_LOCK
    with atomic_path(out, suffix=".so") as tmp, TVM_LOCK:  # TVM picks the format by the suffix
        try:
            compiled.executable.export_library(tmp, **kwargs)
        except Exception as exc:
            raise GraphpruneError(f"exporting the library for {compiled.target.name!r} failed: "
                                  f"{_first_line(exc)}") from None
    return out


def compile_model(model: onnx.ModelProto, target: "str | Target" = "x86", tune_trials: int = 0,
                  output: str | os.PathLike | None = None, extra_target_files=None, rpc=None,
                  input_shapes: dict[str, list[int]] | None = None, tune_time=None,
                  progress: bool = False) -> Compiled:
    """Public API: compile `model` for `target`; tune_trials > 0 applies per-target MetaSchedule
    schedules (tuning the base once if needed, replaying onto pruned shapes; see tune.py).
    rpc (a tune.RPCTuning): when the base must be tuned, time its candidates on those devices.
    input_shapes: static shapes for inputs with dynamic dims (default: batch 1, others 64);
    the library accepts exactly the pinned shapes (Compiled.input_shapes). tune_time (seconds or
    text such as '20m') bounds the base's tuning in time as well (alone: tune until it is up);
    progress shows a progress bar while the base is tuned."""
    tgt = get_target(target, extra_target_files)
    mod, shapes = import_relax(model, input_shapes)
    pinned = has_dynamic_dims(model)
    if tune_trials > 0 or tune_time is not None:
        from graphprune.targets.tune import database_for
        db, how = database_for(mod, tgt, tune_trials, rpc=rpc, tune_time=tune_time, progress=progress)
        compiled = compile_relax(mod, tgt, database=db, tuning=how, input_shapes=shapes, pinned=pinned)
    else:
        compiled = compile_relax(mod, tgt, input_shapes=shapes, pinned=pinned)
    if output is not None:
        export_library(compiled, output)
    return compiled
