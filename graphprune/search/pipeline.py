"""`graphprune optimize` as a pipeline of stages over one state object.

    validate -> load -> open OUTDIR (lock, journal) -> executor -> baseline -> sensitivity ->
    hold-out + surrogate -> search -> front + choice -> recovery -> paired final measurement
    -> outputs

Each stage is a function `stage(state)` that reads what earlier stages put on the
`RunState` and adds its own results; a new objective, metric or executor touches the
stage it concerns, not one long function. `run_optimize` runs them in order and, whatever
happens, closes the journal, shuts down the executor it started, removes a journal it
created but never wrote a measurement to, and releases the OUTDIR lock.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from graphprune.errors import GraphpruneError
from graphprune.search import cluster, outputs, recovery, stages
from graphprune.search.latency import compare_final, final_text
from graphprune.search.options import OptimizeOptions
from graphprune.search.outdir import drop_if_header_only


@dataclass
class RunState:
    """Everything one optimize run knows, filled in stage by stage (None until its stage ran)."""
    o: OptimizeOptions
    log: Callable[[str], None]
    executor: Any = None
    own_executor: bool = False
    cluster: Any = None         # --cluster: this run's distributed.Client (graphprune.search.cluster)
    batch: int = 1              # candidates proposed at a time: --workers, cluster threads, devices
    latency_slots: int = 1      # candidates timed at once (devices under the RPC key)
    t_start: float = field(default_factory=time.time)
    notes: list = field(default_factory=list)
    # validate / load
    objectives: list = None
    need_latency: bool = True
    spec: Any = None
    step: int = None
    label: str = None
    out: Any = None
    model: Any = None
    an: Any = None
    x: Any = None
    y: Any = None
    train: Any = None
    data_desc: str = None
    metric: Any = None          # graphprune.metrics.Metric judging every candidate
    metric_info: dict = None    # its name, reference, description: stated in every output
    ref: Any = None             # the original model's reduced outputs on x (computed once)
    space: Any = None
    user_space: Any = None
    joint: dict = None          # --quantize: graphprune.search.joint's state (None: pruning only)
    # OUTDIR
    lock: Any = None
    journal: Any = None
    ev: Any = None
    # measurements
    base: dict = None
    search_inc: float = None
    cons: Any = None
    pre_bar: Any = None
    s_recs: list = None
    bounds: dict = None
    u_recs: list = None
    hold_pe: dict = None
    margins: dict = None
    measured: list = None
    search: Any = None
    prospective: dict = None
    # choice, recovery, final
    fr: list = None
    weights: dict = None
    choice: Any = None
    delivery: Any = None
    chosen: dict = None
    choice_reason: str = None
    final: dict = None
    summary: dict = None

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
            drop_if_header_only(self.journal, self.journal.created, self.log)
        if self.own_executor and self.executor is not None:
            self.executor.shutdown()
        from graphprune.search import candidates
        candidates.configure(None)   # this run's calibration/refit samples must not reach later builds in-process
        if self.cluster is not None:
            self.cluster.close()
        if getattr(self.ev, "quality", None) is not None:
            self.ev.quality.close()
        if self.lock is not None:
            self.lock.release()


def final_measurement(st: RunState) -> None:
    """The delivered model against the original, measured side by side now: the speed-up the
    user is given (the search's latencies may be cached from other runs)."""
    d = st.delivery
    if d is None:
        return
    st.final = compare_final(st.model, d.model, st.spec, st.o.seed)
    cfg = {int(k): int(v) for k, v in d.record["config"].items()}
    if cfg == st.space.full() and d.recovery is None and getattr(st, "joint", None) is None:
        # the original's own computation: any difference the timing shows is noise, not a verdict
        st.final["verdict"] = "same model"
    st.final["text"] = final_text(st.final)
    st.log(st.final["text"])


STAGES = (stages.validate_options, cluster.connect_stage, stages.load_inputs, stages.open_outdir,
          stages.start_executor, stages.baseline, stages.sensitivity, stages.holdout_and_surrogate, stages.search, stages.front_and_choice,
          recovery.recovery_stage, final_measurement, outputs.write_outputs)


def run_optimize(o: OptimizeOptions, executor=None, log=None) -> dict:
    """Run every stage; returns the summary pareto.json holds (plus "_measured": every record).
    Raises GraphpruneError (after writing the outputs) when nothing meets the constraints.
    Several targets (`target="x86,arm-a72"`, ...): one search each, see search/multitarget.py."""
    from graphprune.search.multitarget import is_multi, run_multi
    if is_multi(o):
        return run_multi(o, executor=executor, log=log)
    st = RunState(o, log or (lambda msg: print(msg, file=sys.stderr, flush=True)), executor=executor)
    try:
        for stage in STAGES:
            stage(st)
    finally:
        st.close()
    if st.chosen is None:
        raise GraphpruneError(f"{st.choice_reason}; see {st.out / 'report.md'}")
    return st.summary
