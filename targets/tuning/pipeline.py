"""The Relax passes before task extraction and after the database is applied: NHWC + pre-packed weights.

Why NHWC with pre-packed weights: TVM's NCHW conv2d schedules on CPU vectorise poorly (19-43
GFLOP/s per conv task on this class of machine after tuning), while with convolutions in NHWC
and weights in OHWI the tuned schedules also rewrite each weight into the layout their loops read
(MetaSchedule's RewriteLayout on buffers marked layout-free), reaching 76-145 GFLOP/s; issue 13
measured a ResNet-18-like net at 1.5x onnxruntime instead of 3.1x.

The passes are TVM 0.27's own: relax.pipeline.static_shape_tuning_pipeline(cpu_weight_prepack=True)
is DecomposeOpsForInference, CanonicalizeBindings, the zero pipeline (legalise, fuse), then
AttachAttrLayoutFreeBuffers before tuning, and after MetaScheduleApplyDatabase
SplitLayoutRewritePreproc, LiftTransformParams, FoldConstant. Tasks are extracted from
tuning_module (that stock pre-tuning half, after ConvertLayout to NHWC/OHWI), and compile runs
the stock pipeline itself with zero trials under the database (the database in context wins over
its work_dir), so records are applied to the very module they were tuned on. Weights are bound
constants here (no "num_input" attribute), so LiftTransformParams lifts nothing and FoldConstant
runs the weight-packing functions at compile time: the library takes the model's NCHW input and
packs nothing at run time.
"""
from __future__ import annotations

import os

# Part of the tuning database folder's hash and of the latency cache key: records and timings of
# another pipeline are never reused. Change it whenever the tuned PrimFuncs change.
PIPELINE = "nhwc-ohwi-prepack-1"
# The pipeline before issue 13 (NCHW, no weight pre-packing, trials split evenly over tasks in
# rounds of 64), kept only so tools/bench_tvm_vs_ort.py can measure old against new on one host:
# GRAPHPRUNE_TVM_PIPELINE=nchw-legacy selects it. Its records live in their own folders.
LEGACY = "nchw-legacy"
ENV = "GRAPHPRUNE_TVM_PIPELINE"
LAYOUTS = {"relax.nn.conv2d": ["NHWC", "OHWI"]}


def active() -> str:
    """The pipeline in use: PIPELINE, or LEGACY when $GRAPHPRUNE_TVM_PIPELINE says so."""
    name = os.environ.get(ENV) or PIPELINE
    if name not in (PIPELINE, LEGACY):
        from graphprune.errors import GraphpruneError
        raise GraphpruneError(f"${ENV} must be {PIPELINE} or {LEGACY} (got {name!r})")
    return name


def convert_layout(mod):
    """Convolutions to NHWC data and OHWI weights (layout_transforms at the graph's edges only)."""
    from tvm import relax
    return relax.transform.ConvertLayout(LAYOUTS)(mod)


def tuning_module(mod, tvm_target):
    """The fused module tasks are extracted from and tuned on (the stock pipeline's pre-tuning half)."""
    import tvm
    from tvm import relax
    if active() == LEGACY:
        with tvm_target, tvm.transform.PassContext(opt_level=3):
            return tvm.transform.Sequential([relax.transform.DecomposeOpsForInference(),
                                             relax.transform.CanonicalizeBindings(), relax.get_pipeline("zero")])(mod)
    with tvm_target, tvm.transform.PassContext(opt_level=3):
        return tvm.transform.Sequential([
            relax.transform.ConvertLayout(LAYOUTS),
            relax.transform.DecomposeOpsForInference(),
            relax.transform.CanonicalizeBindings(),
            relax.pipeline.zero_pipeline(),
            relax.transform.AttachAttrLayoutFreeBuffers(),
        ])(mod)


def apply_database(mod, database, tvm_target):
    """`mod` (straight from the importer) with the database's schedules applied and the weights
    pre-packed: the stock static-shape tuning pipeline with zero trials, under `database`."""
    import tvm
    from tvm import relax
    with tvm_target, tvm.transform.PassContext(opt_level=3), database:
        if active() == LEGACY:   # the zero pipeline applies the database in context
            return relax.get_pipeline("zero")(mod)
        mod = convert_layout(mod)
        return relax.pipeline.static_shape_tuning_pipeline(0, tvm_target, cpu_weight_prepack=True)(mod)
