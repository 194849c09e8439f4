"""`graphprune dynamic`: class-conditional dynamic filter pruning (DyFiP) into one ONNX model.

    graphprune dynamic MODEL.onnx --data DATA -o OUT.onnx [--branch-at auto|middle|NODE_OR_TENSOR] [--k 3]
        [--threshold 0.9] [--budget 0.5 | --latency-budget-ms MS | --latency-budget-fraction F]
        [--dispatch auto|gather|subsets] [--method taylor] [--samples 4000] [--epochs 1]

The output runs at batch 1 in any ONNX runtime: trunk, branch head, and an If that either
returns the branch's scores (early exit) or runs the rest with the filters of the branch's
top-k classes (one constant-weight copy per class subset, or weights gathered per input).
Labels are required (the branch is trained on them). Details: docs/dynamic.md.
"""
from __future__ import annotations

import sys

from graphprune.cli.options import add_no_progress
from graphprune.errors import GraphpruneError

_IMAGE_OPTIONS = ("size", "mean", "std", "channel_order", "layout", "scale")


def register(subparsers) -> None:
    p = subparsers.add_parser("dynamic", help="per-input (class-conditional) filter pruning with an early exit, "
                                              "as one ONNX model", description=__doc__.splitlines()[0])
    p.add_argument("model", help="input .onnx classifier (one input, one (N, classes) output)")
    p.add_argument("-o", "--output", required=True, help="the dynamic .onnx model to write")
    p.add_argument("--data", required=True, help="labelled training data: .npz with x and y, or an image folder "
                                                 "with one subfolder per class")
    p.add_argument("--branch-at", help="node or tensor name where the branch attaches; 'auto' (default): each "
                                       "conv stage's end tried and picked by accuracy and measured latency; "
                                       "'middle': the cut nearest the middle of the convs")
    p.add_argument("--branch-max-drop", type=float, default=0.01,
                   help="branch search: candidates whose proxy accuracy is within this of the original's compete "
                        "on latency (default 0.01 = 1 pp)")
    p.add_argument("--k", type=int, default=3, help="class subset size predicted by the branch (default 3)")
    p.add_argument("--threshold", type=float, default=0.9,
                   help="exit early when the branch's max softmax is >= this (default 0.9; > 1: never)")
    p.add_argument("--budget", type=float, default=None,
                   help="fraction of filters kept in each gated layer on the subset path (default 0.5)")
    p.add_argument("--latency-budget-ms", type=float, default=None,
                   help="instead of --budget: the largest budget whose measured longest path is <= this many ms")
    p.add_argument("--latency-budget-fraction", type=float, default=None,
                   help="instead of --budget: the longest path <= this fraction of the original's measured latency")
    p.add_argument("--latency-repeats", type=int, default=30, help="runs per latency measurement (bench's median; "
                                                                 "default 30)")
    p.add_argument("--dispatch", default="auto", choices=("auto", "gather", "subsets"),
                   help="gated path: 'subsets' = one constant-weight copy of the gated layers per class subset "
                        "(fast, large), 'gather' = weights gathered per input (small, slower); 'auto' (default): "
                        "subsets when they fit --max-subset-mib")
    p.add_argument("--max-subset-mib", type=float, default=256.0, help="size limit of the subsets' weights "
                                                                       "(default 256)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads of the latency measurements "
                                                             "(default: bench's)")
    p.add_argument("--head-grid", type=int, default=1, help="the branch head pools the map to G x G cells before its "
                                                            "linear layer (default 1: global average pooling)")
    p.add_argument("--method", default="taylor", help="XAI method of the per-class importance (default taylor)")
    p.add_argument("--samples", type=int, default=4000, help="training subset for the head and fine-tuning "
                                                             "(fixed seed; default 4000)")
    p.add_argument("--importance-samples", type=int, default=256, help="samples scored for importance (default 256)")
    p.add_argument("--epochs", type=float, default=1.0, help="fine-tuning epochs of the gated layers (default 1; "
                                                             "0: none)")
    p.add_argument("--lr", type=float, default=3e-4, help="fine-tuning learning rate (Adam; default 3e-4)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    for opt in ("size", "mean", "std", "scale"):
        p.add_argument(f"--{opt}", nargs="+" if opt == "size" else None, type=int if opt == "size" else str,
                       help=f"image folder: as in `graphprune importance` ({opt})")
    p.add_argument("--channel-order", choices=("rgb", "bgr"), help="image folder: channel order")
    p.add_argument("--layout", choices=("nchw", "nhwc"), help="image folder: tensor layout")
    add_no_progress(p)
    p.set_defaults(func=run_dynamic)


def run_dynamic(args) -> int:
    from graphprune.dynamic.build import DynamicOptions, check_options
    from graphprune.importance.checks import check_run_options
    from graphprune.modelio import read_model, refuse_overwriting_input, write_model

    if args.budget is not None and (args.latency_budget_ms is not None or args.latency_budget_fraction is not None):
        raise GraphpruneError("--budget and a latency budget exclude each other: the latency target sets the budget")
    o = DynamicOptions(branch_at=args.branch_at, k=args.k, threshold=args.threshold,
                       budget=0.5 if args.budget is None else args.budget,
                       method=args.method.lower(), samples=args.samples, importance_samples=args.importance_samples,
                       epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                       head_grid=args.head_grid, progress=not args.no_progress, branch_max_drop=args.branch_max_drop,
                       latency_budget_ms=args.latency_budget_ms, latency_budget_fraction=args.latency_budget_fraction,
                       latency_repeats=args.latency_repeats, threads=args.threads, dispatch=args.dispatch,
                       max_subset_mib=args.max_subset_mib)
    check_options(o)
    check_run_options(args.samples, args.batch_size, args.seed, None)
    refuse_overwriting_input(args.output, args.model)
    model = read_model(args.model)
    from graphprune.data import load_for_model
    data = load_for_model(args.data, model, **{k: getattr(args, k) for k in _IMAGE_OPTIONS}, seed=args.seed,
                          require_labels=False)
    if data.y is None:
        raise GraphpruneError(f"--data {args.data}: labels y are needed (the branch is trained on them)")
    if isinstance(data.x, dict):
        raise GraphpruneError("dynamic pruning takes models with one input")

    from graphprune.dynamic.build import build_dynamic
    from graphprune.dynamic.measure import accuracy_and_exits
    result = build_dynamic(model, data, o)   # progress lines on stderr unless --no-progress
    out = write_model(result.model, args.output, source=args.model)
    _report_plan(result)
    acc, exits = accuracy_and_exits(result.model, data.subsample(1000, args.seed + 1))
    g = result.split.gates
    print(f"{out}: branch at {result.split.branch}, k={o.k}, threshold={o.threshold}; {len(g)} gated convs "
          f"({', '.join(f'{x.keep}/{x.channels}' for x in g)} filters kept per input)")
    print(f"on {min(1000, len(data))} of the training samples (onnxruntime, batch 1): accuracy {acc:.4f}, "
          f"early exits {exits:.1%}", file=sys.stderr)
    return 0


def _report_plan(result) -> None:
    """The branch search's candidates table and the latency target's verdict (stdout)."""
    from graphprune.dynamic.branch_search import table
    from graphprune.dynamic.plan import latency_line
    if result.branch_search:
        print(table(result.branch_search))
    if result.latency:
        print(latency_line(result.latency))
    from graphprune import metadata as md
    from graphprune.dynamic.export import METADATA_KEY
    d = (md.get_json(result.model, METADATA_KEY) or {}).get("dispatch") or {"form": "gather"}
    print(f"gated path: {d['form']}" + (f" ({d['subsets']} class subsets, {d['bytes_per_subset'] / 2**20:.2f} MiB "
                                        "of weights each)" if d["form"] == "subsets" else "")
          + (f" ({d['why']})" if d.get("why") else ""))
