"""`graphprune optimize`: multi-objective search over kept channels per group.

Data flows load -> analyse -> score -> search -> rewrite -> compile -> measure:

    space        which kept counts each prunable group may take (target channel step, bounds)
    quality      which metric judges candidates (graphprune.metrics), the original's outputs once
    objectives   measure one configuration: error (1 - metric, onnxruntime on the user's data), latency
                 (graphprune.targets), MACs, parameter bytes, energy estimate
    executor     concurrent.futures-like executors the builds/evaluations run on
    journal      append-only fsync'd JSONL: every measurement, so --resume re-measures nothing
    sensitivity  one group at a time at a sweep of ratios -> bounds and training data
    surrogate    classical regression predicting latency and error of a configuration
    pareto       dominance, the front, the criteria-optimal choice
    optimizer    nevergrad ask/tell loop with surrogate screening
    finetune     recovery: prune in steps, BN recalibration and training between (graphprune.recovery)
    candidates   --bn-recalibrate: every candidate judged after BN recalibration
    report       pareto.json, pareto.png, report.md
    jsonsafe     JSON without bare NaN: non-finite numbers become null, and where is said
    options      OptimizeOptions and every check that needs no file (before anything is measured)
    latency      the measurement spec and label; the final side-by-side comparison
    outdir       OUTDIR checks, its exclusive lock, no header-only journal after a failed start
    stages       validate, load, OUTDIR, executor, baseline, sensitivity, surrogate, search, choice
    recovery     fine-tune the choice and judge it: a ruined recovery is never delivered
    outputs      the summary, best.onnx, pareto.json/.png, report.md
    pipeline     RunState and run_optimize: the stages in order, cleanup whatever happens
    optimize     the public names (OptimizeOptions, run_optimize)
"""
