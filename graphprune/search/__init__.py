"""`graphprune optimize`: multi-objective search over kept channels per group.

Data flows load -> analyse -> score -> search -> rewrite -> compile -> measure:

    space        which kept counts each prunable group may take (target channel step, bounds)
    objectives   measure one configuration: error (onnxruntime on the user's data), latency
                 (graphprune.targets), MACs, parameter bytes, energy estimate
    executor     concurrent.futures-like executors the builds/evaluations run on
    journal      append-only fsync'd JSONL: every measurement, so --resume re-measures nothing
    sensitivity  one group at a time at a sweep of ratios -> bounds and training data
    surrogate    classical regression predicting latency and error of a configuration
    pareto       dominance, the front, the criteria-optimal choice
    optimizer    nevergrad ask/tell loop with surrogate screening
    finetune     recovery: prune in steps with short fine-tuning (torch, via graphprune.bridge)
    report       pareto.json, pareto.png, report.md
    optimize     the whole command as one function
"""
