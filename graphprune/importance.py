"""Per-channel importance of every Conv node, through one interface for all criteria.

    imp = compute_importance(model, data, "lrp", samples=256, batch_size=32, seed=0)
    scored = imp.to_model(onnx_model)   # scores in metadata, read by criterion="metadata"

Criteria
--------
data-free, computed from the ONNX weights (via the bridge, which resolves
Identity/Constant-node weights):
  l1, l2   L1 / L2 norm of each output filter.
  bn       |gamma| of the BatchNormalization that directly follows the Conv.
           Exporters usually fold BN into the conv (torch.onnx.export in EVAL
           mode does); for a Conv without a BN the score is the L2 norm of the
           (folded) filter, and those layers are listed in parameters["bn_fallback"].
data-driven (graphprune.importance_xai), relevance R at each Conv output:
  lrp          zennit EpsilonPlusFlat composite (z+ for convs, epsilon for dense,
               flat for the first layer, Norm at residual additions), BN merged
               into the preceding conv; R = activation x modified gradient,
               started at the true-label logit.
  taylor       first-order Taylor: R = activation x gradient of the true-label logit.
  deeplift, ig, gradcam, conductance   captum LayerDeepLift,
               LayerIntegratedGradients, LayerGradCam (per-channel, not
               summed), LayerConductance, zero baseline, target = true label.
               gradcam, deeplift and conductance score all convs from one
               pass per batch (conductance: per path point); ig needs one
               captum call per layer.

Aggregation and normalisation: score_c = mean over samples and spatial
positions of |R_c|, then divided by the layer's maximum score, so every layer's
scores lie in [0, 1] with its top channel at 1 (a layer whose scores are all 0
stays 0). Dividing by the max keeps scores comparable across layers for
global ranking while preserving the within-layer order, which is all that
uniform per-layer pruning uses.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
import torch.nn as nn

from graphprune import metadata as md
from graphprune.errors import GraphpruneError

DATA_FREE = ("l1", "l2", "bn")
DATA_DRIVEN = ("lrp", "deeplift", "ig", "gradcam", "conductance", "taylor")
METHODS = DATA_FREE + DATA_DRIVEN


@dataclass
class Importance:
    """Scores per Conv node name: (C,) arrays, and (classes, C) arrays when per-class."""
    method: str
    scores: dict[str, np.ndarray]
    per_class: dict[str, np.ndarray] | None = None
    parameters: dict = field(default_factory=dict)
    samples: int = 0
    data_hash: str | None = None

    def to_model(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """A copy of `model` with these scores (and per-class scores) in its metadata."""
        out = onnx.ModelProto()
        out.CopyFrom(model)
        md.write_importance(out, self.method, {k: v.tolist() for k, v in self.scores.items()},
                            parameters=self.parameters, samples=self.samples, data_hash=self.data_hash)
        md.set_json(out, md.PER_CLASS_KEY,
                    md.encode_per_class(self.method, self.per_class) if self.per_class is not None else None)
        return out


def read_per_class(model: onnx.ModelProto) -> dict[str, np.ndarray] | None:
    """Decode the per-class scores written by `Importance.to_model` (float32 arrays)."""
    entry = md.get_json(model, md.PER_CLASS_KEY)
    return None if entry is None else md.decode_per_class(entry)


def normalise(scores: np.ndarray) -> np.ndarray:
    """Divide by the maximum along the last axis (rows of zeros stay zero)."""
    s = np.asarray(scores, np.float64)
    m = s.max(axis=-1, keepdims=True)
    return np.where(m > 0, s / np.where(m > 0, m, 1.0), 0.0)


def conv_modules(net: nn.Module) -> dict[str, nn.Module]:
    """Conv layers to score, keyed by ONNX node name (bridge) or module name (plain nn.Module)."""
    if hasattr(net, "conv_nodes"):
        return {name: net.module_for_node(name) for name in net.conv_nodes()}
    return {name: m for name, m in net.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))}


def _conv_bn(net: nn.Module) -> dict[str, nn.Module]:
    if hasattr(net, "conv_bn_pairs"):
        return {c: net.module_for_node(b) for c, b in net.conv_bn_pairs()}
    out, last = {}, None  # plain module: a BN registered right after its conv
    for name, m in net.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and last is not None and \
                last[1].out_channels == m.num_features:
            out[last[0]] = m
        last = (name, m) if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) else None
    return out


def data_free_scores(net: nn.Module, method: str) -> tuple[dict[str, np.ndarray], dict]:
    """l1 / l2 / bn scores from the weights (before normalisation) and the parameters used."""
    convs, params = conv_modules(net), {}
    scores = {}
    bns = _conv_bn(net) if method == "bn" else {}
    fallback = []
    for name, conv in convs.items():
        w = conv.weight.detach().double().reshape(conv.weight.shape[0], -1)
        if method == "l1":
            s = w.abs().sum(1)
        elif method == "l2" or name not in bns:
            s = w.pow(2).sum(1).sqrt()
            if method == "bn":
                fallback.append(name)
        else:
            s = bns[name].weight.detach().double().abs()
        scores[name] = s.numpy()
    if method == "bn":
        params["bn_fallback"] = fallback
    return scores, params


def data_hash(x: np.ndarray, y: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(x).tobytes())
    h.update(np.ascontiguousarray(y).tobytes())
    return h.hexdigest()[:16]


def compute_importance(model, data=None, method: str = "lrp", samples: int | None = 256,
                       batch_size: int = 32, seed: int = 0, per_class: bool = False,
                       progress: bool = True, **options) -> Importance:
    """Score every Conv output channel of `model` (onnx.ModelProto, path, or nn.Module).

    `data` is a graphprune.data.Dataset or an (x, y) pair (ignored by l1/l2/bn).
    `options` go to the method (n_steps for ig/conductance, epsilon for lrp).
    """
    method = method.lower()
    if method not in METHODS:
        raise GraphpruneError(f"unknown importance method {method!r}; choose from {', '.join(METHODS)}")
    torch.manual_seed(seed)
    if isinstance(model, nn.Module):
        net = model
    else:
        from graphprune.bridge import to_torch
        net = to_torch(model)
    net.eval()
    if not conv_modules(net):
        raise GraphpruneError("the model has no Conv layer with constant weights to score")
    if method in DATA_FREE:
        raw, params = data_free_scores(net, method)
        return Importance(method, {k: normalise(v) for k, v in raw.items()}, None, params, 0, None)

    from graphprune.data import Dataset
    from graphprune.importance_xai import relevance_scores
    if data is None:
        raise GraphpruneError(f"method {method} needs --data")
    ds = data if isinstance(data, Dataset) else Dataset(np.asarray(data[0], np.float32),
                                                        np.asarray(data[1]).astype(np.int64))
    if len(ds) == 0:
        raise GraphpruneError("the data set is empty")
    ds = ds.subsample(samples, seed)
    raw, raw_pc, params = relevance_scores(net, ds, method, batch_size=batch_size, per_class=per_class,
                                           progress=progress, **options)
    pc = {k: normalise(v) for k, v in raw_pc.items()} if per_class else None
    return Importance(method, {k: normalise(v) for k, v in raw.items()}, pc,
                      {"batch_size": batch_size, "seed": seed, "normalisation": "layer max", **params},
                      len(ds), data_hash(ds.x, ds.y))
