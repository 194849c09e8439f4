"""ONNX converters graphprune gives TVM's Relax frontend in place of its own, during import only.

Why: TVM 0.27's converter for `Clip` emits `call_tir` of TOPI's maximum/minimum
(`bb.emit_te`), an opaque kernel call that Relax's graph passes cannot look into.
`ConvertLayout` (the tuned pipeline's NHWC convolutions, targets/tuning/pipeline.py) then
wraps every Clip in a transpose back to NCHW and another to NHWC, and `FuseOps` cannot fuse
it into the convolution before it. On MobileNetV2 (a ReLU6 = Clip(0, 6) after 35 of its
convolutions) those `transpose-maximum-minimum-transpose` kernels, untuned, took about 60 % of
the tuned library's time (profiled on this host after 1024 trials: 21 of 34 ms; the conv tasks
12 ms). The replacement emits Relax's own `maximum`/`minimum` operators with a constant of
the input's rank (all dims 1): ConvertLayout knows their layout rules (a rank-0 constant
crashes its layout inference in 0.27: "Invalid SLayout"), and FuseOps folds them into the
convolution's epilogue, where MetaSchedule tunes them with it.

Semantics are ONNX's: y = min(max(x, lo), hi), the same TIR max/min TOPI computes. Only
bounds that are constants holding one value, neither NaN, take this path (NaN bounds mean
"unbounded" in ONNX and onnxruntime, which TVM's own converter handles); anything else,
or an input of unknown rank, goes to TVM's converter unchanged.

`FRONTEND` names this set of replacements; `frontend()` (the one in use) is part of every TVM
latency cache key and of the tuning database's folder hash, so timings and records made with
TVM's own converters are never reused for builds made with these. `GRAPHPRUNE_TVM_FRONTEND=tvm`
imports with TVM's converters as shipped, for before/after measurements only
(tools/profile_tvm.py, tools/bench_tvm_vs_ort.py), as GRAPHPRUNE_TVM_PIPELINE does for the pipeline.
"""
from __future__ import annotations

import contextlib
import os
import threading

import numpy as np

FRONTEND = "clip-maxmin-2"
TVM_OWN = "tvm"
ENV = "GRAPHPRUNE_TVM_FRONTEND"
_LOCK = threading.Lock()


def frontend() -> str:
    """The converters in use: FRONTEND, or TVM_OWN when $GRAPHPRUNE_TVM_FRONTEND says so."""
    name = os.environ.get(ENV) or FRONTEND
    if name not in (FRONTEND, TVM_OWN):
        from graphprune.errors import GraphpruneError
        raise GraphpruneError(f"${ENV} must be {FRONTEND} or {TVM_OWN} (got {name!r})")
    return name


def key_fields(field: str) -> dict:
    """{field: frontend()} for a cache key or a database folder's hash, or {} with TVM's own
    converters: the keys made before this module existed were made with them, so they stay valid."""
    name = frontend()
    return {} if name == TVM_OWN else {field: name}


def _bound(expr, default: float):
    """The bound as a float (default when absent), or None when it is not one constant value."""
    import tvm
    if expr is None:
        return default
    if not isinstance(expr, tvm.ir.GenericConst):
        return None
    v = expr.value.numpy()
    if v.size != 1 or (np.issubdtype(v.dtype, np.floating) and np.isnan(v).any()):
        return None
    return float(v.reshape(()))


def _emit_clip(bb, x, lo: float, hi: float):
    """maximum/minimum with constants shaped [1] * rank(x), in x's dtype; None when x's rank is unknown."""
    from tvm import relax
    shape = getattr(x.ty, "shape", None)
    dtype = getattr(x.ty, "dtype", None)
    if shape is None or dtype is None:
        return None
    rank, npdtype = len(shape), np.dtype(str(dtype))
    out = x
    for value, op, unbounded in ((lo, relax.op.maximum, -np.inf), (hi, relax.op.minimum, np.inf)):
        if value == unbounded:
            continue
        if np.issubdtype(npdtype, np.integer):
            info = np.iinfo(npdtype)
            value = min(max(value, info.min), info.max)
        out = bb.normalize(op(out, relax.const(np.full([1] * rank, value, npdtype))))
    return out


def _clip_converter(fe):
    """A subclass of the frontend's Clip that takes the layout-friendly path when it can."""
    class Clip(fe.Clip):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            out = _emit_clip(bb, inputs[0], float(attr.get("min", -np.inf)), float(attr.get("max", np.inf)))
            return out if out is not None else super()._impl_v1(bb, inputs, attr, params)

        @classmethod
        def _impl_v13(cls, bb, inputs, attr, params):
            args = list(inputs) + [None] * (3 - len(inputs))
            lo, hi = _bound(args[1], -np.inf), _bound(args[2], np.inf)
            out = None if lo is None or hi is None else _emit_clip(bb, args[0], lo, hi)
            return out if out is not None else super()._impl_v13(bb, inputs, attr, params)
    return Clip


def _pairwise_converter(base, binary):
    """Max/Min of two inputs as one Relax binary op (TVM's converter stacks its inputs along a new
    axis and reduces: a rank-5 tensor ConvertLayout's layout inference crashes on in 0.27, so a
    model with an ONNX Max or Min could not be compiled by the tuned pipeline). A constant operand
    of lower rank is reshaped to the other's rank with leading 1s (ONNX broadcasting, unchanged)."""
    class Pairwise(base):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            out = _pair(bb, binary, inputs)
            return out if out is not None else super()._impl_v1(bb, inputs, attr, params)
    return Pairwise


def _pair(bb, binary, inputs):
    import tvm
    from tvm import relax
    if len(inputs) != 2 or any(getattr(i.ty, "shape", None) is None for i in inputs):
        return None
    a, b = inputs
    ra, rb = len(a.ty.shape), len(b.ty.shape)
    if ra != rb:
        short = a if ra < rb else b          # the operand of lower rank: must be a constant
        if not isinstance(short, tvm.ir.GenericConst):
            return None
        v = short.value.numpy()
        short = relax.const(v.reshape([1] * (max(ra, rb) - v.ndim) + list(v.shape)), v.dtype)
        a, b = (short, b) if ra < rb else (a, short)
    return bb.normalize(binary(a, b))


@contextlib.contextmanager
def layout_friendly_converters():
    """While active, TVM's ONNX frontend uses the converters above (module-level swap of its
    converter table, restored on exit; a lock keeps two imports in threads from interleaving)."""
    import tvm.relax.frontend.onnx.onnx_frontend as fe
    if frontend() == TVM_OWN:
        yield
        return
    with _LOCK:
        original = fe._get_convert_map
        from tvm import relax
        ours = {"Clip": _clip_converter(fe), "Max": _pairwise_converter(fe.Max, relax.op.maximum),
                "Min": _pairwise_converter(fe.Min, relax.op.minimum)}
        fe._get_convert_map = lambda: {**original(), **ours}
        try:
            yield
        finally:
            fe._get_convert_map = original
