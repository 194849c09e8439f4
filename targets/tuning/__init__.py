"""MetaSchedule tuning for graphprune targets, one concern per module.

pipeline (the NHWC + weight-prepack Relax passes both tuning and compile use), budget (how trials
and seconds are spread over tasks, the progress bar), contexts (tuning contexts and loggers without
the slow tensor-intrinsic import), records (the per-target databases on disk), replay (a base
trace re-applied to a pruned task's shapes), rpc (candidates timed on tracker devices), workers
(the functions MetaSchedule's builder and runner processes call). graphprune.targets.tune ties
them together (tune_module, database_for).
"""
