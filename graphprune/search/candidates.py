"""--bn-recalibrate: every search candidate judged after BatchNorm recalibration.

A candidate pruned from a BN network is judged with the statistics of the unpruned
network, which pruning upstream channels made stale; its quality then says more about
the stale statistics than about the channels kept, and candidates rank poorly against
their quality after recovery. Recalibrated on a few batches (graphprune.recovery.
bn_recalibrate: exact population statistics, seconds), they rank by what recovery can
get from them; and since recovery recalibrates first, the candidate's judged quality is
where recovery starts.

How: every candidate of the search is built by graphprune.search.objectives.build (in
each executor worker: the evaluation job; in this process: the model delivered without
recovery). `evaluate_job` runs objectives.evaluate_job with that build followed by the
recalibration, so whatever the job measures (error, metrics, counts) it measures on the
recalibrated candidate; `build` is the same for callers in this process. The original
model (every group at full width) is never recalibrated: it is the user's model.
The calibration samples are set per process by `configure` (the executor initializer
`init_worker` in workers); unconfigured, both are objectives' own.
"""
from __future__ import annotations

from contextlib import contextmanager

from graphprune.recovery.bn_recalibrate import recalibrate_bn
from graphprune.search import objectives as obj

_CALIB: dict = {}


def configure(x_calib, batch_size: int = 64) -> None:
    """Recalibrate candidates on `x_calib` from now on in this process (None: never)."""
    _CALIB.clear()
    if x_calib is not None:
        _CALIB.update(x=x_calib, batch=int(batch_size))


def init_worker(model_bytes, data_path, x, y, criterion, eval_threads, metric, ref, input_shapes, x_calib,
                batch_size) -> None:
    """The executor initializer: objectives' worker state, then the calibration samples."""
    obj.init_worker(model_bytes, data_path, x, y, criterion, eval_threads, metric, ref, input_shapes)
    configure(x_calib, batch_size)


def _recalibrated(model):
    if not _CALIB or model is obj._STATE.get("model"):   # the original stays the user's model
        return model
    return recalibrate_bn(model, _CALIB["x"], _CALIB["batch"])[0]


def build(config: dict[int, int]):
    """objectives.build(config), recalibrated when configured."""
    return _recalibrated(obj.build(config))


@contextmanager
def _recalibrated_builds():
    plain = obj.build
    obj.build = lambda config: _recalibrated(plain(config))
    try:
        yield
    finally:
        obj.build = plain


def evaluate_job(config: dict[int, int]) -> dict:
    """objectives.evaluate_job on the recalibrated candidate."""
    if not _CALIB:
        return obj.evaluate_job(config)
    with _recalibrated_builds():
        return obj.evaluate_job(config)
