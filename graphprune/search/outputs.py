"""The last stage: the summary (pareto.json), best.onnx with its metadata, pareto.png, report.md.

The speed-up stated anywhere for the delivered model is the final paired measurement's
("final"); the search's per-candidate latencies (possibly from the cache) only rank the front.
"""
from __future__ import annotations

import time
from pathlib import Path

from graphprune.search import joint
from graphprune.search import report as rep
from graphprune.search import sensitivity as sens
from graphprune.search.latency import threads_text
from graphprune.search.report import slim

RESULT_KEY = "graphprune.optimize"
SURROGATE_TEXT = ("latency: Ridge on log-latency over the exact MAC count (relative, and its log), the kept fractions "
                  "and their pairwise products; error: Ridge (gradient boosting from 30 measured configurations) "
                  "on the same features")


def summary(st) -> dict:
    from graphprune.metrics.runner import n_samples
    o, spec, d, search = st.o, st.spec, st.delivery, st.search
    mk = st.metric_info["key"]
    sl = lambda r: slim(r, mk)  # noqa: E731
    return {
        "model": str(o.model), "latency": spec.to_json(), "latency_label": st.label,
        "threads": spec.threads if spec.backend == "ort" else None, "threads_text": threads_text(spec),
        "energy_note": f"estimate = latency x {spec.power_w} W (stated power of {spec.measured_target}), not measured"
        if spec.power_w else None,
        "data": {"description": st.data_desc, "samples": int(n_samples(st.x)), "labelled": st.y is not None},
        "metric": st.metric_info,
        "objectives": st.objectives, "constraints_text": cons_text(o, st.cons),
        "weights": st.weights, "weights_text": ", ".join(f"{k}={v:g}" for k, v in st.weights.items()),
        "optimizer": o.optimizer, "budget": o.budget, "workers": o.workers, "seed": o.seed,
        "criterion": o.criterion, "space": st.space.to_json(), "space_size": float(st.space.size()),
        "counts": {"asked": search.stats.asked, "measured_total": len(st.journal.of_type("measured")),
                   "measured_this_run": st.ev.n_measured, "from_journal": st.ev.n_reused,
                   "screened": search.stats.screened, "duplicates": search.stats.duplicates},
        "baseline": sl(st.base), "uniform": [sl(r) for r in st.u_recs],
        "front": [sl(r) for r in st.fr], "chosen": sl(st.chosen), "choice_reason": st.choice_reason,
        "recovery": d.recovery if d else None,
        "recovery_rejected": d.rejected if d else None,
        "delivered": {"key": d.record["key"], mk: 1 - d.error, "recovered": d.recovery is not None}
        if d else None,
        "final": st.final,
        "sensitivity": {"ratios": list(o.sensitivity_ratios), "bounds": {str(k): v for k, v in st.bounds.items()},
                        "curves": {str(k): v for k, v in sens.curves(st.space, st.s_recs, st.base).items()}},
        "surrogate": {"model": SURROGATE_TEXT, "holdout": st.hold_pe, "prospective": st.prospective},
        "notes": list(st.notes) + list(st.journal.notes),
        "seconds": time.time() - st.t_start,
    }


def write_outputs(st) -> None:
    import onnx

    import graphprune as gp
    from graphprune.metadata import set_json
    o, out, d = st.o, st.out, st.delivery
    s = summary(st)
    joint.add_summary(st, s)   # --quantize: precision, calibration, energy label
    if d is not None:
        meta = {"configuration": st.chosen["config"], "key": st.chosen["key"], "target": st.spec.target,
                "latency_label": st.label, "metric": st.metric_info, "original": slim(st.base, st.metric_info["key"]),
                "chosen_measured": slim(st.chosen, st.metric_info["key"]),
                "recovery": {k: v for k, v in (d.recovery or {}).items() if k != "text"} or None,
                "recovery_rejected": d.rejected and {"reason": d.rejected["reason"]},
                "final": st.final, "energy_note": s["energy_note"], "choice_reason": st.choice_reason}
        from graphprune.search.jsonsafe import finite
        bm = onnx.ModelProto()
        bm.CopyFrom(d.model)
        set_json(bm, RESULT_KEY, finite(meta))
        gp.save(bm, out / "best.onnx", source=o.model)
        s["best_model"] = str(out / "best.onnx")
    nulled = rep.write_json(out / "pareto.json", s)
    if nulled:
        st.log(f"note: {len(nulled)} non-finite number(s) written as null in pareto.json (json_notes says where)")
        s["json_notes"] = nulled
    rcv = d.recovery if d else None
    rep.plot(out / "pareto.png", st.measured, st.fr, st.base, st.u_recs, st.chosen,
             ({"latency_ms": rcv["latency_ms"], "error": 1 - rcv["accuracy_after"]} if rcv else None),
             st.label, f"{Path(o.model).name} on {st.spec.target}"
             + (f" (STAND-IN {st.spec.stand_in})" if st.spec.stand_in else "") + joint.plot_note(st),
             criterion=o.criterion,
             ylabel=f"{st.metric_info['name']} {'[%]' if st.metric_info['percent'] else 'x 100'} vs "
                    f"{st.metric_info['reference']}")
    rep.atomic_write_text(out / "report.md", rep.markdown(s) + joint.report_section(s))
    s["_measured"] = st.measured
    st.summary = s


def cons_text(o, c) -> str:
    parts = []
    if o.max_error_increase is not None and o.recovery_slack:
        parts.append(f"error increase <= {o.max_error_increase:g} after recovery (error <= "
                     f"{c.max_error - o.recovery_slack:.4f}); the search allows {o.max_error_increase + o.recovery_slack:g} "
                     f"before recovery (error <= {c.max_error:.4f})")
    elif o.max_error_increase is not None:
        parts.append(f"error increase <= {o.max_error_increase:g} (error <= {c.max_error:.4f})")
    if o.latency_budget_ms is not None:
        parts.append(f"latency <= {o.latency_budget_ms:g} ms")
    return ", ".join(parts) or "none"
