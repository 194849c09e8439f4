"""The numerical check of a quantized (or fp16) model against its fp32 original.

Both models run in onnxruntime on the same samples; per output we report the largest
absolute difference and the relative error, that difference divided by the largest
|value| the fp32 model produced on those samples (a relative error per element would be
dominated by outputs near zero, which quantization cannot keep to a few percent), and,
for classifier-shaped outputs (N, classes), how often both models pick the same class.
The check passes when every output's relative error is within `tolerance`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from graphprune.errors import GraphpruneError

DEFAULT_TOLERANCE = 0.15  # of the fp32 output range: the int8 examples land at 8-9 % (see docs/quantization.md)


@dataclass
class OutputError:
    name: str
    max_abs: float
    max_rel: float
    top1_agreement: float | None = None   # fraction of samples with the same argmax (classifiers)

    def summary(self) -> str:
        top1 = "" if self.top1_agreement is None else f", top-1 agreement {self.top1_agreement:.2%}"
        return f"{self.name}: max abs error {self.max_abs:.4g}, relative {self.max_rel:.3%}{top1}"


@dataclass
class QuantCheck:
    samples: int
    tolerance: float
    outputs: list[OutputError] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(o.max_rel <= self.tolerance for o in self.outputs)

    def summary(self) -> str:
        verdict = "within" if self.passed else "NOT within"
        return (f"{self.samples} samples, {verdict} tolerance {self.tolerance:.1%} of the fp32 output range; "
                + "; ".join(o.summary() for o in self.outputs))


def run_batched(model: onnx.ModelProto, feeds: dict[str, np.ndarray], batch_size: int = 64,
                threads: int = 0) -> list[np.ndarray]:
    """All outputs of `model` over the samples of `feeds`, run `batch_size` at a time (a static
    batch dim is honoured); onnxruntime failing to load or run the model is a GraphpruneError."""
    from graphprune.quant.calibration import ArrayReader
    from graphprune.runtime import session

    sess = session(model, threads)
    reader = ArrayReader(model, feeds, batch_size)
    parts: list[list[np.ndarray]] = []
    while (batch := reader.get_next()) is not None:
        try:
            parts.append(sess.run(None, batch))
        except Exception as exc:
            lines = str(exc).strip().splitlines()
            raise GraphpruneError(f"onnxruntime cannot run the model: {lines[0][:200] if lines else exc}") from None
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


def compare(reference: onnx.ModelProto, candidate: onnx.ModelProto, feeds: dict[str, np.ndarray],
            tolerance: float = DEFAULT_TOLERANCE, batch_size: int = 64) -> QuantCheck:
    """Run both models on `feeds` and measure how far `candidate` is from `reference`."""
    if not tolerance >= 0:
        raise GraphpruneError(f"--tolerance must be a non-negative number, got {tolerance}")
    ref = run_batched(reference, feeds, batch_size)
    got = run_batched(candidate, feeds, batch_size)
    names = [o.name for o in reference.graph.output]
    report = QuantCheck(samples=len(ref[0]) if ref and ref[0].ndim else 1, tolerance=tolerance)
    report.outputs = [output_error(name, r, g) for name, r, g in zip(names, ref, got)]
    return report


def output_error(name: str, reference: np.ndarray, got: np.ndarray) -> OutputError:
    """Max abs error, relative error (to the largest |reference| value) and, for (N, classes)
    outputs, top-1 agreement of `got` against `reference`."""
    r64, g64 = reference.astype(np.float64), got.astype(np.float64)
    if r64.shape != g64.shape:
        raise GraphpruneError(f"output {name!r}: shape {list(got.shape)} differs from the fp32 model's "
                              f"{list(reference.shape)}")
    diff = float(np.max(np.abs(r64 - g64))) if r64.size else 0.0
    scale = float(np.max(np.abs(r64))) if r64.size else 0.0
    top1 = float(np.mean(r64.argmax(1) == g64.argmax(1))) if r64.ndim == 2 and r64.shape[1] > 1 else None
    return OutputError(name, diff, diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf")), top1)
