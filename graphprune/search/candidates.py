"""--bn-recalibrate, --reconstruct: every search candidate judged after its cheap repairs.

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

--reconstruct works the same way, before the recalibration: the convolutions that read pruned
channels are refitted by least squares to the original's outputs (graphprune.recovery.
reconstruct, seconds per level of refitted convolutions). Judged raw, a candidate of a network
without BN says little about what the refit makes of it (u2netp, uniform L1 at 10 %: 0.35 raw,
0.97 refitted; tools/probe_reconstruct.py), so the error bound would reject what the refit fixes.
"""
from __future__ import annotations

from contextlib import contextmanager

from graphprune.recovery.bn_recalibrate import recalibrate_bn
from graphprune.search import objectives as obj

_CALIB: dict = {}


def configure(x_calib, batch_size: int = 64, x_reconstruct=None, seed: int = 0) -> None:
    """Recalibrate candidates on `x_calib` (None: never) and reconstruct them on `x_reconstruct`
    (None: never; `seed` draws the refit's sampled positions, as recovery's refit does) from now on
    in this process."""
    _CALIB.clear()
    if x_calib is not None:
        _CALIB.update(x=x_calib, batch=int(batch_size))
    if x_reconstruct is not None:
        _CALIB.update(x_reconstruct=x_reconstruct, seed=int(seed))


def init_worker(model_bytes, data_path, x, y, criterion, eval_threads, metric, ref, input_shapes, x_calib,
                batch_size, x_reconstruct=None, seed: int = 0) -> None:
    """The executor initializer: objectives' worker state, then the calibration samples."""
    obj.init_worker(model_bytes, data_path, x, y, criterion, eval_threads, metric, ref, input_shapes)
    configure(x_calib, batch_size, x_reconstruct, seed)


def repaired(model, config):
    """`model` (the candidate of `config`) reconstructed and recalibrated as configured in this process."""
    if not _CALIB or model is obj._STATE.get("model"):   # the original stays the user's model
        return model
    if "x_reconstruct" in _CALIB:
        import graphprune as gp
        from graphprune.recovery.reconstruct import reconstruct
        s = obj._STATE
        plan = gp.choose(s["analysis"], keep={int(k): int(v) for k, v in config.items()}, criterion=s["criterion"])
        model = reconstruct(s["model"], plan, model, _CALIB["x_reconstruct"], seed=_CALIB["seed"])[0]
    if "x" in _CALIB:
        model = recalibrate_bn(model, _CALIB["x"], _CALIB["batch"])[0]
    return model


def build(config: dict[int, int]):
    """objectives.build(config), reconstructed and recalibrated when configured."""
    return repaired(obj.build(config), config)


@contextmanager
def _recalibrated_builds():
    plain = obj.build
    obj.build = lambda config: repaired(plain(config), config)
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
