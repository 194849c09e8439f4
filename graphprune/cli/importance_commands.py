"""`graphprune importance`: score every prunable layer's channels and store the scores in the model's metadata.

    graphprune importance MODEL.onnx --data DATA -o SCORED.onnx --method lrp \\
        [--samples 256] [--batch-size 32] [--seed 0] [--per-class]

The scored model is the input model plus metadata (graphprune.importance, and
graphprune.importance.per_class with --per-class), with its nodes named as the
scores are keyed (unnamed and duplicate-named nodes get graphprune.load's names);
`graphprune prune --criterion metadata` then ranks channels by these scores.
Every option is checked before the model is scored (one-line error, exit 2).
"""
from __future__ import annotations

import sys

from graphprune.cli.options import add_no_progress
from graphprune.errors import GraphpruneError

_IMAGE_OPTIONS = ("size", "mean", "std", "channel_order", "layout", "scale")
_PATH_METHODS = ("ig", "conductance")


def register(subparsers) -> None:
    # graphprune.importance.methods is a plain table (no torch): building the parser must stay light
    from graphprune.importance.methods import METHODS
    p = subparsers.add_parser("importance", help="score channels (XAI or weight criteria) into metadata",
                              description=__doc__.splitlines()[0])
    p.add_argument("model", help="input .onnx model")
    p.add_argument("-o", "--output", required=True, help="output .onnx with the scores in its metadata")
    p.add_argument("--method", default="lrp", help=f"one of: {', '.join(METHODS)} (default lrp)")
    p.add_argument("--data", help=".npz with x (N,...) and optionally y (N,) labels, or an image folder "
                                  "(one subfolder per class, or images without labels)")
    p.add_argument("--size", type=int, nargs="+", help="image folder: resize to H [W] (default: the model's "
                                                       "static input size)")
    p.add_argument("--mean", help="image folder: per-channel mean after --scale, e.g. '0.485,0.456,0.406'")
    p.add_argument("--std", help="image folder: per-channel std after --scale")
    p.add_argument("--scale", help="image folder: pixel scale applied first (default 1/255)")
    p.add_argument("--channel-order", choices=("rgb", "bgr"), help="image folder: channel order (default rgb)")
    p.add_argument("--layout", choices=("nchw", "nhwc"), help="image folder: tensor layout (default nchw)")
    p.add_argument("--samples", type=int, default=256, help="random subset of the data (fixed seed; default 256)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="seed of the subset (0 .. 2^32-1)")
    p.add_argument("--per-class", action="store_true", help="also store one score vector per class")
    p.add_argument("--n-steps", type=int, default=None, help="ig/conductance: integration steps (default 16)")
    add_no_progress(p)
    p.set_defaults(func=run_importance)


def run_importance(args) -> int:
    from graphprune.importance.checks import check_run_options
    from graphprune.importance.methods import DATA_FREE, METHODS, NEEDS_TARGET
    from graphprune.modelio import read_model, refuse_overwriting_input, write_model

    method = args.method.lower()
    if method not in METHODS:
        raise GraphpruneError(f"unknown importance method {args.method!r}; choose from {', '.join(METHODS)}")
    check_run_options(args.samples, args.batch_size, args.seed, args.n_steps)
    if args.n_steps is not None and method not in _PATH_METHODS:
        raise GraphpruneError(f"--n-steps applies to {' and '.join(_PATH_METHODS)} only, not {method}")
    if method not in DATA_FREE and not args.data:
        raise GraphpruneError(f"--method {method} needs --data")
    refuse_overwriting_input(args.output, args.model)
    model = read_model(args.model)
    data = _load(args, model) if method not in DATA_FREE else None

    from graphprune.importance import compute_importance
    options = {"n_steps": args.n_steps} if args.n_steps is not None else {}
    imp = compute_importance(model, data, method, samples=args.samples, batch_size=args.batch_size,
                             seed=args.seed, per_class=args.per_class, progress=not args.no_progress, **options)
    out = write_model(imp.to_model(model), args.output, source=args.model)
    if data is not None and data.y is None and method in NEEDS_TARGET:
        print("note: the data has no labels; each sample was attributed to the model's top-1 class", file=sys.stderr)
    print(f"{out}: {method} scores for {len(imp.scores)} layers"
          + (f" from {imp.samples} samples" if imp.samples else ""), file=sys.stderr)
    return 0


def _load(args, model):
    """The --data set, with the image options defaulted from (and checked against) the model input."""
    from graphprune.data import load_for_model
    _single_input(model)
    return load_for_model(args.data, model, **{o: getattr(args, o) for o in _IMAGE_OPTIONS}, samples=args.samples,
                          seed=args.seed, require_labels=False)


def _single_input(model) -> tuple[str, list[int | None]]:
    """(name, static dims or None) of the model's one input; scoring feeds one tensor."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise GraphpruneError(f"importance scores models with one input; this one has {len(inputs)} "
                              f"({', '.join(i.name for i in inputs)})")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    return inputs[0].name, dims
