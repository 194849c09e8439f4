"""User metrics: `--metric package.module:function`.

Any task has a quality measure of its own (word accuracy of an OCR model, PESQ of a
speech model, a business KPI); the built-ins cannot know it. The function is called as

    function(candidate_outputs, original_outputs, labels) -> float (higher is better)

with lists of numpy arrays (one per model output, all samples, leading axis = samples)
and labels an (N,) int64 array or None. It must return a finite number. It is imported
and tried on the original's outputs against themselves before any search, so an import
error, an exception or a non-number fails at the start, in one line.
"""
from __future__ import annotations

import importlib
import re

from graphprune.errors import GraphpruneError
from graphprune.metrics.base import Metric, finite_score

_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_user_metric(name: str) -> bool:
    return ":" in name


def load_function(spec: str):
    """package.module:function -> the callable, or a one-line error."""
    if not _SPEC.match(spec):
        raise GraphpruneError(f"--metric {spec!r}: a user metric is written package.module:function")
    mod_name, fn_name = spec.split(":")
    try:
        mod = importlib.import_module(mod_name)
    except Exception as exc:   # noqa: BLE001 - any import failure is the user's module, reported in one line
        raise GraphpruneError(f"--metric {spec}: cannot import {mod_name} ({type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise GraphpruneError(f"--metric {spec}: {mod_name} has no function {fn_name}")
    return fn


def call(fn, spec: str, cand, ref, labels) -> float:
    try:
        value = fn(cand, ref, labels)
    except Exception as exc:   # noqa: BLE001 - the user's code: one line, never a traceback
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise GraphpruneError(f"--metric {spec} raised {type(exc).__name__}" + (f": {msg}" if msg else "")) from None
    return finite_score(value, spec)


def user_metric(spec: str) -> Metric:
    fn = load_function(spec)
    return Metric(spec, needs_labels=False, compare=lambda c, r, y: call(fn, spec, c, r, y),
                  check_reference=lambda ref, y: call(fn, spec, ref, ref, y), percent=False,
                  description=f"the user's function {spec}(candidate outputs, original outputs, labels)")
