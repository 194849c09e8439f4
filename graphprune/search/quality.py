"""The quality side of `optimize`: which metric judges candidates, against what, and how it reads.

The metric is chosen once, before OUTDIR exists: `--metric`, or the default (accuracy
with labels; agreement for a classifier output (N, classes) without; fidelity
otherwise; see graphprune.metrics). The original model's outputs on the evaluation
data are computed here, once, in onnxruntime, and handed to every worker with the data
(`init_worker`), so each candidate costs one run of its own. A metric that does not fit
the outputs, a user metric that fails on the original's outputs, and accuracy without
labels are refused here, in one line, before any search. Every output names the metric
and its reference through `st.metric_info`.
"""
from __future__ import annotations

from graphprune.errors import GraphpruneError


def _first_output_shape(model, x) -> tuple:
    """The first output's shape on one sample (the default metric depends on it)."""
    from graphprune.metrics.base import Metric
    from graphprune.metrics.runner import run_reduced
    one = {k: v[:1] for k, v in x.items()} if isinstance(x, dict) else x[:1]
    probe = Metric("probe", needs_labels=False, compare=lambda c, r, y: 0.0)
    return run_reduced(model, one, probe)[0].shape


_DEFAULT_WHY = {"accuracy": "the default: the data has labels",
                "agreement": "the default for a classifier output (N, classes) without labels",
                "fidelity": "the default without labels for an output that is not (N, classes)"}


def info(metric, has_labels: bool, chosen_by_default: bool) -> dict:
    """What every output says about the metric."""
    reference = metric.reference
    if ":" in metric.name and has_labels:
        reference += " (labels passed too)"
    return {"name": metric.name, "key": metric.name if ":" not in metric.name else "metric",
            "reference": reference, "description": metric.description, "percent": metric.percent,
            "default": chosen_by_default,
            "why": _DEFAULT_WHY.get(metric.name, "") if chosen_by_default else "chosen with --metric"}


def value_text(value: float, mi: dict) -> str:
    """'accuracy 91.23 %' or 'my.mod:fn 0.8123'."""
    return f"{mi['name']} {100 * value:.2f} %" if mi.get("percent", True) else f"{mi['name']} {value:.4f}"


def info_text(mi: dict) -> str:
    return f"{mi['name']} against {mi['reference']} ({mi['why']}): {mi['description']}"


def resolve_metric(st) -> None:
    """st.metric, st.metric_info and st.ref (the original's reduced outputs on st.x)."""
    from graphprune.metrics import default_metric_name, get_metric, reference_outputs
    o, has_labels = st.o, st.y is not None
    name = o.metric or default_metric_name(has_labels, _first_output_shape(st.model, st.x))
    metric = get_metric(name, st.model, has_labels)
    st.ref = reference_outputs(st.model, st.x, metric, st.y)
    if metric.name != "accuracy":   # recovery judges its models by the search's metric (search/recovery.py)
        from graphprune.metrics import evaluate
        st.error_of = lambda m: 1.0 - evaluate(m, st.x, metric, st.ref, st.y)
    if st.train is not None and st.train.y is not None and len(st.train.y):
        classes = _first_output_shape(st.model, st.x)[1]
        if int(st.train.y.max()) >= classes:
            raise GraphpruneError(f"--train-data: data labels go up to {int(st.train.y.max())} but the model has "
                                  f"{classes} outputs")
    st.metric = metric
    st.metric_info = info(metric, has_labels, o.metric is None)
