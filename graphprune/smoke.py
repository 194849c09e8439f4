"""The run check of every prune: onnxruntime must load the pruned model and run it once.

Why: the ONNX checker accepts models onnxruntime refuses (a kernel with no implementation
for a type, a Reshape whose computed target no longer fits), and a pruned model that does
not run is the worst result we could report as success. One run on random inputs is cheap
next to the rewrite; it proves the model runs and keeps the original's output shapes, not
that its numbers are right (that is `verify`'s job). The original is run first, once per
model and input shapes, when inference cannot tell its output shapes or when the pruned
model fails, so a model onnxruntime cannot run at all is reported as such rather than
blamed on pruning.
"""
from __future__ import annotations

from collections import OrderedDict

import onnx

from graphprune.errors import GraphpruneError
from graphprune.inputs import check_run_memory, concrete_shapes, input_shape_text, random_feeds
from graphprune.runtime import session
from graphprune.shapes import static_output_shapes

# (id(model), shapes) -> (model, output shapes): run by onnxruntime / inferred
_ORIGINALS: OrderedDict = OrderedDict()
_EXPECTED: OrderedDict = OrderedDict()
_CACHED = 8


def output_shapes(model: onnx.ModelProto, shapes: dict[str, list[int]], what: str) -> list[tuple]:
    """Run `model` once on seeded random inputs; its output shapes, or a one-line error
    naming `what` and onnxruntime's message (which names the failing node)."""
    try:
        sess = session(model, quick=True)
        outs = sess.run(None, random_feeds(model, shapes, seed=0))
    except GraphpruneError as exc:
        raise GraphpruneError(f"{what}: {exc}") from None
    except Exception as exc:
        raise GraphpruneError(f"{what}: onnxruntime failed to run it: {_first_line(exc)}") from None
    return [tuple(getattr(o, "shape", ())) for o in outs]


def _memo(cache: OrderedDict, model: onnx.ModelProto, shapes: dict, compute):
    """compute() once per (model, shapes) of the last _CACHED (the search prunes one model many
    times); the model is held so its id stays unique."""
    key = (id(model), repr(sorted(shapes.items())))
    if key in cache:
        cache.move_to_end(key)
        return cache[key][1]
    result = compute()
    cache[key] = (model, result)
    while len(cache) > _CACHED:
        cache.popitem(last=False)
    return result


def original_output_shapes(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None) -> list[tuple]:
    """The unpruned model's output shapes, from one onnxruntime run (memoised)."""
    shapes = concrete_shapes(model, input_shapes)

    def run() -> list[tuple]:
        check_run_memory(model, shapes)
        return output_shapes(model, shapes, f"onnxruntime cannot run the input model at {input_shape_text(shapes)} "
                                            "(before pruning; give its real input shape with --input-shape), so "
                                            "its pruned form cannot be checked")
    return _memo(_ORIGINALS, model, shapes, run)


def _expected_output_shapes(original: onnx.ModelProto, concrete: dict) -> list[tuple] | None:
    """The original's output shapes by inference, after the memory bound (memoised: both are
    shape inference over the whole graph, the same for every candidate of a search)."""
    def infer():
        check_run_memory(original, concrete)
        return static_output_shapes(original, concrete)
    return _memo(_EXPECTED, original, concrete, infer)


def check_pruned_runs(original: onnx.ModelProto, pruned: onnx.ModelProto,
                      input_shapes: dict[str, list[int]] | None, exact: bool = True) -> None:
    """Raise unless onnxruntime runs `pruned` with the output shapes of `original`.

    An inexact plan changes output values, so a data-dependent output size (detections
    after NMS) may change too: then only ranks and the dims the model declares are compared."""
    concrete = concrete_shapes(original, input_shapes)
    expected = _expected_output_shapes(original, concrete)  # resolved by inference: no need to run it
    if expected is None:
        expected = original_output_shapes(original, input_shapes)
    try:
        got = output_shapes(pruned, concrete, "the pruned model does not run in onnxruntime")
    except GraphpruneError:
        original_output_shapes(original, input_shapes)  # blame the input model if it cannot run either
        raise
    if not exact and len(got) == len(expected):
        declared = [[d.dim_value if d.HasField("dim_value") else None for d in o.type.tensor_type.shape.dim]
                    for o in original.graph.output]
        got = [tuple(g if i < len(d) and d[i] is not None else None for i, g in enumerate(s))
               for s, d in zip(got, declared)]
        expected = [tuple(g if i < len(d) and d[i] is not None else None for i, g in enumerate(s))
                    for s, d in zip(expected, declared)]
    if got != expected:
        raise GraphpruneError(f"the pruned model's output shapes {got} differ from the original's {expected}")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:400]
