"""`graphprune targets`, `graphprune compile`, `graphprune bench`: latency on real targets;
`graphprune device-server`: the RPC server a board runs so that bench/optimize can time the
board's own onnxruntime through the tracker."""
from __future__ import annotations

import argparse
import json

from graphprune.cli.options import add_input_shape, add_no_progress


def _targets_file_arg(p):
    p.add_argument("--targets-file", metavar="JSON", help="extra targets file (same shape as targets/builtin.json)")


def _tuning_args(p, trials_help: str) -> None:
    p.add_argument("--tune-trials", type=int, default=0, metavar="N", help=trials_help)
    p.add_argument("--tune-time", metavar="DURATION",
                   help="time budget for tuning the base, e.g. 90s, 20m, 1h (with --tune-trials: whichever "
                        "ends first; alone: tune until it is up). No round starts after it; the heaviest "
                        "tasks are tuned first")
    add_no_progress(p)


def register(sub) -> None:
    p = sub.add_parser("targets", help="list the known latency targets")
    _targets_file_arg(p)
    p.add_argument("--json", action="store_true", help="print the target table as JSON")
    p.set_defaults(func=_targets)

    p = sub.add_parser("compile", help="compile an ONNX model with TVM into a deployable library")
    p.add_argument("model")
    p.add_argument("--target", default="x86")
    p.add_argument("-o", "--output", required=True, metavar="LIB.so")
    _tuning_args(p, "MetaSchedule trials for the base model (0 = untuned); variants replay it")
    p.add_argument("--rpc-tracker", metavar="HOST:PORT",
                   help="tune on the devices registered at this tracker (needed for targets this host cannot run)")
    p.add_argument("--rpc-key", metavar="KEY", help="device key at the tracker (default: the target's rpc_key)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per tuning candidate on a device")
    add_input_shape(p, "the static shape the library is compiled for and accepts")
    _targets_file_arg(p)
    p.set_defaults(func=_compile)

    p = sub.add_parser("bench", help="measure the inference latency of an ONNX model")
    p.add_argument("model")
    p.add_argument("--target", default="x86")
    p.add_argument("--backend", choices=["ort", "tvm"], default=None,
                   help="default: ort on this host; tvm with --rpc-tracker or a target this host cannot run. "
                        "ort with --rpc-tracker times the device's own onnxruntime (boards running "
                        "`graphprune device-server`)")
    p.add_argument("--rpc-tracker", metavar="HOST:PORT")
    p.add_argument("--rpc-key", metavar="KEY", help="device key at the tracker (default: the target's rpc_key)")
    _tuning_args(p, "MetaSchedule trials for the base model (0 = untuned); with --rpc-tracker the "
                    "candidates are timed on the devices under the key")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--threads", type=int, default=None,
                   help="onnxruntime intra-op threads (default: the cores available to this process, or "
                        "to the device-server with --rpc-tracker; at most 4x that)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per RPC attempt (and per tuning candidate)")
    p.add_argument("--no-cache", action="store_true", help="measure again even if a cached result exists")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_input_shape(p, "the shape timed")
    _targets_file_arg(p)
    p.set_defaults(func=_bench)

    p = sub.add_parser("device-server", help="run on a board: a TVM RPC server that also times ONNX models "
                                             "with the board's onnxruntime (bench/optimize --backend ort --rpc-tracker)")
    from graphprune.targets.device_server import add_arguments  # stdlib-only at import time
    add_arguments(p)
    p.set_defaults(func=_device_server)


def _targets(args: argparse.Namespace) -> int:
    from graphprune.targets import list_targets
    targets = list_targets([args.targets_file] if args.targets_file else None)
    if args.json:
        print(json.dumps({t.name: t.to_json() for t in targets}, indent=2))
        return 0
    print(f"{'name':<12} {'tvm target':<62} {'cc':<22} {'rpc key':<10} step power_w")
    for t in targets:
        tvm = json.dumps(t.tvm, separators=(",", ":"))
        print(f"{t.name:<12} {tvm:<62} {t.cc or '(host)':<22} {t.rpc_key or '-':<10} {t.channel_step:<4} "
              f"{t.power_w if t.power_w is not None else '-'}")
    return 0


def _check_numbers(args: argparse.Namespace) -> None:
    """Options that would silently do nothing useful (or hang) are refused up front."""
    import math
    from graphprune.errors import GraphpruneError
    if args.tune_trials < 0:
        raise GraphpruneError("--tune-trials must be >= 0")
    if args.tune_time is not None:
        from graphprune.targets.tuning.budget import parse_tune_time
        args.tune_time = parse_tune_time(args.tune_time, "--tune-time")
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise GraphpruneError(f"--timeout must be a positive number of seconds (got {args.timeout:g})")
    if getattr(args, "repeats", 1) < 1:
        raise GraphpruneError(f"--repeats must be >= 1 (got {args.repeats})")
    if getattr(args, "threads", None) is not None and args.threads < 1:
        raise GraphpruneError(f"--threads must be a positive integer (got {args.threads})")
    if getattr(args, "threads", None) is not None and not args.rpc_tracker:  # a device checks its own cores
        from graphprune.targets.measure_local import check_threads
        try:
            check_threads(args.threads)
        except GraphpruneError as exc:
            raise GraphpruneError(f"--{exc}") from None


def _compile(args: argparse.Namespace) -> int:
    from graphprune.modelio import refuse_overwriting_input
    refuse_overwriting_input(args.output, args.model)  # before anything: the .so must never replace the model
    from graphprune.errors import GraphpruneError
    from graphprune.inputs import parse_input_shapes
    from graphprune.targets import compile_model, get_target
    _check_numbers(args)
    shapes = parse_input_shapes(args.input_shape)
    get_target(args.target, [args.targets_file] if args.targets_file else None)  # fail before reading the model
    if args.rpc_tracker:
        from graphprune.targets.measure_rpc import parse_address
        parse_address(args.rpc_tracker)
        if args.tune_trials == 0 and args.tune_time is None:
            raise GraphpruneError("--rpc-tracker is for tuning on devices: give --tune-trials N "
                                  "(or --tune-time) as well")
    c = compile_model(args.model, args.target, tune_trials=args.tune_trials, output=args.output,
                      targets_file=args.targets_file, rpc_tracker=args.rpc_tracker, rpc_key=args.rpc_key,
                      timeout=args.timeout, input_shapes=shapes, tune_time=args.tune_time,
                      progress=not args.no_progress)
    print(f"wrote {args.output} (target {c.target.name}, {c.tuning}; {c.shape_note()})")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from graphprune.errors import GraphpruneError
    from graphprune.inputs import parse_input_shapes
    from graphprune.targets import get_target, measure_latency
    _check_numbers(args)
    shapes = parse_input_shapes(args.input_shape)
    tgt = get_target(args.target, [args.targets_file] if args.targets_file else None)
    if args.backend is None:
        args.backend = "tvm" if args.rpc_tracker or not tgt.runs_on_host else "ort"
    if args.threads is not None and args.backend != "ort":
        raise GraphpruneError("--threads sets onnxruntime's threads; the TVM runtime's pool is set by "
                              "TVM_NUM_THREADS (on the device, for RPC)")
    if args.rpc_tracker:
        from graphprune.targets.measure_rpc import parse_address
        parse_address(args.rpc_tracker)
    r = measure_latency(args.model, target=args.target, backend=args.backend, rpc_tracker=args.rpc_tracker,
                        rpc_key=args.rpc_key, tune_trials=args.tune_trials, repeats=args.repeats,
                        threads=args.threads, cache=not args.no_cache, timeout=args.timeout,
                        targets_file=args.targets_file, input_shapes=shapes, tune_time=args.tune_time,
                        progress=not args.no_progress)
    print(json.dumps(r.to_dict()) if args.json else r.summary())
    return 0


def _device_server(args: argparse.Namespace) -> int:
    from graphprune.errors import GraphpruneError
    from graphprune.targets.device_server import DeviceServerError, run_from_args
    try:
        run_from_args(args)
    except DeviceServerError as exc:
        raise GraphpruneError(str(exc)) from None
    return 0
