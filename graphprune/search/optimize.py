"""`graphprune optimize`'s Python API: OptimizeOptions and run_optimize(options, executor=None, log=None).

The work is a pipeline of stages (graphprune.search.pipeline); this module keeps the
names callers import (the CLI, tools/bench_optimize.py, users' scripts).
"""
from __future__ import annotations

from graphprune.search.options import OptimizeOptions, parse_duration_ms, parse_prefer
from graphprune.search.outputs import RESULT_KEY
from graphprune.search.pipeline import RunState, run_optimize
from graphprune.search.recovery import recover_first_within
from graphprune.search.stages import CONSTRAINED_WEIGHT

__all__ = ["OptimizeOptions", "run_optimize", "parse_duration_ms", "parse_prefer", "recover_first_within",
           "RESULT_KEY", "CONSTRAINED_WEIGHT", "RunState"]
