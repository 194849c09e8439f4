"""Data-driven relevance at each scored layer's output: LRP (zennit), Taylor, and captum layer methods.

Kept apart from graphprune.importance.core so that zennit and captum are imported
only when a data-driven criterion is asked for. All methods return the raw
per-channel score sum_{samples} mean_{positions} |R| / N (and per-class sums
divided by that class's sample count); graphprune.importance.core normalises.
The layers are every producer of prunable channels (convs and dense layers, see
graphprune.importance.data_free), hooked on their bridge modules.

Without labels the target of each sample is the model's own top-1 class: every
method here attributes one class logit, and the predicted class is the one whose
evidence the deployed model uses.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from graphprune.errors import GraphpruneError
from graphprune.importance.captum_layers import captum_runner, channel_means
from graphprune.importance.data_free import channel_axis, producer_modules
from graphprune.progress import progress_bar

DEFAULT_N_STEPS = 16  # IG / conductance path steps: ranking is stable well below captum's default 50


class _Logits(nn.Module):
    """The model's first output, so captum targets and LRP start from the class logits."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        out = self.net(x)
        return out[0] if isinstance(out, (tuple, list)) else out


def _graph_bn_canonizer():
    """zennit canonizer that merges each BN into the Conv it follows, using the ONNX graph's edges.

    zennit's SequentialMergeBatchNorm pairs modules by registration order, which
    for a graph-built module is not guaranteed to mean "BN consumes this conv";
    the bridge knows the real edges (`conv_bn_pairs`).
    """
    from zennit.canonizers import MergeBatchNorm

    class GraphMergeBatchNorm(MergeBatchNorm):
        def apply(self, root_module):
            net = root_module.net if isinstance(root_module, _Logits) else root_module
            instances = []
            for conv, bn in net.conv_bn_pairs():
                inst = GraphMergeBatchNorm()
                inst.register((net.module_for_node(conv),), net.module_for_node(bn))
                instances.append(inst)
            return instances

    return GraphMergeBatchNorm()


def unshared_copy(net: nn.Module) -> nn.Module:
    """A deep copy in which no two modules share a parameter or buffer.

    The bridge lets layers that read one ONNX initializer share a tensor (and
    exporters deduplicate equal initializers, e.g. all-ones BN gammas). zennit's
    BN merge rewrites ``.data`` in place, which would corrupt every sharer, so
    LRP runs on a copy with private tensors.
    """
    import copy
    net = copy.deepcopy(net)
    for m in net.modules():
        for name, p in list(m._parameters.items()):
            if p is not None:
                m._parameters[name] = nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
        for name, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[name] = b.clone()
    return net


def _lrp_composite(net: nn.Module, epsilon: float):
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonPlusFlat
    canon = _graph_bn_canonizer() if hasattr(net, "conv_bn_pairs") else SequentialMergeBatchNorm()
    return EpsilonPlusFlat(epsilon=epsilon, canonizers=[canon])


def check_data(wrapper: nn.Module, net: nn.Module, x: np.ndarray, y: np.ndarray | None) -> int:
    """Fail early, in one line, when data and model disagree; return the number of classes."""
    shapes = getattr(net, "input_shapes", None)
    if shapes:
        want = shapes[0]
        if len(want) != x.ndim or any(w is not None and w != g for w, g in zip(want[1:], x.shape[1:])):
            raise GraphpruneError(f"data samples have shape {tuple(x.shape[1:])}, the model input is "
                                  f"{tuple('?' if w is None else w for w in want[1:])}")
    try:
        with torch.no_grad():
            out = wrapper(torch.from_numpy(x[:1]))
    except GraphpruneError:
        raise
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GraphpruneError(f"data samples of shape {tuple(x.shape[1:])} do not fit the model ({msg})") from None
    if out.dim() != 2:
        raise GraphpruneError(f"the model output has shape {tuple(out.shape)}; class logits (N, classes) needed")
    k = int(out.shape[1])
    if y is not None and int(y.max()) >= k:
        raise GraphpruneError(f"label {int(y.max())} is out of range for a model with {k} outputs")
    return k


def _hooked_relevance(wrapper, layers, axes, x, y, k, composite=None):
    """One forward/backward from the true-label logit; [(N, C) mean |output x (modified) gradient| per layer].

    Gradients are taken with torch.autograd.grad at the hooked outputs only, so
    autograd skips the weight gradients that out.backward() would compute (and
    leave in .grad): about a third of a conv net's backward.
    """
    acts, handles = [None] * len(layers), []

    def make_hook(i):
        def hook(module, inputs, output):
            acts[i] = output
        return hook

    ctx = composite.context(wrapper) if composite is not None else None
    model = ctx.__enter__() if ctx is not None else wrapper
    try:
        for i, m in enumerate(layers):  # after the composite's hooks, so the hooked output is final
            handles.append(m.register_forward_hook(make_hook(i)))
        out = model(x.detach().requires_grad_(True))
        grads = torch.autograd.grad(out, acts, grad_outputs=torch.nn.functional.one_hot(y, k).to(out.dtype),
                                    allow_unused=True)
    finally:
        for h in handles:
            h.remove()
        if ctx is not None:
            ctx.__exit__(None, None, None)
    return [channel_means(a.detach() * g, axis) if g is not None
            else torch.zeros(x.shape[0], a.shape[axis], dtype=torch.float64) for a, g, axis in zip(acts, grads, axes)]


def _runners(method, wrapper, net, layers, k, n_steps, batch_size, epsilon):
    """[(layer names, run(x, y) -> [(N, C) mean |R| per layer])]: one pass for all layers, except ig."""
    names, mods = list(layers), list(layers.values())
    axes = [channel_axis(m) for m in mods]
    if method in ("lrp", "taylor"):
        composite = _lrp_composite(net, epsilon) if method == "lrp" else None
        return [(names, lambda x, y: _hooked_relevance(wrapper, mods, axes, x, y, k, composite))]
    if method == "ig":
        return [([n], captum_runner(method, wrapper, [m], [a], n_steps, batch_size))
                for n, m, a in zip(names, mods, axes)]
    return [(names, captum_runner(method, wrapper, mods, axes, n_steps, batch_size))]


def _parameters(method: str, n_steps: int, epsilon: float, labelled: bool) -> dict:
    target = "true label" if labelled else "top-1 prediction (no labels)"
    if method == "lrp":
        return {"composite": "EpsilonPlusFlat", "epsilon": epsilon,
                "canonizer": "BatchNorm merged into the preceding Conv", "start": f"logit of the {target}",
                "target": target}
    if method in ("ig", "conductance"):
        return {"n_steps": n_steps, "baseline": "zeros", "target": target}
    if method == "deeplift":
        return {"baseline": "zeros", "target": target}
    return {"target": target}


def relevance_scores(net: nn.Module, ds, method: str, batch_size: int = 32, per_class: bool = False,
                     progress: bool = True, n_steps: int = DEFAULT_N_STEPS, epsilon: float = 1e-6,
                     layers: list[str] | None = None):
    """Raw per-channel scores {layer: (C,)}, per-class {layer: (classes, C)}, and the parameters used.

    Every method except ig gets all layers from one pass per batch (see the
    helpers above); ig makes one captum call per layer. `layers` restricts
    scoring to these node names (used to time ig on large models). Without
    labels (ds.y is None) each sample's target is the model's top-1 class.
    """
    if method == "lrp":
        net = unshared_copy(net)
    wrapper = _Logits(net).eval()
    scored = producer_modules(net)
    if layers is not None:
        scored = {name: scored[name] for name in layers}
    k = check_data(wrapper, net, ds.x, ds.y)
    groups = _runners(method, wrapper, net, scored, k, n_steps, batch_size, epsilon)
    totals = {name: 0.0 for name in scored}
    class_totals = {name: np.zeros(1) for name in scored}
    counts = np.zeros(k)
    bar = progress_bar(-(-len(ds) // batch_size) * len(groups), f"importance {method}", "pass", enabled=progress,
                       leave=False)
    for xb, yb in ds.batches(batch_size):
        xt = torch.from_numpy(xb)
        yt = torch.from_numpy(yb) if yb is not None else _top1(wrapper, xt)
        counts += np.bincount(yt.numpy(), minlength=k)
        per = {}
        for names, run in groups:
            per.update(zip(names, run(xt, yt)))
            bar.update(1)
        for name, r in per.items():
            r = r.numpy()
            totals[name] = totals[name] + r.sum(0)
            if per_class:
                pc = np.zeros((k, r.shape[1]))
                np.add.at(pc, yt.numpy(), r)
                class_totals[name] = class_totals[name] + pc
    bar.close()
    scores = {name: t / len(ds) for name, t in totals.items()}
    pcs = {name: t / np.maximum(counts, 1)[:, None] for name, t in class_totals.items()} if per_class else {}
    params = _parameters(method, n_steps, epsilon, ds.y is not None)
    if per_class:
        params["class_counts"] = counts.astype(int).tolist()
    return scores, pcs, params


def _top1(wrapper: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return wrapper(x).argmax(1)
