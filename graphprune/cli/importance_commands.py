"""`graphprune importance`: score every Conv channel and store the scores in the model's metadata.

    graphprune importance MODEL.onnx --data DATA -o SCORED.onnx --method lrp \\
        [--samples 256] [--batch-size 32] [--seed 0] [--per-class]

The scored model is the input model plus metadata (graphprune.importance, and
graphprune.importance.per_class with --per-class); `graphprune prune
--criterion metadata` then ranks channels by these scores.
"""
from __future__ import annotations

import sys

from graphprune.errors import GraphpruneError


def register(subparsers) -> None:
    # graphprune.importance (torch, captum) is imported by the handler only: building the parser must stay light
    p = subparsers.add_parser("importance", help="score conv channels (XAI or weight criteria) into metadata",
                              description=__doc__.splitlines()[0])
    p.add_argument("model", help="input .onnx model")
    p.add_argument("-o", "--output", required=True, help="output .onnx with the scores in its metadata")
    p.add_argument("--method", default="lrp",  # the names of importance.METHODS (tests/test_cli.py checks)
                   help="one of: l1, l2, bn, lrp, deeplift, ig, gradcam, conductance, taylor (default lrp)")
    p.add_argument("--data", help=".npz with x (N,C,H,W) and y (N,), or an image folder (one subfolder per class)")
    p.add_argument("--size", type=int, nargs="+", help="image folder: resize to H [W]")
    p.add_argument("--mean", help="image folder: per-channel mean, e.g. '0.485,0.456,0.406'")
    p.add_argument("--std", help="image folder: per-channel std")
    p.add_argument("--samples", type=int, default=256, help="random subset of the data (fixed seed; default 256)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-class", action="store_true", help="also store one score vector per class")
    p.add_argument("--n-steps", type=int, default=None, help="ig/conductance: integration steps")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_importance)


def run_importance(args) -> int:
    from graphprune.data import load_data
    from graphprune.importance import DATA_FREE, METHODS, compute_importance
    from graphprune.modelio import read_model, write_model

    method = args.method.lower()
    if method not in METHODS:
        raise GraphpruneError(f"unknown importance method {args.method!r}; choose from {', '.join(METHODS)}")
    if args.samples is not None and args.samples <= 0:
        raise GraphpruneError(f"--samples must be positive, got {args.samples}")
    if args.batch_size <= 0:
        raise GraphpruneError(f"--batch-size must be positive, got {args.batch_size}")
    model = read_model(args.model)
    data = None
    if method not in DATA_FREE:
        if not args.data:
            raise GraphpruneError(f"--method {method} needs --data")
        channels = _input_channels(model)
        size = None if not args.size else (args.size[0] if len(args.size) == 1 else tuple(args.size[:2]))
        data = load_data(args.data, size=size, mean=args.mean, std=args.std, channels=channels or 3)
    options = {"n_steps": args.n_steps} if args.n_steps and method in ("ig", "conductance") else {}
    imp = compute_importance(model, data, method, samples=args.samples, batch_size=args.batch_size,
                             seed=args.seed, per_class=args.per_class, progress=not args.quiet, **options)
    out = write_model(imp.to_model(model), args.output, source=args.model)
    print(f"{out}: {method} scores for {len(imp.scores)} conv layers"
          + (f" from {imp.samples} samples" if imp.samples else ""), file=sys.stderr)
    return 0


def _input_channels(model) -> int | None:
    """The model input's channel count when static (image folders are loaded as L or RGB to match)."""
    inits = {t.name for t in model.graph.initializer}
    for i in model.graph.input:
        if i.name not in inits:
            dims = i.type.tensor_type.shape.dim
            if len(dims) >= 2 and dims[1].HasField("dim_value"):
                return dims[1].dim_value
            return None
    return None
