"""The stages of `graphprune optimize` before recovery, each a function of the run's state.

validate -> load -> open OUTDIR -> start executor -> baseline -> sensitivity ->
hold-out + surrogate -> search -> front + choice. Everything that can be wrong with the
options or the input files fails in the first two stages, before OUTDIR is touched.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

from graphprune.errors import GraphpruneError
from graphprune.inputs import input_shape_text
from graphprune.metrics.runner import n_samples
from graphprune.search import joint
from graphprune.search import objectives as obj
from graphprune.search import sensitivity as sens
from graphprune.search import warmstart
from graphprune.search.cluster import is_dask_client, make_cluster_executor
from graphprune.search.evaluate import Evaluator
from graphprune.search.executor import make_executor
from graphprune.search.journal import Journal
from graphprune.search.latency import resolve_latency
from graphprune.search.options import validate
from graphprune.search.outdir import JOURNAL_NAME, OutdirLock, check_outdir
from graphprune.search.pareto import Constraints, choose_best, front
from graphprune.search.quality import info_text, value_text
from graphprune.search.quality_store import attach as attach_quality_store
from graphprune.search.space import build_space, parse_bounds
from graphprune.search.surrogate import Surrogate, prediction_error

CONSTRAINED_WEIGHT = 0.1   # default preference weight of an objective that a constraint already bounds


def validate_options(st) -> None:
    o = st.o
    st.objectives = validate(o)
    if o.outdir is None:   # the command a user types first: `graphprune optimize model.onnx --data images/`
        o.outdir = str(default_outdir(o.model))
    st.need_latency = ("latency_ms" in st.objectives or "energy_mj" in st.objectives
                       or o.latency_budget_ms is not None)
    st.out = check_outdir(o.outdir, o.model, o.resume)
    st.spec, st.step, st.label = resolve_latency(o)
    joint.check_target(st)
    if "energy_mj" in st.objectives and not st.spec.power_w:
        raise GraphpruneError(f"target {st.spec.measured_target!r} states no power_w: energy cannot be estimated")
    if o.train_data and o.epochs <= 0 and o.quantize == "off":   # --quantize calibrates on it
        st.log(f"note: --train-data {o.train_data} is not used without --epochs > 0")


def default_outdir(model) -> Path:
    """-o's default: `<model stem>_optimized` in the current folder."""
    return Path(f"{Path(model).stem}_optimized")


def load_inputs(st) -> None:
    """Model, analysis, data (and training data when recovery will need it), the quality metric with
    the original's outputs, search space."""
    import graphprune as gp
    from graphprune.search.quality import resolve_metric
    o = st.o
    st.model = gp.load(o.model)
    st.an = gp.analyse(st.model, input_shapes=o.input_shapes)
    st.x, st.y, st.train, st.data_desc = load_data(o, st.model)
    obj.check_data_fits(st.model, st.x)
    st.spec.input_shapes = timed_shapes(st.model, st.x, o.input_shapes)
    if st.train is not None:
        try:
            obj.check_data_fits(st.model, st.train.x)
        except GraphpruneError as exc:
            raise GraphpruneError(f"--train-data: {exc}") from None
    resolve_metric(st)
    st.space = build_space(st.an, st.step, o.min_keep, parse_bounds(o.group_bounds))
    st.user_space = st.space   # the user's bounds; the sensitivity bounds only steer the search
    joint.prepare(st)          # --quantize: calibration sample, precision axes


def _load(o, model, path: str, option: str, samples=None):
    from graphprune.data import load_for_model
    return load_for_model(path, model, size=o.size, mean=o.mean, std=o.std, scale=o.scale,
                          channel_order=o.channel_order, layout=o.layout, samples=samples, seed=o.seed,
                          require_labels=False, option=option)


def timed_shapes(model, x, pinned: dict | None) -> dict | None:
    """The dims the dynamic inputs are timed at: --input-shape, else the data's at batch 1 (a
    detector trained at 640x640 is timed at 640x640, not at the one rule's 64). None when every
    input is static."""
    from graphprune.inputs import checked_shapes
    dynamic = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}
               and any(not d.HasField("dim_value") or d.dim_value <= 0 for d in i.type.tensor_type.shape.dim)]
    if not dynamic:
        return checked_shapes(model, pinned)
    arrays = x if isinstance(x, dict) else {dynamic[0].name: x} if len(dynamic) == 1 else {}
    shapes = {i.name: [1, *np.shape(arrays[i.name])[1:]] for i in dynamic if i.name in arrays}
    return checked_shapes(model, {**shapes, **(pinned or {})})


def timed_at_text(st) -> str:
    shapes = st.spec.input_shapes
    if not shapes:
        return ""
    return f"; input {input_shape_text(shapes)}, {'--input-shape' if st.o.input_shapes else 'the data at batch 1'}"


def load_data(o, model):
    """(x_eval, y_eval or None, train or None, description). An image folder decodes only the
    --samples subset (and all of it when recovery holds part out for training)."""
    d = _load(o, model, o.data, "--data", o.samples if o.epochs <= 0 else None)
    desc = f"{o.data} ({len(d)} samples, {'labelled' if d.y is not None else 'no labels'})"
    train = None
    if o.epochs > 0:
        if o.train_data:
            train = _load(o, model, o.train_data, "--train-data")   # without labels recovery distils
            desc += f"; fine-tuning on {o.train_data} ({len(train)} samples)"
        else:   # hold out: fine-tuning never sees the evaluation part
            n = len(d)
            if n < 20:
                raise GraphpruneError(f"--data has {n} samples: too few to hold out a validation part; "
                                      "give --train-data")
            idx = np.random.default_rng(o.seed).permutation(n)
            n_eval = max(10, n // 2)
            ev, tr = np.sort(idx[:n_eval]), np.sort(idx[n_eval:])
            train, d = d.take(tr), d.take(ev)
            desc += (f"; no --train-data, so it was split with seed {o.seed}: {len(tr)} samples for fine-tuning, "
                     f"{len(ev)} held out for the search and every reported value")
    if o.samples is not None:   # an image folder was decoded as this subset already (the same indices)
        d = d.subsample(o.samples, o.seed)
        desc += f"; evaluated on a fixed-seed subset of {len(d)}"
    return d.x, d.y, train, desc


def open_outdir(st) -> None:
    """Create OUTDIR, lock it for this run, open (or resume) the journal."""
    from graphprune.targets.cache import graph_hash
    o = st.o
    st.lock = OutdirLock(st.out)
    h = hashlib.sha1()
    for k, a in (sorted(st.x.items()) if isinstance(st.x, dict) else [(None, st.x)]):
        h.update((k or "").encode())
        h.update(np.ascontiguousarray(a).tobytes())
    if st.y is not None:
        h.update(np.ascontiguousarray(st.y).tobytes())
    header = {"version": 1, "model_sha": graph_hash(st.model)[:16], "data": h.hexdigest()[:16],
              "objectives": st.objectives, "latency": st.spec.to_json(), "criterion": o.criterion,
              "space": st.space.to_json(), "seed": o.seed, "optimizer": o.optimizer, "workers": o.workers,
              "sensitivity_ratios": list(o.sensitivity_ratios), "holdout": o.holdout,
              "uniform_ratios": list(o.uniform_ratios), "max_error_increase": o.max_error_increase,
              "latency_budget_ms": o.latency_budget_ms, "recovery_slack": o.recovery_slack}
    if st.batch != o.workers:   # --cluster, a device farm: candidates proposed at a time
        header["batch"] = st.batch
    if st.metric.name != "accuracy":   # journals from before --metric (all accuracy) stay resumable
        header["metric"] = st.metric.name
    if o.input_shapes:   # the analysis (the space's groups) depends on them
        header["input_shapes"] = o.input_shapes
    if o.bn_recalibrate:   # candidates judged recalibrated are not comparable with raw ones
        header["bn_recalibrate"] = {"samples": o.bn_samples, "seed": o.seed}
    if o.reconstruct:
        header["reconstruct"] = {"samples": o.reconstruct_samples, "seed": o.seed}
    st.journal = Journal(st.out / JOURNAL_NAME, header, o.resume)
    for note in st.journal.notes:
        st.log(f"note: {note}")
    if o.resume:
        st.log(f"resuming: {len(st.journal.records)} record(s) in {st.journal.path} will be reused, "
               "not measured again")


def start_executor(st) -> None:
    from graphprune.search import candidates
    o = st.o
    model_bytes = st.model.SerializeToString()
    # this process: exact counts, final builds
    obj.init_worker(model_bytes, None, st.x, st.y, o.criterion, 0, st.metric.name, st.ref, o.input_shapes)
    calib = bn_calibration_samples(st)
    st.recon_x = recon = reconstruct_samples(st)
    candidates.configure(calib, o.batch_size, recon, o.seed)
    if st.executor is None or is_dask_client(st.executor):
        st.own_executor = True
        args = (model_bytes, None, st.x, st.y, o.criterion, 1 if o.workers > 1 else 0, st.metric.name, st.ref,
                o.input_shapes)
        init, args = (candidates.init_worker, args + (calib, o.batch_size, recon, o.seed)) \
            if calib is not None or recon is not None else (obj.init_worker, args)
        init, args = joint.wrap_initializer(st, init, args)
        st.executor = (make_cluster_executor(st, init, args) if st.cluster is not None or st.executor is not None
                       else make_executor(o.workers, init, args))
    st.ev = Evaluator(st.space, st.journal, st.executor, st.spec, measure_latency=st.need_latency)
    st.ev.latency_slots = st.latency_slots
    attach_quality_store(st)   # several targets in one run: quality evaluated once (search/multitarget.py)
    if calib is not None or recon is not None:
        st.ev.job = candidates.evaluate_job
    joint.attach(st)   # --quantize: candidates built and judged as deployed


def bn_calibration_samples(st):
    """--bn-recalibrate: a fixed-seed subset of --bn-samples samples of the training data (else of
    --data) that every candidate's BN statistics are recomputed on; None without the option."""
    o = st.o
    if not o.bn_recalibrate:
        return None
    if not any(n.op_type == "BatchNormalization" for n in st.model.graph.node):
        st.log("--bn-recalibrate: the model has no BatchNormalization (folded into its convolutions?): "
               "candidates are judged as they are")
    sub = fixed_subset(st.train.x if st.train is not None else st.x, o.bn_samples, o.seed + 11)
    st.log(f"--bn-recalibrate: every candidate judged after BN recalibration on {n_samples(sub)} "
           f"{'training' if st.train is not None else '--data'} samples")
    return sub


def fixed_subset(x, n: int, seed: int):
    """At most `n` samples of x (an array, or {input: array}) drawn with `seed`, in their order."""
    idx = np.sort(np.random.default_rng(seed).permutation(n_samples(x))[:n])
    return {k: np.ascontiguousarray(v[idx]) for k, v in x.items()} if isinstance(x, dict) else \
        np.ascontiguousarray(x[idx])


def reconstruct_samples(st):
    """--reconstruct: a fixed-seed subset of --reconstruct-samples samples of the training data (else
    of --data) that every candidate's refit runs on, and recovery's; None without the option."""
    o = st.o
    if not o.reconstruct:
        return None
    sub = fixed_subset(st.train.x if st.train is not None else st.x, o.reconstruct_samples, o.seed + 13)
    st.log(f"--reconstruct: every candidate's convolutions that read pruned channels refitted by least squares "
           f"on {n_samples(sub)} {'training' if st.train is not None else '--data'} samples, and again before "
           "recovery")
    return sub


def baseline(st) -> None:
    o = st.o
    base = st.ev.evaluate([st.space.full()], "baseline")[0]
    if base.get("latency_ms") is None:
        base = st.ev.add_latency(base, st.model)
    st.base = base
    st.log(f"quality metric: {info_text(st.metric_info)}")
    st.log(f"original: {value_text(1 - base['error'], st.metric_info)} (against {st.metric_info['reference']}), "
           f"latency {base['latency_ms']:.3f} ms ({st.label}{timed_at_text(st)})")
    # the search's error bound; with --recovery-slack it is looser than the user's, which the
    # delivered model must then meet after recovery (see recovery.choose_delivery)
    st.search_inc = None if o.max_error_increase is None else o.max_error_increase + o.recovery_slack
    st.cons = Constraints(max_error=None if st.search_inc is None else base["error"] + st.search_inc,
                          max_latency_ms=o.latency_budget_ms)


def sensitivity(st) -> None:
    from graphprune.progress import progress_bar
    o = st.o
    sweep = sens.sweep_configs(st.space, list(o.sensitivity_ratios))
    st.pre_bar = progress_bar(len(sweep) + o.holdout + len(o.uniform_ratios), "sensitivity + hold-out",
                              unit="cfg", enabled=o.progress, file=sys.stderr)
    st.ev.on_record = lambda rec: st.pre_bar.update(1)
    st.s_recs = st.ev.evaluate([c for _, _, c in sweep], "sensitivity", [{"group": g, "ratio": r} for g, r, _ in sweep])
    for (g, _, _), rec in zip(sweep, st.s_recs):
        rec.setdefault("group", g)
    st.bounds = sens.lower_bounds(st.space, st.s_recs, st.base["error"], st.search_inc)
    if st.bounds:
        st.space = st.space.restrict(st.bounds)
        st.ev.space = st.space
        st.log("sensitivity bounds: " + ", ".join(f"group {g} keeps >= {v}" for g, v in st.bounds.items()))


def holdout_and_surrogate(st) -> None:
    """Hold-out configurations (the surrogate's prediction error), the uniform baselines, and the
    surrogate fitted on the original and the sensitivity sweep."""
    o, space, base = st.o, st.space, st.base
    rng = np.random.default_rng(o.seed + 7)
    h_recs = st.ev.evaluate([space.decode(rng.random(space.dims)) for _ in range(o.holdout)], "holdout")
    uni = [{a.gid: st.user_space.snap(a.gid, a.units * (1 - r)) for a in st.user_space.axes} for r in o.uniform_ratios]
    st.u_recs = st.ev.evaluate(uni, "uniform", [{"ratio": r} for r in o.uniform_ratios])
    st.pre_bar.close()
    st.ev.on_record = None
    fit = [base] + st.s_recs
    mrel = lambda recs: np.asarray([r["macs"] / base["macs"] for r in recs])  # noqa: E731
    lat = (lambda recs: np.asarray([r["latency_ms"] for r in recs])) if st.need_latency else (lambda recs: None)
    sur = Surrogate().fit(sens.as_fractions(space, fit), lat(fit), np.asarray([r["error"] for r in fit]), o.seed,
                          macs_rel=mrel(fit))
    h_eval = [r for r in unique(h_recs) if r.get("phase") == "holdout"]   # never a fitted point
    pe = prediction_error(sur, sens.as_fractions(space, h_eval), lat(h_eval), [r["error"] for r in h_eval],
                          mrel(h_eval)) if h_eval else {"n": 0}
    if pe.get("n"):
        mape = f"latency MAPE {pe['latency_mape_pct']:.1f} %, " if pe.get("latency_mape_pct") is not None else ""
        st.log(f"surrogate on {pe['n']} held-out configurations: {mape}error MAE {pe['error_mae_pp']:.2f} pp")
    st.hold_pe = pe
    st.margins = {"latency_rel": max(0.05, (pe.get("latency_mape_pct") or 10.0) / 100),
                  "error_abs": max(0.005, pe.get("error_mae", 0.01))}
    st.measured = unique([base] + st.s_recs + h_recs + st.u_recs)


def unique(recs):
    seen, out = set(), []
    for r in recs:
        if r["key"] not in seen:
            seen.add(r["key"])
            out.append(r)
    return out


def front_and_choice(st) -> None:
    """The front within the user's bounds, latency for it when the search did not time, the
    preference weights, and the criteria-optimal choice."""
    o = st.o
    st.fr = front([r for r in st.measured if st.user_space.contains(r["config"])], st.objectives)
    if not st.need_latency:   # MACs-driven search: time the front (and the uniform baselines) afterwards
        for r in st.fr + st.u_recs:
            st.ev.add_latency(r, obj.build({int(k): v for k, v in r["config"].items()}))
    # default weight 1 per objective; one the user already bounds by a constraint defaults to 0.1,
    # so that "--max-error-increase 0.01" means: the fastest configuration within 1 pp, nearly
    bounded = {"error"} if o.max_error_increase is not None else set()
    if o.latency_budget_ms is not None:
        bounded.add("latency_ms")
    st.weights = {ob: o.prefer.get(ob, CONSTRAINED_WEIGHT if ob in bounded else 1.0) for ob in st.objectives}
    st.choice = choose_best(st.fr, st.base, st.objectives, st.cons, st.weights)


def search(st) -> None:
    """The optimizer's loop over --budget candidates, with a progress bar of the fastest
    configuration meeting the constraints so far."""
    import graphprune as gp
    from graphprune.progress import progress_bar
    from graphprune.search.optimizer import Search
    o, cons, space = st.o, st.cons, st.space
    bar = progress_bar(o.budget, "candidates", unit="cand", enabled=o.progress, file=sys.stderr)
    constrained = cons.max_error is not None or cons.max_latency_ms is not None

    def progress(search, recs):
        bar.n = search.stats.asked
        feas = [r for r in recs if not cons.violations(r) and r.get("latency_ms") is not None]
        best = min(feas, key=lambda r: r["latency_ms"]) if feas else None
        bar.set_postfix_str(f"measured {search.stats.measured}+{search.stats.reused} reused, "
                            f"screened {search.stats.screened}, "
                            + ("fastest feasible " if constrained else "fastest ")
                            + (f"{best['latency_ms']:.3f} ms @ {value_text(1 - best['error'], st.metric_info)}"
                               if best else "-"))
        bar.refresh()

    counts_cache: dict[str, dict] = {}

    def exact_counts(cfg):
        k = space.key(cfg)
        if k not in counts_cache and getattr(st, "joint", None) is not None:
            counts_cache[k] = joint.counts(st, cfg)
        if k not in counts_cache:
            c = gp.count(obj.build(cfg))
            counts_cache[k] = {"macs": c.macs, "param_bytes": c.param_bytes}
        return counts_cache[k]

    st.search = Search(space, st.ev, st.objectives, st.base, cons, Surrogate(), st.margins, o.optimizer, o.budget,
                       st.batch, o.seed, exact_counts=exact_counts, progress=progress)
    st.search.refit(st.measured)   # the surrogate is refitted on everything measured as the search goes
    joint.suggest(st)              # --quantize: the optimizer starts from the all-int8 baselines
    warmstart.suggest_near_original(st)   # --search-start: light perturbations of the original first
    if not st.search.screening:
        st.log(f"note: --budget {o.budget} is below {o.optimizer}'s first population ({st.search.population}): "
               "every candidate is measured, none screened by the surrogate")
    st.measured = st.search.run(st.measured)
    bar.close()
    st.prospective = prospective_error(st.measured)


def prospective_error(measured: list[dict]) -> dict:
    """The surrogate's error on search candidates predicted before they were measured."""
    pros = [r for r in measured if r.get("phase") == "search" and r.get("predicted")]
    out = {"n": len(pros)}
    if pros:
        err_abs = [abs(r["predicted"]["error"] - r["error"]) for r in pros]
        out.update(error_mae=float(np.mean(err_abs)), error_mae_pp=float(np.mean(err_abs) * 100))
        rows = [r for r in pros if "latency_ms" in r["predicted"] and r.get("latency_ms")]
        out["latency_mape_pct"] = (float(np.mean([abs(r["predicted"]["latency_ms"] - r["latency_ms"]) / r["latency_ms"]
                                                  for r in rows]) * 100) if rows else None)
    return out
