"""Recovery fine-tuning on the cluster: `--cluster` with `--epochs`.

Recovery tries the front members best score first, at most --recovery-tries of them, and
delivers the first that is within the bound after fine-tuning (graphprune.search.recovery).
On one machine the tries run one after another. On a cluster they start at once, one per
worker (speculatively: a try the sequential rule never reaches is cancelled or ignored), and
the driver takes each result when the rule reaches it, so the delivered model and the reason
are the sequential ones; the wall time is about one fine-tune instead of up to K.

A fine-tune job runs on a worker with the run's state already there (the model, its
analysis, the evaluation data and metric, BN calibration: cluster.worker); it carries the
training data and the options, and returns the fine-tuned model's bytes, the recovery report
and the log lines, which the driver replays. Latency is measured on the driver as for every
candidate (never on a worker that is training something else).
"""
from __future__ import annotations


def finetune_job(config: dict, train, options: dict) -> tuple[bytes, dict, list[str]]:
    """On a worker: finetune.recover of `config` with this worker's run state."""
    from graphprune.search import candidates
    from graphprune.search import objectives as obj
    from graphprune.search.finetune import recover
    s = obj._STATE
    lines: list[str] = []
    error_fn = None
    if s["metric"].name != "accuracy":   # as quality.resolve_metric sets st.error_of on the driver
        from graphprune.metrics import evaluate
        error_fn = lambda m: 1.0 - evaluate(m, s["x"], s["metric"], s["ref"], s["y"])  # noqa: E731
    cfg = {int(k): int(v) for k, v in config.items()}
    model, rcv = recover(s["model"], s["analysis"], cfg, s["criterion"], train, s["x"], s["y"], log=lines.append,
                         error_fn=error_fn, before=candidates.build(cfg), **options)
    return model.SerializeToString(), rcv, lines


def start(st) -> None:
    """Before recovery, on a cluster: start the fine-tunes the recovery rule may need, at once."""
    from graphprune.search.cluster import ClusterExecutor
    o, choice = st.o, st.choice
    if not isinstance(st.executor, ClusterExecutor) or o.epochs <= 0 or choice is None or choice.record is None:
        return
    members = choice.feasible[:o.recovery_tries] if o.recovery_slack else [choice.record]
    full = {a.gid: a.units for a in st.space.axes}
    options = dict(epochs=o.epochs, steps=o.finetune_steps, lr=o.lr, batch_size=o.batch_size, seed=o.seed,
                   distill_weight=_distill_weight(st), temperature=o.temperature, label=st.metric.name,
                   reconstruct_x=getattr(st, "recon_x", None))
    st.recovery_jobs = {}
    for r in members:
        if {int(k): v for k, v in r["config"].items()} != full:   # the original is never fine-tuned
            st.recovery_jobs[r["key"]] = st.executor.submit(finetune_job, r["config"], st.train, options)
    if st.recovery_jobs:
        st.log(f"recovery: {len(st.recovery_jobs)} fine-tune(s) started at once on the cluster")


def _distill_weight(st) -> float:
    from graphprune.search.recovery import recovery_options
    return recovery_options(st)["distill_weight"]


def take(st, key: str):
    """(model, report) of the fine-tune of `key` started on the cluster, or None (not started)."""
    import onnx
    job = (getattr(st, "recovery_jobs", None) or {}).pop(key, None)
    if job is None:
        return None
    blob, rcv, lines = job.result()
    for line in lines:
        st.log(line)
    return onnx.load_from_string(blob), rcv


def cancel_rest(st) -> None:
    """The fine-tunes the recovery rule did not need (an earlier try won)."""
    for job in (getattr(st, "recovery_jobs", None) or {}).values():
        job.cancel()
    st.recovery_jobs = {}
