"""`build_dynamic`: the whole DyFiP recipe on an ONNX classifier, ending in one ONNX model.

Steps: check the options and data (labels required), normalise the model (unique node
names, opset >= 17), cut it at the branch point, score per-class importance of the
gated convs (graphprune.importance), bridge trunk and rest to torch, train the branch
head on the frozen trunk, fine-tune the rest with the gating in place, write the trained
weights back and assemble the ONNX model (graphprune.dynamic.export), which onnxruntime
then runs once.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from graphprune.errors import GraphpruneError


@dataclass
class DynamicOptions:
    """What `graphprune dynamic` takes; see docs/dynamic.md."""
    branch_at: str | None = None        # a node or tensor; None or "auto": searched; "middle": the middle cut
    k: int = 3
    threshold: float = 0.9
    budget: float = 0.5
    method: str = "taylor"
    samples: int | None = 4000          # training subset (head and fine-tuning)
    importance_samples: int = 256
    epochs: float = 1.0                 # fine-tuning epochs over `samples`
    lr: float = 3e-4
    batch_size: int = 64
    head_steps: int = 300
    head_grid: int = 1                  # the head pools the branch map to grid x grid cells (1: global)
    seed: int = 0
    progress: bool = True
    branch_max_drop: float = 0.01       # branch search: proxy accuracy within this of the original's
    latency_budget_ms: float | None = None        # the budget from a longest-path target in ms ...
    latency_budget_fraction: float | None = None  # ... or as a fraction of the original's latency
    latency_repeats: int = 30           # bench's median over this many runs, per probe measured
    threads: int | None = None          # onnxruntime threads of the measurements (None: bench's default)
    dispatch: str = "auto"              # gated path: "gather" (weights gathered per input), "subsets" (one
    max_subset_mib: float = 256.0       # constant-weight rest per class subset; graphprune.dynamic.subsets),
    #                                     "auto": subsets when their weights fit max_subset_mib, else gather


@dataclass
class DynamicResult:
    model: onnx.ModelProto              # the deployable ONNX model
    net: object                         # the torch DynamicNet it was exported from
    split: object                       # graphprune.dynamic.graph.Split
    losses: list = field(default_factory=list)
    branch_search: dict | None = None   # the candidates table when the branch point was searched
    latency: dict | None = None         # the latency target, the budget it gave, the measured longest path


def check_options(o: DynamicOptions) -> None:
    """One-line errors for nonsense options, before any model work."""
    from graphprune.importance.methods import METHODS, XAI
    def bad_int(v, lo):
        return isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo
    if bad_int(o.k, 1):
        raise GraphpruneError(f"--k must be a positive integer, got {o.k!r}")
    if not isinstance(o.threshold, (int, float)) or not math.isfinite(o.threshold) or o.threshold < 0:
        raise GraphpruneError(f"--threshold must be a number >= 0 (above 1: never exit early), got {o.threshold!r}")
    if not isinstance(o.budget, (int, float)) or not (0 < o.budget <= 1):
        raise GraphpruneError(f"--budget is the fraction of filters kept per gated layer, in (0, 1]; got {o.budget!r}")
    if o.method not in METHODS:
        raise GraphpruneError(f"unknown importance method {o.method!r}; choose from {', '.join(XAI)}")
    if o.method not in XAI:
        raise GraphpruneError(f"--method {o.method} has no per-class scores; choose an XAI method: "
                              f"{', '.join(XAI)}")
    if o.samples is not None and bad_int(o.samples, 1):
        raise GraphpruneError(f"--samples must be a positive integer, got {o.samples!r}")
    if bad_int(o.importance_samples, 1) or bad_int(o.batch_size, 1) or bad_int(o.head_steps, 0):
        raise GraphpruneError("--importance-samples, --batch-size must be positive integers")
    if bad_int(o.head_grid, 1) or o.head_grid > 16:
        raise GraphpruneError(f"--head-grid must be an integer in 1 .. 16, got {o.head_grid!r}")
    if not math.isfinite(o.epochs) or o.epochs < 0 or not math.isfinite(o.lr) or o.lr <= 0:
        raise GraphpruneError(f"--epochs must be >= 0 and --lr > 0 (got {o.epochs!r}, {o.lr!r})")
    check_search_options(o)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_search_options(o: DynamicOptions) -> None:
    """The branch search's and the latency budget's options."""
    if o.branch_at is not None and (not isinstance(o.branch_at, str) or not o.branch_at.strip()):
        raise GraphpruneError(f"--branch-at must be a node or tensor name, 'auto' or 'middle'; got {o.branch_at!r}")
    if not _finite(o.branch_max_drop) or not (0 <= o.branch_max_drop <= 1):
        raise GraphpruneError(f"--branch-max-drop is an accuracy drop in [0, 1] (0.01 = 1 pp); got "
                              f"{o.branch_max_drop!r}")
    if o.latency_budget_ms is not None and o.latency_budget_fraction is not None:
        raise GraphpruneError("give --latency-budget-ms or --latency-budget-fraction, not both")
    for name, v in (("--latency-budget-ms", o.latency_budget_ms),
                    ("--latency-budget-fraction", o.latency_budget_fraction)):
        if v is not None and (not _finite(v) or v <= 0):
            raise GraphpruneError(f"{name} must be a positive number, got {v!r}")
    if isinstance(o.latency_repeats, bool) or not isinstance(o.latency_repeats, (int, np.integer)) \
            or o.latency_repeats < 1:
        raise GraphpruneError(f"--latency-repeats must be a positive integer, got {o.latency_repeats!r}")
    if o.dispatch not in ("auto", "gather", "subsets"):
        raise GraphpruneError(f"--dispatch must be auto, gather or subsets; got {o.dispatch!r}")
    if not _finite(o.max_subset_mib) or o.max_subset_mib <= 0:
        raise GraphpruneError(f"--max-subset-mib must be a positive number, got {o.max_subset_mib!r}")
    if o.threads is not None and (isinstance(o.threads, bool) or not isinstance(o.threads, (int, np.integer))
                                  or o.threads < 1):
        raise GraphpruneError(f"--threads must be a positive integer, got {o.threads!r}")


def prepare(model) -> onnx.ModelProto:
    """The normalised model (graphprune.load) at opset >= 17 (onnx's version converter if lower)."""
    import graphprune as gp
    m = gp.load(model)
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 17:
        try:
            m = gp.load(onnx.version_converter.convert_version(m, 17))
        except GraphpruneError:
            raise
        except Exception as exc:
            raise GraphpruneError(f"cannot convert the model from opset {opset} to 17: "
                                  f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return m


def extract(model: onnx.ModelProto, inputs: list[str], outputs: list[str]) -> onnx.ModelProto:
    """The sub-model computing `outputs` from `inputs` (onnx.utils.Extractor)."""
    from onnx.utils import Extractor
    return Extractor(model).extract_model(inputs, outputs)


def make_split(m: onnx.ModelProto, o: DynamicOptions, branch: str | None = None):
    """The split at `branch` (default: --branch-at resolved, or the middle cut) with o.budget."""
    from graphprune.dynamic.graph import default_branch, resolve_branch, split_model
    if branch is None:
        branch = default_branch(m) if o.branch_at in (None, "auto", "middle") else resolve_branch(m, o.branch_at)
    split = split_model(m, branch, o.budget)
    if o.k > split.classes:
        raise GraphpruneError(f"--k {o.k} is larger than the model's {split.classes} classes")
    if not split.gates:
        raise GraphpruneError(f"no conv after branch point {branch!r} can be gated (a Conv whose channels reach "
                              "exactly one Conv or GlobalAveragePool+Gemm through per-channel ops); attach the "
                              "branch earlier")
    return split


def build_dynamic(model, data, options: DynamicOptions | None = None, log=None) -> DynamicResult:
    """Build the dynamic model of an ONNX classifier from labelled `data` (Dataset or (x, y))."""
    o = options or DynamicOptions()
    return next(build_budgets(model, data, o, [o.budget], log=log))[1]


def build_budgets(model, data, o: DynamicOptions, budgets, log=None):
    """Yield (budget, DynamicResult) for each budget; the importance, the trunk and the trained
    branch head are computed once and shared (they do not depend on the budget), each
    budget's rest starts from the original weights and is fine-tuned on its own.
    With a latency target (o.latency_budget_ms / _fraction) the one budget comes from it and
    `budgets` is ignored; the branch point is searched when o.branch_at is None or 'auto'."""
    check_options(o)
    for b in budgets:
        check_options(DynamicOptions(**{**asdict(o), "budget": b}))
    from graphprune.data import as_dataset
    if getattr(data, "y", 1) is None or (isinstance(data, (tuple, list)) and data[1] is None):
        raise GraphpruneError("dynamic pruning trains the branch on labelled data: the data has no labels y")
    ds = as_dataset(data, require_labels=True)
    m = prepare(model)
    from graphprune.dynamic.graph import classifier_output, head_pool, split_model
    classes = classifier_output(m)[1]
    if o.k > classes:
        raise GraphpruneError(f"--k {o.k} is larger than the model's {classes} classes")
    if int(ds.y.max()) >= classes:
        raise GraphpruneError(f"label {int(ds.y.max())} is out of range for a model with {classes} classes")
    from graphprune.dynamic.plan import plan
    branch, budgets, search, latency = plan(m, ds, o, budgets, log)
    split = make_split(m, DynamicOptions(**{**asdict(o), "budget": budgets[0]}), branch)
    pool = head_pool(m, split.branch, o.head_grid)
    trunk, head, tables, rest_m = _shared_parts(m, split, ds, o, pool)
    train = ds.subsample(o.samples, o.seed)
    from graphprune.bridge import to_torch
    from graphprune.dynamic.gated import DynamicNet, finetune
    from graphprune.dynamic.plan import check_latency
    for b in budgets:
        ob = DynamicOptions(**{**asdict(o), "budget": b})
        sb = split_model(m, split.branch, b)
        net = DynamicNet(trunk, to_torch(rest_m), head, sb.gates, tables, o.k, o.threshold, pool)
        losses = finetune(net, train, o.epochs, o.batch_size, o.lr, o.seed, o.progress)
        extra = {"branch_search": search and {k: v for k, v in search.items() if k != "rows"}, "latency": latency}
        model_out = export_net(m, sb, net, rest_m, ob, extra)
        yield b, DynamicResult(model_out, net, sb, losses, search, check_latency(model_out, latency, o))


def _shared_parts(m, split, ds, o: DynamicOptions, pool):
    """(trunk module, trained head, integer tables, the rest's ONNX sub-model): all budget-independent."""
    import torch

    from graphprune.bridge import to_torch
    from graphprune.dynamic.gated import train_head
    from graphprune.dynamic.selection import integer_table
    from graphprune.importance import compute_importance
    torch.manual_seed(o.seed)
    imp = compute_importance(m, ds, o.method, samples=o.importance_samples, batch_size=o.batch_size, seed=o.seed,
                             per_class=True, progress=o.progress)
    missing = [g.producer for g in split.gates if g.producer not in imp.per_class]
    if missing:
        raise GraphpruneError(f"no per-class importance for {missing[0]} (a bug: the scores' keys name other nodes)")
    tables = [integer_table(imp.per_class[g.producer], o.k) for g in split.gates]
    trunk = to_torch(extract(m, [i.name for i in _graph_inputs(m)], split.rest_inputs))
    rest_m = extract(m, split.rest_inputs, [split.output])
    head = train_head(trunk, ds.subsample(o.samples, o.seed), split.classes, steps=o.head_steps, seed=o.seed,
                      pool=pool)
    return trunk, head, tables, rest_m


def _graph_inputs(m):
    inits = {t.name for t in m.graph.initializer}
    return [i for i in m.graph.input if i.name not in inits]


def export_net(m, split, net, rest_m, o: DynamicOptions, extra: dict | None = None) -> onnx.ModelProto:
    """The ONNX model of `net` (its current weights), run once in onnxruntime; `extra`: more metadata."""
    from graphprune.dynamic.export import assemble
    tables = [net.table(i).numpy() for i in range(len(split.gates))]
    meta = {"branch": split.branch, "k": o.k, "threshold": o.threshold, "budget": o.budget, "method": o.method,
            "gates": [{"conv": g.producer, "filters": g.channels, "kept": g.keep} for g in split.gates],
            "batch": 1, "options": {k: v for k, v in asdict(o).items() if k not in ("progress",)},
            **{k: v for k, v in (extra or {}).items() if v is not None}}
    out = assemble(m, split, net.rest.write_back(rest_m), net.head.weight.detach().numpy(),
                   net.head.bias.detach().numpy(), tables, o.k, o.threshold, meta, pool=net.pool)
    out = dispatch_form(out, o)
    _smoke(out)
    return out


def dispatch_form(model: onnx.ModelProto, o: DynamicOptions) -> onnx.ModelProto:
    """The gather-form model as o.dispatch asks: unchanged (gather), or one constant-weight rest per
    class subset (graphprune.dynamic.subsets); 'auto' keeps the gather form when the subsets' weights
    exceed o.max_subset_mib, and says so in the metadata."""
    from graphprune import metadata as md
    from graphprune.dynamic.export import METADATA_KEY
    from graphprune.dynamic.subsets import specialise
    if o.dispatch == "gather":
        return model
    try:
        return specialise(model, int(o.max_subset_mib * 2 ** 20))
    except GraphpruneError as exc:
        if o.dispatch == "subsets":
            raise
        meta = md.get_json(model, METADATA_KEY) or {}
        meta["dispatch"] = {"form": "gather", "why": str(exc)}
        md.set_json(model, METADATA_KEY, meta)
        return model


def _smoke(model: onnx.ModelProto) -> None:
    """onnxruntime must load and run the model on both paths (exit and gated)."""
    from graphprune.dynamic.export import with_threshold
    from graphprune.runtime import session
    inp = _graph_inputs(model)[0]
    dims = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal(dims).astype(np.float32)
    for thr in (0.0, 2.0):
        try:
            session(with_threshold(model, thr)).run(None, {inp.name: x})
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise GraphpruneError(f"onnxruntime cannot run the dynamic model: {msg}") from None
