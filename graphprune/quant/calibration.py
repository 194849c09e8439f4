"""Calibration data for onnxruntime.quantization: numpy arrays served batch by batch.

onnxruntime's static quantization learns each activation's range by running the fp32
model on samples a `CalibrationDataReader` hands out one feed dict at a time. This
module adapts what graphprune already loads (`graphprune.data.Dataset`, an (x, y) pair,
an array, or {input name: array} for several inputs) to that interface, after checking
the arrays fit the model's inputs, so a wrong shape is a one-line error before
onnxruntime runs anything.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader

from graphprune.data.dataset import Dataset
from graphprune.errors import GraphpruneError
from graphprune.inputs import graph_inputs


def calibration_feeds(model: onnx.ModelProto, data) -> dict[str, np.ndarray]:
    """{input name: (N, ...) float array} for `model` from a Dataset, an (x, y) pair, an array
    (one-input models) or a dict of arrays; shapes and dtypes checked against the inputs."""
    inputs = graph_inputs(model)
    if data is None:
        raise GraphpruneError("quantization needs calibration data (--data): activation ranges are measured on it")
    if isinstance(data, dict):
        feeds = dict(data)
    else:
        x = data.x if isinstance(data, Dataset) else data[0] if isinstance(data, (tuple, list)) else data
        if len(inputs) != 1:
            raise GraphpruneError(f"the model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                                  "give calibration data as {input name: array}")
        feeds = {inputs[0].name: x}
    names = {i.name for i in inputs}
    missing, extra = names - set(feeds), set(feeds) - names
    if missing or extra:
        raise GraphpruneError(f"calibration data names {sorted(feeds)}, the model's inputs are {sorted(names)}")
    out = {}
    for inp in inputs:
        out[inp.name] = _checked_array(inp, feeds[inp.name])
    counts = {len(v) for v in out.values()}
    if len(counts) != 1:
        raise GraphpruneError(f"calibration inputs have different sample counts: {sorted(counts)}")
    return out


def _checked_array(inp: onnx.ValueInfoProto, value) -> np.ndarray:
    a = np.asarray(value)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
    if a.dtype.kind not in "iuf":
        raise GraphpruneError(f"calibration data for {inp.name!r} must be numeric, got {a.dtype}")
    if a.ndim == 0 or a.shape[0] == 0:
        raise GraphpruneError(f"calibration data for {inp.name!r} is empty")
    if a.dtype.kind == "f" and not np.isfinite(a).all():   # a NaN would become every scale
        raise GraphpruneError(f"calibration data for {inp.name!r} contains NaN or infinity")
    dims = inp.type.tensor_type.shape.dim
    static = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
    if len(static) != a.ndim or any(s is not None and s != v for s, v in zip(static[1:], a.shape[1:])):
        want = ["N"] + [s if s is not None else "?" for s in static[1:]]
        raise GraphpruneError(f"calibration data for {inp.name!r} has shape {list(a.shape)}; "
                              f"the model expects {want}")
    return np.ascontiguousarray(a, dtype=dtype)


class ArrayReader(CalibrationDataReader):
    """Hands `feeds` to onnxruntime's calibrator in batches of `batch_size` samples.

    A model whose batch dim is static (1, as many exporters write) is fed batches of exactly
    that size, whatever `batch_size` says: onnxruntime refuses any other; a last partial
    batch is then left out."""

    def __init__(self, model: onnx.ModelProto, feeds: dict[str, np.ndarray], batch_size: int = 32):
        if batch_size <= 0:
            raise GraphpruneError(f"calibration batch size must be positive, got {batch_size}")
        dims = [i.type.tensor_type.shape.dim[0] for i in graph_inputs(model)]
        fixed = {d.dim_value for d in dims if d.HasField("dim_value") and d.dim_value > 0}
        self.exact = bool(fixed)
        self.batch = min(fixed) if fixed else batch_size
        self.feeds = feeds
        self.n = len(next(iter(feeds.values())))
        if self.exact and self.n < self.batch:
            raise GraphpruneError(f"the model's batch size is fixed at {self.batch}; "
                                  f"the calibration data has only {self.n} samples")
        self.pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        end = min(self.pos + self.batch, self.n)
        if end <= self.pos or (self.exact and end - self.pos < self.batch):
            return None
        out = {k: v[self.pos:end] for k, v in self.feeds.items()}
        self.pos = end
        return out

    def rewind(self) -> None:
        self.pos = 0


# onnxruntime.quantization.CalibrationMethod by the names users give; percentile's default is
# onnxruntime's own (CalibPercentile 99.999)
CALIBRATION_METHODS = {"minmax": "MinMax", "percentile": "Percentile"}
# Not offered: onnxruntime's Entropy and Distribution calibrators. Through quantize_static (what
# QuantizeInt8Pass calls) Entropy gets a 128-bin histogram, as many bins as it quantizes to, so its
# threshold search has nothing to choose from and it returns MinMax's ranges (measured: identical
# scales and identical quality on two real models); quantize_static passes no option that changes
# the bin count. Distribution is meant for float8 and gave symmetric ranges twice MinMax's.
DEFAULT_PERCENTILE = 99.999


def parse_calibration(text: str, option: str | None = None) -> tuple[str, float | None]:
    """(method, percentile or None) from `minmax`, `percentile` or `percentile=P` (0 < P <= 100):
    how activation ranges are chosen from the calibration data. `option` (e.g. "--calibration")
    prefixes the error message when the text came from a command-line option.
    MinMax takes each tensor's full observed range; percentile builds histograms (slower, more
    memory) and clips outliers, which gives finer steps to the common values."""
    try:
        return _parse_calibration(text)
    except GraphpruneError as exc:
        if option is None:
            raise
        raise GraphpruneError(f"{option}: {exc}") from None


def _parse_calibration(text: str) -> tuple[str, float | None]:
    name, _, arg = str(text).strip().lower().partition("=")
    if name not in CALIBRATION_METHODS:
        raise GraphpruneError(f"unknown calibration method {text!r}; choose from "
                              f"{', '.join(CALIBRATION_METHODS)} (percentile=P for another percentile)")
    if name != "percentile":
        if arg:
            raise GraphpruneError(f"calibration method {name} takes no value, got {text!r}")
        return name, None
    if not arg:
        return name, DEFAULT_PERCENTILE
    try:
        p = float(arg)
    except ValueError:
        p = float("nan")
    if not 0 < p <= 100:
        raise GraphpruneError(f"the calibration percentile must be a number in (0, 100], got {arg!r}")
    return name, p


def calibration_text(method: str, percentile: float | None) -> str:
    """How the ranges are chosen, for reports: `MinMax`, `Percentile 99.999`, ..."""
    return CALIBRATION_METHODS[method] + (f" {percentile:g}" if percentile is not None else "")
