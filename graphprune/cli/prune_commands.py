"""`graphprune analyze` and `graphprune prune`."""
from __future__ import annotations

import json
import sys

from graphprune.errors import GraphpruneError
from graphprune.shape_defaults import DEFAULT_DYNAMIC_DIM
from graphprune.cli.options import add_input_shape

_MEMBERS_SHOWN = 6


def register(sub) -> None:
    p = sub.add_parser("analyze", help="list the channel groups that must shrink together")
    p.add_argument("model", help="ONNX model")
    p.add_argument("--json", action="store_true", help="print a JSON list of groups")
    p.add_argument("--allow-inexact", action="store_true",
                   help="let groups through LayerNorm/Softmax over channels be pruned (not exact)")
    add_input_shape(p, "so shapes that depend on it are known to the analysis",
                    default="dynamic dims stay symbolic")
    p.set_defaults(func=analyze)

    p = sub.add_parser("prune", help="remove the lowest-ranked filters of every prunable group")
    p.add_argument("model", help="ONNX model")
    p.add_argument("-o", "--output", required=True, help="pruned ONNX model to write")
    p.add_argument("--ratio", type=float, required=True, help="fraction of each group's channels to remove, in [0, 1)")
    p.add_argument("--criterion", default="l1", choices=["l1", "l2", "bn", "metadata", "random"],
                   help="channel ranking (metadata: scores written by `graphprune importance`)")
    p.add_argument("--round-to", type=int, default=1, metavar="N", help="round kept channel counts to multiples of N")
    p.add_argument("--verify", action="store_true", help="prove the rewrite exact on random inputs")
    p.add_argument("--allow-inexact", action="store_true",
                   help="also prune channels pooled by LayerNorm/Softmax (reported as inexact)")
    p.add_argument("--seed", type=int, default=0, help="seed for --criterion random and --verify inputs")
    add_input_shape(p, "for the analysis, the onnxruntime check, counting and --verify",
                    default=f"the analysis keeps dynamic dims symbolic; the runs use batch 1, other "
                            f"dynamic dims {DEFAULT_DYNAMIC_DIM}")
    p.set_defaults(func=prune)


def analyze(args) -> int:
    import graphprune as gp
    from graphprune.inputs import parse_input_shapes

    shapes = parse_input_shapes(args.input_shape)
    model = gp.load(args.model)
    an = gp.analyse(model, allow_inexact=args.allow_inexact, input_shapes=shapes)
    if args.json:
        json.dump([g.to_json() for g in an.groups], sys.stdout, indent=1)
        print()
        return 0
    for g in an.groups:
        members = ", ".join(g.members[:_MEMBERS_SHOWN])
        if len(g.members) > _MEMBERS_SHOWN:
            members += f", +{len(g.members) - _MEMBERS_SHOWN} more"
        state = "prunable" if g.prunable else "frozen"
        unit = f" in {g.units} units" if g.units != g.channels else ""
        why = f" ({g.reason})" if g.reason else ""
        print(f"group {g.id}: {g.channels} channels{unit}, {state}{why}: {members}")
    n = sum(g.prunable for g in an.groups)
    print(f"{len(an.groups)} groups, {n} prunable")
    return 0


def prune(args) -> int:
    import graphprune as gp
    from graphprune.inputs import check_input_shapes, check_seed, parse_input_shapes
    from graphprune.modelio import refuse_overwriting_input

    check_seed(args.seed)
    if not (0.0 <= args.ratio < 1.0):
        raise GraphpruneError(f"--ratio must be in [0, 1), got {args.ratio}")
    if args.round_to < 1:
        raise GraphpruneError(f"--round-to must be a positive integer, got {args.round_to}")
    refuse_overwriting_input(args.output, args.model)
    shapes = parse_input_shapes(args.input_shape)
    model = gp.load(args.model)
    check_input_shapes(model, shapes)
    an = gp.analyse(model, allow_inexact=args.allow_inexact, input_shapes=shapes)
    plan = gp.choose(an, ratio=args.ratio, criterion=args.criterion, round_to=args.round_to, seed=args.seed)
    for note in plan.notes:
        print(f"note: {note}")
    # gp.prune runs the pruned model once in onnxruntime (at these shapes): a model that
    # does not run is an error, never written
    pruned = gp.prune(model, plan, input_shapes=shapes)
    before, after = gp.count(model, shapes), gp.count(pruned, shapes)
    print(f"MACs   {before.macs:,} -> {after.macs:,} ({after.macs / max(before.macs, 1):.3f}x)")
    print(f"params {before.params:,} -> {after.params:,} ({after.params / max(before.params, 1):.3f}x)")
    status = 0
    if args.verify:
        report = gp.verify(model, plan, pruned, seed=args.seed, input_shapes=shapes)
        print(f"verify: {report.summary()}")
        if not report.passed:
            print("graphprune: error: verification failed: the pruned model does not match", file=sys.stderr)
            status = 1
    if status == 0:
        gp.save(pruned, args.output, source=args.model)
        print(f"wrote {args.output}")
    return status
