"""Export the torchvision model zoo to ONNX, with both PyTorch exporters.

Why: graphprune must handle the graphs real users hand it, and the two
exporters produce quite different graphs for the same network (TorchScript:
opset 17, Conv+BN folded, Flatten/Gemm heads; dynamo: newest opset, onnxscript
rewrites, MatMul+Add heads, different shape-computation subgraphs). This zoo is
the input of tools/coverage.py and tools/bench_prune_speed.py.

Runs in .venv-torchvision (tools/setup_torchvision_venv.sh), because the
torchvision wheel cannot import beside the main venv's torch.

Weights are random (weights=None, torch.manual_seed(0)): nothing is downloaded,
and the export is reproducible; all-zero initialised Linear/Conv weights
(vit_b_16's head) are redrawn so outputs are not constant. Models are in eval
mode, batch axis dynamic.
Output: .cache/models/torchvision/{name}.{ts|dynamo}.onnx (existing files are
skipped; files are written to a temporary name first, so an interrupted export
never leaves a half file that would be skipped next time). Failures are kept in
.cache/models/torchvision/export_failures.json as {"name.exporter": reason};
an entry disappears once that export succeeds.

Usage:
  .venv-torchvision/bin/python tools/export_torchvision.py [--models a,b] [--exporter ts|dynamo|both]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
import torchvision.models as tvm

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / ".cache" / "models" / "torchvision"
FAILURES = OUT / "export_failures.json"

# name -> (constructor kwargs beyond weights=None, input H=W)
MODELS: dict[str, tuple[dict, int]] = {
    "alexnet": ({}, 224),
    "vgg11_bn": ({}, 224),
    "vgg16": ({}, 224),
    "resnet18": ({}, 224),
    "resnet50": ({}, 224),
    "resnext50_32x4d": ({}, 224),
    "wide_resnet50_2": ({}, 224),
    "densenet121": ({}, 224),
    "mobilenet_v2": ({}, 224),
    "mobilenet_v3_small": ({}, 224),
    "mobilenet_v3_large": ({}, 224),
    "efficientnet_b0": ({}, 224),
    "efficientnet_v2_s": ({}, 224),
    "regnet_x_400mf": ({}, 224),
    "regnet_y_400mf": ({}, 224),
    "shufflenet_v2_x1_0": ({}, 224),
    "squeezenet1_0": ({}, 224),
    "googlenet": ({"aux_logits": False, "init_weights": True}, 224),
    "inception_v3": ({"aux_logits": False, "init_weights": True}, 299),
    "mnasnet1_0": ({}, 224),
    "convnext_tiny": ({}, 224),
    "vit_b_16": ({}, 224),
    "swin_t": ({}, 224),
}


def build(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    kwargs, hw = MODELS[name]
    torch.manual_seed(0)
    model = getattr(tvm, name)(weights=None, **kwargs).eval()
    # Some models zero-initialise a layer (vit_b_16's classifier head), which makes
    # every output 0 and any check comparing outputs (gp.verify) vacuous: redraw those.
    for mod in model.modules():
        if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)) and not mod.weight.any():
            torch.nn.init.normal_(mod.weight, std=0.01)
    # batch 2, not 1: torch.export specialises a dynamic dim whose example is 1.
    return model, torch.randn(2, 3, hw, hw)


def export_ts(model: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    torch.onnx.export(
        model, (x,), str(path), dynamo=False, opset_version=17,
        input_names=["input"], output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
    )


def export_dynamo(model: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    batch = torch.export.Dim("batch")
    torch.onnx.export(
        model, (x,), str(path), dynamo=True, external_data=False,
        input_names=["input"], output_names=["output"],
        dynamic_shapes=({0: batch},),
    )


EXPORTERS = {"ts": export_ts, "dynamo": export_dynamo}


def one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg[:400]}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated names")
    ap.add_argument("--exporter", choices=["ts", "dynamo", "both"], default="both")
    args = ap.parse_args(argv)

    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown models {unknown}; known: {', '.join(MODELS)}")
    exporters = ["ts", "dynamo"] if args.exporter == "both" else [args.exporter]

    OUT.mkdir(parents=True, exist_ok=True)
    failures = json.loads(FAILURES.read_text()) if FAILURES.exists() else {}
    warnings.filterwarnings("ignore")
    # nn.MultiheadAttention's eval fast path emits aten::_native_multi_head_attention,
    # which the TorchScript exporter cannot translate (vit_b_16); the slow path is
    # the same math in exportable ops.
    torch.backends.mha.set_fastpath_enabled(False)
    n_fail = 0
    for name in names:
        for exp in exporters:
            path = OUT / f"{name}.{exp}.onnx"
            key = f"{name}.{exp}"
            if path.exists():
                print(f"skip  {key} (exists)", flush=True)
                continue
            tmp = path.with_name(path.name + ".tmp")
            t0 = time.perf_counter()
            try:
                model, x = build(name)
                with torch.no_grad():
                    EXPORTERS[exp](model, x, tmp)
                os.replace(tmp, path)
                failures.pop(key, None)
                print(f"ok    {key} {time.perf_counter() - t0:.1f}s "
                      f"{path.stat().st_size / 2**20:.1f} MiB", flush=True)
            except Exception as exc:  # record and go on: one model must not stop the zoo
                n_fail += 1
                failures[key] = one_line(exc)
                print(f"FAIL  {key} {failures[key]}", flush=True)
                traceback.print_exc(file=sys.stderr)
                tmp.unlink(missing_ok=True)
            FAILURES.write_text(json.dumps(failures, indent=1, sort_keys=True) + "\n")
    print(f"done: {n_fail} failures this run; {len(failures)} recorded in {FAILURES}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
