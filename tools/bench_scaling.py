#!/usr/bin/env python
"""Search wall time against evaluation workers and timing devices (docs/scaling.md).

Runs the same bounded `optimize` (Fashion-MNIST ResNet example, --budget, one seed, fresh
latency cache each run so nothing is answered from another run) in these layouts:

    workers-1      this host, serial evaluation, latency timed here (onnxruntime, 1 thread)
    workers-2      this host, a 2-process pool
    cluster-1/2    a local Dask scheduler + 1 or 2 worker processes (1 thread each), --cluster
    devices-1/2    latency timed by 1 or 2 `graphprune device-server`s under one tracker key
                   (onnxruntime over RPC), evaluation serial here

and prints a markdown table: wall seconds of run_optimize (cluster and device start-up not
included), configurations measured, seconds per measured configuration, seconds per
configuration spent timing it (driver's clock, from the journal; on a farm these overlap),
the batch.

    .venv/bin/python tools/make_demo_data.py -o out/demo_data
    nice -n 5 .venv/bin/python tools/bench_scaling.py --data out/demo_data/val.npz --budget 24
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LAYOUTS = ("workers-1", "workers-2", "cluster-1", "cluster-2", "devices-1", "devices-2")


def one_run(layout: str, args, tmp: Path) -> dict:
    from graphprune.search.cluster.local import LocalDaskCluster
    from graphprune.search.optimize import OptimizeOptions, run_optimize
    from graphprune.targets.localrpc import LocalRPCCluster
    os.environ["GRAPHPRUNE_CACHE"] = str(tmp / f"cache-{layout}")
    kind, n = layout.split("-")
    n = int(n)
    kw = dict(model=args.model, data=args.data, outdir=str(tmp / layout), budget=args.budget, seed=args.seed,
              repeats=args.repeats, threads=1, progress=False, max_error_increase=0.02, samples=args.samples)
    ctx = None
    if kind == "workers":
        kw["workers"] = n
    elif kind == "cluster":
        ctx = LocalDaskCluster(n_workers=n, threads=1).start()
        kw["cluster"] = ctx.address
    else:
        ctx = LocalRPCCluster(key="scaling", n_servers=n, device_server=True).start()
        kw.update(backend="ort", rpc_tracker=ctx.address, rpc_key="scaling")
    try:
        t0 = time.monotonic()
        s = run_optimize(OptimizeOptions(**kw), log=lambda m: None)
        wall = time.monotonic() - t0
    finally:
        if ctx is not None:
            ctx.stop()
    lines = (tmp / layout / "journal.jsonl").read_text().splitlines()
    head, recs = json.loads(lines[0]), [json.loads(ln) for ln in lines[1:]]
    recs = [r for r in recs if r.get("type") == "measured"]
    timing = sum(r["latency_finished"] - r["latency_started"] for r in recs)   # summed, overlapping on a farm
    return {"layout": layout, "wall_s": round(wall, 1), "measured": len(recs),
            "s_per_config": round(wall / len(recs), 3), "timing_s_per_config": round(timing / len(recs), 3),
            "batch": head.get("batch", head["workers"]), "front": len(s["front"]), "load_avg": os.getloadavg()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="examples/fashion_mnist_resnet.onnx")
    ap.add_argument("--data", required=True)
    ap.add_argument("--budget", type=int, default=24)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layouts", default=",".join(LAYOUTS))
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="graphprune-scaling-") as tmp:
        for layout in args.layouts.split(","):
            rows.append(one_run(layout, args, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    print("\n| layout | batch | wall s | measured | s / measured | timing s / measured | front | "
          "load avg (1, 5, 15 min) at end |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layout']} | {r['batch']} | {r['wall_s']} | {r['measured']} | {r['s_per_config']} | "
              f"{r['timing_s_per_config']} | {r['front']} | "
              + ", ".join(f"{v:.2f}" for v in r["load_avg"]) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
