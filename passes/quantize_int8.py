"""QuantizeInt8Pass: static int8 quantization into a standard QDQ model, by onnxruntime.

Why onnxruntime's quantizer (`onnxruntime.quantization.quantize_static`) and not our own:
it is the tool whose output onnxruntime's int8 kernels (VNNI/AMX on x86, dot-product on
ARM) are written for, it already knows which ops have integer kernels, and its QDQ output
(QuantizeLinear/DequantizeLinear around float ops) is the ONNX standard form that TVM,
TensorRT and other runtimes import. This pass only adapts it to graphprune: model in,
model out, calibration from numpy arrays, a validated precision map for mixed precision.

Steps, in a temporary folder (the quantizer works on files; the input proto is never
touched):
1. `quant_pre_process` (symbolic + ONNX shape inference and onnxruntime's basic graph
   optimisation), as onnxruntime's quantization guide recommends: the quantizer can only
   quantize tensors whose shape it knows, and folding BatchNormalization into the Conv
   before quantizing quantizes the weights the kernel really uses (one rounding instead of
   an int8 conv followed by a float BN), which is both more accurate and faster.
   Node names survive it (fused BatchNormalization nodes disappear into their Conv).
   Its symbolic shape inference is skipped when ONNX's own inference already gives every
   tensor a shape (CNNs): it imports onnxruntime.tools, which imports torch (seconds).
2. `quantize_static` in QDQ format, calibrated on the given data (`calibration`: MinMax by
   default, each activation's full observed range; or onnxruntime's histogram methods
   percentile, which clips outliers): weights
   int8 (per output channel with `per_channel`, symmetric unless `symmetric_weights` is
   False), activations uint8 asymmetric, or int8 symmetric with `symmetric_activations`
   (what ARM and GPU kernels prefer). Nodes mapped to fp32 are passed as
   `nodes_to_exclude` and stay float, between DequantizeLinear and QuantizeLinear.
3. Opset imports of domains no node uses (onnxruntime's optimiser adds a dozen) are
   dropped, so other runtimes see a plain ai.onnx model; the per-layer precision read
   back from the graph is recorded in the metadata (graphprune.quant.PRECISION_KEY).
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path

import onnx

from graphprune.errors import GraphpruneError
from graphprune.passes.base import Pass
from graphprune.quant.precision import (check_float_model, graph_precision, record_precision,
                                        resolve_exclusions)

_EXTERNAL = 1_800_000_000   # protobuf's 2 GiB limit, with margin: above it files keep weights aside
QDQ_OPSET = 13              # DequantizeLinear's `axis` (per-channel scales) exists from opset 13


class QuantizeInt8Pass(Pass):
    """`data`: calibration samples (a graphprune.data Dataset, an (x, y) pair, an array for a
    one-input model, or {input name: array}). `precision` {node: "fp32"|"int8"} and `exclude`
    [node, ...] keep nodes in fp32 (mixed precision); names refer to the input model.
    `calibration`: minmax (default), percentile or percentile=P
    (graphprune.quant.calibration.parse_calibration)."""

    name = "quantize-int8"

    def __init__(self, data, *, per_channel: bool = True, symmetric_weights: bool = True,
                 symmetric_activations: bool = False, precision: dict[str, str] | None = None,
                 exclude=None, preprocess: bool = True, batch_size: int = 32, calibration: str = "minmax"):
        from graphprune.quant.calibration import parse_calibration
        self.data = data
        self.calibration, self.percentile = parse_calibration(calibration)
        self.per_channel = per_channel
        self.symmetric_weights = symmetric_weights
        self.symmetric_activations = symmetric_activations
        self.precision = dict(precision or {})
        self.exclude = list(exclude or [])
        self.preprocess = preprocess
        self.batch_size = batch_size

    def run(self, model: onnx.ModelProto) -> onnx.ModelProto:
        from graphprune.quant.calibration import ArrayReader, calibration_feeds, calibration_text

        check_float_model(model)
        excluded = resolve_exclusions(model, self.precision, self.exclude)
        model = _opset_at_least(model, QDQ_OPSET)
        feeds = calibration_feeds(model, self.data)
        big = sum(t.ByteSize() for t in model.graph.initializer) > _EXTERNAL
        with tempfile.TemporaryDirectory(prefix="graphprune-quant-") as tmp:
            src = _save(model, Path(tmp) / "float.onnx", big)
            if self.preprocess:
                src = self._preprocess(src, Path(tmp) / "pre.onnx", excluded, _all_shapes_known(model), big)
            out = Path(tmp) / "int8.onnx"
            self._quantize(src, out, ArrayReader(model, feeds, self.batch_size), excluded, big)
            q = onnx.load(str(out), load_external_data=True)
        _drop_unused_domains(q)
        record_precision(q, graph_precision(q), tool="onnxruntime.quantization.quantize_static", format="QDQ",
                         per_channel=self.per_channel, symmetric_weights=self.symmetric_weights,
                         symmetric_activations=self.symmetric_activations, excluded=excluded,
                         calibration=calibration_text(self.calibration, self.percentile))
        return q

    def _preprocess(self, src: Path, dst: Path, excluded: list[str], shapes_known: bool, big: bool) -> Path:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        try:
            with _quiet():
                quant_pre_process(str(src), str(dst), skip_symbolic_shape=shapes_known,
                                  save_as_external_data=big)
        except Exception as exc:
            raise GraphpruneError(f"onnxruntime's quantization pre-processing failed: {_first(exc)}") from None
        kept = {n.name for n in onnx.load(str(dst), load_external_data=False).graph.node}
        gone = [n for n in excluded if n not in kept]
        if gone:
            raise GraphpruneError(f"node {gone[0]!r} is fused into a neighbour by onnxruntime's pre-processing "
                                  "(e.g. BatchNormalization into its Conv); keep the node it is fused into in fp32")
        return dst

    def _quantize(self, src: Path, out: Path, reader, excluded: list[str], big: bool) -> None:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        from graphprune.quant.calibration import CALIBRATION_METHODS
        extra = {"WeightSymmetric": self.symmetric_weights, "ActivationSymmetric": self.symmetric_activations}
        if self.percentile is not None:
            extra["CalibPercentile"] = self.percentile
        try:
            with _quiet():
                quantize_static(str(src), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=self.per_channel,
                                activation_type=QuantType.QInt8 if self.symmetric_activations else QuantType.QUInt8,
                                weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                                calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[self.calibration]),
                                use_external_data_format=big, extra_options=extra)
        except GraphpruneError:
            raise
        except Exception as exc:
            raise GraphpruneError(f"onnxruntime could not quantize the model: {_first(exc)}") from None


def _opset_at_least(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
    """`model` converted to ai.onnx opset `version` when it is older (onnx.version_converter).
    Why: onnxruntime's quantizer writes per-channel DequantizeLinear with an `axis`
    attribute whatever the model's opset, and below 13 onnxruntime rejects that model
    (PP-OCRv4's detector is opset 12, rembg's u2netp opset 11)."""
    have = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), version)
    if have >= version:
        return model
    from onnx import version_converter
    try:
        return version_converter.convert_version(model, version)
    except Exception as exc:
        raise GraphpruneError(f"the model's opset {have} is below {version}, which int8 QDQ needs, and ONNX's "
                              f"version converter failed: {_first(exc)}") from None


def _all_shapes_known(model: onnx.ModelProto) -> bool:
    """Whether ONNX shape inference gives every node output a shape (symbolic dims allowed)."""
    from graphprune.shapes import infer_shapes

    inferred = infer_shapes(model)
    known = {vi.name for vi in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)
             if vi.type.tensor_type.HasField("shape")}
    return all(o in known for n in model.graph.node for o in n.output if o)


def _save(model: onnx.ModelProto, path: Path, big: bool) -> Path:
    if big:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)   # save_model moves the weights out of the proto it is given
        onnx.save_model(copy, str(path), save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save_model(model, str(path))
    return path


def _drop_unused_domains(model: onnx.ModelProto) -> None:

    used = {""} | {n.domain for n in _all_nodes(model.graph)} | {f.domain for f in model.functions}
    for f in model.functions:
        used |= {n.domain for n in f.node}
    keep = [o for o in model.opset_import if o.domain in used or (o.domain == "ai.onnx" and "" in used)]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def _all_nodes(graph: onnx.GraphProto):
    for n in graph.node:
        yield n
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(a.g)
            for g in a.graphs:
                yield from _all_nodes(g)


@contextlib.contextmanager
def _quiet():
    """onnxruntime's quantizer prints and logs progress, and the sessions it opens warn about
    what its optimiser removes; commands print their own report."""
    import onnxruntime as ort

    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    ort.set_default_logger_severity(3)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)
        ort.set_default_logger_severity(2)


def _first(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__
