"""`graphprune optimize`'s options and their validation, all of it before anything is measured.

A search runs for minutes to hours; an option that can only fail at its end (a recovery
learning rate, training data of the wrong shape, an output path naming the input) must
fail at its start instead, with one line, before OUTDIR or its journal exist. The checks
here need no files; graphprune.search.stages.load_inputs checks the files.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

from graphprune.errors import GraphpruneError
from graphprune.search import objectives as obj
from graphprune.search.optimizer import DEFAULT_OPTIMIZER, check_optimizer

THREADS_PER_CORE_MAX = 4   # --threads above this many per available core only oversubscribes


@dataclass
class OptimizeOptions:
    model: str
    data: str
    outdir: str | None                  # None: `<model stem>_optimized` (stages.default_outdir)
    target: str = "x86"
    backend: str = "ort"
    rpc_tracker: str | None = None
    rpc_key: str | None = None
    tune_trials: int = 0
    tune_time: float | str | None = None   # the base's tuning time budget (tvm backend): seconds or '20m'
    repeats: int = 30
    threads: int | None = None          # None: graphprune.targets.measure_local.default_threads(), as bench
    stand_in: str | None = None
    timeout: float = 60.0               # seconds per RPC attempt (a hung device costs this, then another device)
    targets_file: str | None = None
    objectives: str = "latency,error"
    max_error_increase: float | None = None
    latency_budget_ms: float | None = None
    prefer: dict[str, float] = field(default_factory=dict)
    optimizer: str = DEFAULT_OPTIMIZER
    budget: int = 60
    workers: int = 1
    cluster: str | None = None          # Dask scheduler address: evaluations on its workers (search/cluster/)
    quality_store: str | None = None    # JSONL of quality results shared by several targets' searches (multitarget)
    seed: int = 0
    criterion: str = "l1"
    channel_step: int | None = None
    min_keep: float = 0.25
    group_bounds: str | None = None
    sensitivity_ratios: tuple = (0.25, 0.5, 0.75)
    holdout: int = 6
    search_start: str = "auto"          # auto | near | random (graphprune.search.warmstart)
    uniform_ratios: tuple = (0.25, 0.5, 0.75)
    samples: int | None = None          # evaluate on a fixed-seed subset of --data
    epochs: float = 0.0                 # recovery fine-tuning (0: none)
    recovery_slack: float = 0.0         # search up to max_error_increase + slack; the constraint holds after recovery
    recovery_tries: int = 3             # front members recovered at most, best first, until one meets it
    train_data: str | None = None
    finetune_steps: int = 2
    lr: float = 0.01
    batch_size: int = 64
    resume: bool = False
    progress: bool = True
    input_shapes: dict | None = None    # {input: dims}: pins dynamic dims for the analysis and the timing
    metric: str | None = None           # graphprune.metrics name or package.module:function; None: the default
    # image folders as --data/--train-data (graphprune.data.images); None: the model's / the loader's default
    size: tuple | None = None
    mean: str | None = None
    std: str | None = None
    scale: str | None = None
    channel_order: str | None = None
    layout: str | None = None
    # -- recovery without labels, BN recalibration (graphprune.recovery; docs/recovery.md) --
    distill_weight: float | None = None  # None: 0 with labels (cross-entropy alone, as before), 1 without
    temperature: float = 4.0             # distillation temperature for classifier outputs
    bn_recalibrate: bool = False         # judge every search candidate after BN recalibration
    bn_samples: int = 256                # samples the search's BN recalibration runs on
    reconstruct: bool = False            # refit the convs reading pruned channels (least squares), search + recovery
    reconstruct_samples: int = 16        # samples the refit runs on
    # -- joint prune + quantize search (graphprune.search.joint; docs/quantization.md) --
    quantize: str = "off"                # off | int8 | mixed
    calibration_samples: int = 256       # fixed-seed calibration subset of the training data
    calibration: str = "minmax"          # activation ranges: minmax | percentile[=P]
    quantize_exclude: tuple = ()         # nodes kept fp32 in every candidate (e.g. a detector's box decoding)


def parse_duration_ms(text: str | None) -> float | None:
    if text is None:
        return None
    t = str(text).strip().lower()
    try:
        if t.endswith("ms"):
            v = float(t[:-2])
        elif t.endswith("us"):
            v = float(t[:-2]) / 1000
        elif t.endswith("s"):
            v = float(t[:-1]) * 1000
        else:
            v = float(t)
    except ValueError:
        raise GraphpruneError(f"--latency-budget: expected a time such as 4ms, got {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise GraphpruneError(f"--latency-budget must be a positive, finite time, got {text!r}")
    return v


def parse_prefer(items: list[str] | None) -> dict[str, float]:
    out = {}
    for item in items or []:
        for part in item.split(","):
            if "=" not in part:
                raise GraphpruneError(f"--prefer: expected OBJECTIVE=WEIGHT, got {part!r}")
            k, v = part.split("=", 1)
            name = obj.ALIASES.get(k.strip())
            if name is None:
                raise GraphpruneError(f"--prefer: unknown objective {k.strip()!r}")
            try:
                w = float(v)
            except ValueError:
                raise GraphpruneError(f"--prefer {part!r}: weight must be a number") from None
            if not (w >= 0 and math.isfinite(w)):
                raise GraphpruneError(f"--prefer {part!r}: weight must be a finite number >= 0")
            out[name] = w
    return out


def _int_at_least(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise GraphpruneError(f"{name} must be an integer >= {low}, got {value!r}")


def _finite(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise GraphpruneError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise GraphpruneError(f"{name} must be finite, got {value!r}")
    return v


def resolve_threads(threads: int | None) -> int:
    """The intra-op thread count every measurement uses: --threads, or the same default as
    `graphprune bench` (the cores this process may run on). Bounded: far more threads than
    cores only measures the scheduler."""
    from graphprune.targets.measure_local import default_threads
    cores = default_threads()
    if threads is None:
        return cores
    _int_at_least("--threads", threads, 1)
    if threads > THREADS_PER_CORE_MAX * cores:
        raise GraphpruneError(f"--threads {threads}: more than {THREADS_PER_CORE_MAX} x the {cores} core(s) this "
                              f"process may use ({THREADS_PER_CORE_MAX * cores}); timings would measure oversubscription")
    return threads


def validate(o: OptimizeOptions) -> list[str]:
    """Every check that needs no file; returns the objectives. Raises GraphpruneError (one line)."""
    objectives = obj.parse_objectives(o.objectives)
    from graphprune.search import joint
    objectives = joint.objectives(o, objectives)   # --quantize: energy at precision; backend checked
    from graphprune.inputs import check_seed, check_shape_values
    check_shape_values(o.input_shapes)   # against the model once it is read (stages.load_inputs)
    check_seed(o.seed)
    if o.max_error_increase is not None and not (0 <= _finite("--max-error-increase", o.max_error_increase) < 1):
        raise GraphpruneError(f"--max-error-increase must be in [0, 1) (0.01 = 1 pp), got {o.max_error_increase}")
    if o.latency_budget_ms is not None and not _finite("--latency-budget", o.latency_budget_ms) > 0:
        raise GraphpruneError(f"--latency-budget must be positive, got {o.latency_budget_ms} ms")
    _int_at_least("--budget", o.budget, 1)
    _int_at_least("--workers", o.workers, 1)
    _int_at_least("--repeats", o.repeats, 1)
    _int_at_least("--holdout", o.holdout, 0)
    _int_at_least("--tune-trials", o.tune_trials, 0)
    check_tune_time(o)
    if o.samples is not None:
        _int_at_least("--samples", o.samples, 1)
    if o.channel_step is not None:   # 0 used to fall back to the target's step silently
        _int_at_least("--channel-step", o.channel_step, 1)
    if not 0 < _finite("--min-keep", o.min_keep) <= 1:
        raise GraphpruneError(f"--min-keep must be in (0, 1], got {o.min_keep}")
    for name, ratios in (("--sensitivity-ratios", o.sensitivity_ratios), ("uniform ratios", o.uniform_ratios)):
        if not ratios or any(not 0 < _finite(name, r) < 1 for r in ratios):
            raise GraphpruneError(f"{name}: each ratio must be in (0, 1), got {list(ratios)}")
    if o.backend not in ("ort", "tvm"):
        raise GraphpruneError(f"unknown backend {o.backend!r} (use ort or tvm)")
    resolve_threads(o.threads)
    if not _finite("--timeout", o.timeout) > 0:
        raise GraphpruneError(f"--timeout must be a positive number of seconds, got {o.timeout}")
    _validate_recovery(o)
    _validate_distillation(o)
    for name in o.prefer:
        if name not in objectives:
            raise GraphpruneError(f"--prefer {name}: not one of the objectives ({', '.join(objectives)})")
    check_optimizer(o.optimizer)
    from graphprune.search.warmstart import check_mode
    check_mode(o.search_start)
    _validate_metric_name(o.metric)
    return objectives


def check_tune_time(o: OptimizeOptions) -> float | None:
    """--tune-time in seconds (None: no time budget). It budgets TVM's tuning of the base, so with
    onnxruntime it would silently do nothing: refused, like a duration that is not one."""
    if o.tune_time is None:
        return None
    from graphprune.targets.tuning.budget import parse_tune_time   # no TVM import
    secs = parse_tune_time(o.tune_time, "--tune-time")
    if o.backend != "tvm":
        raise GraphpruneError("--tune-time budgets the tuning of TVM schedules: it needs --backend tvm")
    return secs


def _validate_metric_name(name: str | None) -> None:
    """A name that is neither a built-in metric nor package.module:function fails before any file is read."""
    if name is None:
        return
    from graphprune.metrics import METRICS, NAMES_TEXT
    if ":" not in name and name not in METRICS:
        raise GraphpruneError(f"unknown --metric {name!r}; choose from {NAMES_TEXT}")


def _validate_recovery(o: OptimizeOptions) -> None:
    """The recovery options, checked even when they would only be used after the search."""
    if not _finite("--epochs", o.epochs) >= 0:
        raise GraphpruneError(f"--epochs must be >= 0, got {o.epochs}")
    if not _finite("--lr", o.lr) > 0:
        raise GraphpruneError(f"--lr must be a finite number > 0, got {o.lr}")
    _int_at_least("--batch-size", o.batch_size, 1)
    _int_at_least("--finetune-steps", o.finetune_steps, 1)
    _int_at_least("--recovery-tries", o.recovery_tries, 1)
    if o.recovery_slack:
        if not 0 < _finite("--recovery-slack", o.recovery_slack) < 1:
            raise GraphpruneError(f"--recovery-slack must be in [0, 1) (0.03 = 3 pp), got {o.recovery_slack}")
        if o.max_error_increase is None or o.epochs <= 0:
            raise GraphpruneError("--recovery-slack needs --max-error-increase and --epochs > 0: it moves the "
                                  "accuracy constraint to the fine-tuned model")


def _validate_distillation(o: OptimizeOptions) -> None:
    """The distillation and BN-recalibration options (docs/recovery.md)."""
    if o.distill_weight is not None and not 0 <= _finite("--distill-weight", o.distill_weight) <= 1:
        raise GraphpruneError(f"--distill-weight must be in [0, 1] (0: labels only, 1: distillation only), "
                              f"got {o.distill_weight}")
    if not _finite("--temperature", o.temperature) > 0:
        raise GraphpruneError(f"--temperature must be a finite number > 0, got {o.temperature}")
    _int_at_least("--bn-samples", o.bn_samples, 1)
    _int_at_least("--reconstruct-samples", o.reconstruct_samples, 1)
    if o.reconstruct and o.quantize != "off":
        raise GraphpruneError(f"--reconstruct cannot be combined with --quantize {o.quantize}: the refit reads "
                              "float convolutions, not quantized ones")
