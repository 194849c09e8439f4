"""Per-channel importance of every prunable producer, through one interface for all criteria.

    imp = compute_importance(model, data, "lrp", samples=256, batch_size=32, seed=0)
    scored = imp.to_model(onnx_model)   # scores in metadata, read by criterion="metadata"

What is scored: every Conv / ConvTranspose filter and every output feature of a Gemm
or constant-weight MatMul (graphprune.importance.data_free), keyed by node name.

Node names: an ONNX model is scored in its normalised form (graphprune.load), which
gives every node a unique name; the scores are keyed by those names. Exported models
often have no node names (or duplicates), so `to_model` names the nodes of the
written copy the same way: otherwise no tool could attach the scores to the nodes.

Criteria
--------
data-free, computed from the ONNX weights (via the bridge):
  l1, l2   L1 / L2 norm of each output filter.
  bn       |gamma| of the BatchNormalization that directly follows the Conv.
           Exporters usually fold BN into the conv (torch.onnx.export in EVAL
           mode does); for any other layer the score is the L2 norm of the
           (folded) filter, and those layers are listed in parameters["bn_fallback"].
data-driven (graphprune.importance.xai), relevance R at each layer's output:
  lrp          zennit EpsilonPlusFlat composite (z+ for convs, epsilon for dense,
               flat for the first layer, Norm at residual additions), BN merged
               into the preceding conv; R = activation x modified gradient,
               started at the target logit.
  taylor       first-order Taylor: R = activation x gradient of the target logit.
  deeplift, ig, gradcam, conductance   captum LayerDeepLift,
               LayerIntegratedGradients, LayerGradCam (per-channel, not
               summed), LayerConductance, zero baseline.
  The target is the true label, or without labels the model's top-1 class.

Aggregation and normalisation: score_c = mean over samples and positions of
|R_c|, then divided by the layer's maximum score, so every layer's scores lie in
[0, 1] with its top channel at 1 (a layer whose scores are all 0 stays 0).
Dividing by the max keeps scores comparable across layers for global ranking
while preserving the within-layer order, which is all that uniform per-layer
pruning uses.
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
from graphprune.importance.checks import check_finite_weights, check_run_options
from graphprune.importance.data_free import data_free_scores, producer_modules
from graphprune.importance.methods import ACTIVATION, DATA_FREE, METHODS
from graphprune.importance.naming import name_like_normalised


@dataclass
class Importance:
    """Scores per node name: (C,) arrays, and (classes, C) arrays when per-class.

    `node_names` maps each node's first output to its name in the scored
    (normalised) model; `to_model` gives the written copy these names.
    """
    method: str
    scores: dict[str, np.ndarray]
    per_class: dict[str, np.ndarray] | None = None
    parameters: dict = field(default_factory=dict)
    samples: int = 0
    data_hash: str | None = None
    node_names: dict[str, str] | None = field(default=None, repr=False)

    def to_model(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """A copy of `model` with these scores (and per-class scores) in its metadata, its nodes
        named as the scores are keyed (unnamed and duplicate-named nodes get the names
        graphprune.load gives them; named nodes keep their names)."""
        out = onnx.ModelProto()
        out.CopyFrom(model)
        if self.node_names is not None:
            name_like_normalised(out, self.node_names, self.scores)
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


def data_hash(x: np.ndarray, y: np.ndarray | None) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(x).tobytes())
    if y is not None:
        h.update(np.ascontiguousarray(y).tobytes())
    return h.hexdigest()[:16]


def _bridged(model) -> tuple[nn.Module, dict[str, str] | None]:
    """(module to score, {first output: node name} of the normalised model, or None for an nn.Module)."""
    if isinstance(model, nn.Module):
        check_finite_weights(model)
        return model, None
    import graphprune as gp
    from graphprune.bridge import to_torch
    normalised = gp.load(model)  # unique node names: the keys of the scores
    check_finite_weights(normalised)
    names = {n.output[0]: n.name for n in normalised.graph.node if n.output}
    return to_torch(normalised), names


def _energy(model, ds, names, per_class: bool, batch_size: int, seed: int) -> Importance:
    """`energy` (graphprune.importance.energy): onnxruntime on the normalised ONNX model, no class."""
    if per_class:
        raise GraphpruneError("--per-class needs an XAI method (energy attributes to no class)")
    if names is None:
        raise GraphpruneError("method energy scores ONNX models (it runs them in onnxruntime)")
    import graphprune as gp
    from graphprune.importance.energy import energy_scores
    raw, params = energy_scores(gp.load(model), ds.x)
    return Importance("energy", {k: normalise(v) for k, v in raw.items()}, None,
                      {"seed": seed, "normalisation": "layer max", **params}, len(ds), data_hash(ds.x, ds.y), names)


def compute_importance(model, data=None, method: str = "lrp", samples: int | None = 256,
                       batch_size: int = 32, seed: int = 0, per_class: bool = False,
                       progress: bool = True, **options) -> Importance:
    """Score every producer's output channels of `model` (onnx.ModelProto, path, or nn.Module).

    `data` is a graphprune.data.Dataset or an (x, y) pair, y may be None (ignored
    by l1/l2/bn). `options` go to the method (n_steps for ig/conductance, epsilon
    for lrp, layers to restrict scoring).
    """
    method = str(method).lower()
    if method not in METHODS:
        raise GraphpruneError(f"unknown importance method {method!r}; choose from {', '.join(METHODS)}")
    check_run_options(samples, batch_size, seed, options.get("n_steps"))
    ds = None
    if method not in DATA_FREE:
        from graphprune.data import as_dataset
        if data is None:
            raise GraphpruneError(f"method {method} needs --data")
        ds = as_dataset(data)
    torch.manual_seed(seed)
    net, names = _bridged(model)
    net.eval()
    if not producer_modules(net):
        raise GraphpruneError("the model has no Conv, Gemm or MatMul layer with constant weights to score")
    if method in DATA_FREE:
        raw, params = data_free_scores(net, method)
        return Importance(method, {k: normalise(v) for k, v in raw.items()}, None, params, 0, None, names)

    ds = ds.subsample(samples, seed)
    if method in ACTIVATION:
        return _energy(model, ds, names, per_class, batch_size, seed)
    from graphprune.importance.xai import relevance_scores
    raw, raw_pc, params = relevance_scores(net, ds, method, batch_size=batch_size, per_class=per_class,
                                           progress=progress, **options)
    pc = {k: normalise(v) for k, v in raw_pc.items()} if per_class else None
    return Importance(method, {k: normalise(v) for k, v in raw.items()}, pc,
                      {"batch_size": batch_size, "seed": seed, "normalisation": "layer max", **params},
                      len(ds), data_hash(ds.x, ds.y), names)
