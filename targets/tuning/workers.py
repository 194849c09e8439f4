"""Functions MetaSchedule runs in its builder/runner worker processes.

This module is pickled by value (cloudpickle.register_pickle_by_value in tune.tune_module), so the
popen workers get these functions without importing graphprune: it must import only TVM and
numpy, inside the functions.
"""
from __future__ import annotations


def fast_build(mod, target, _params):
    """MetaSchedule builder without the tensor_intrin import: fp32 conv/matmul schedules never use
    tensor intrinsics, and the import dominates build time on small machines. As in the stock
    builder, the layout-rewrite block is removed so the candidate is timed on pre-packed weights."""
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
