"""Data-driven relevance at each Conv output: LRP (zennit), Taylor, and captum layer methods.

Kept apart from graphprune.importance so that zennit and captum are imported
only when a data-driven criterion is asked for. All methods return the raw
per-channel score sum_{samples} mean_{positions} |R| / N (and per-class sums
divided by that class's sample count); graphprune.importance normalises.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from graphprune.errors import GraphpruneError
from graphprune.importance import conv_modules

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


def check_data(wrapper: nn.Module, net: nn.Module, x: np.ndarray, y: np.ndarray) -> int:
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
    if int(y.max()) >= k:
        raise GraphpruneError(f"label {int(y.max())} is out of range for a model with {k} outputs")
    return k


def _channel_means(r: torch.Tensor) -> torch.Tensor:
    """(N, C, ...) relevance -> (N, C) mean |R| over positions."""
    r = r.detach().abs().double()
    return r.reshape(r.shape[0], r.shape[1], -1).mean(-1)


def _hooked_relevance(wrapper, convs, x, y, k, composite=None):
    """One forward/backward from the true-label logit; R = output x (modified) gradient per conv."""
    acts, grads, handles = {}, {}, []

    def make_hook(name):
        def hook(module, inputs, output):
            acts[name] = output
            output.register_hook(lambda g: grads.__setitem__(name, g))
        return hook

    ctx = composite.context(wrapper) if composite is not None else None
    model = ctx.__enter__() if ctx is not None else wrapper
    try:
        for name, m in convs.items():  # after the composite's hooks, so the hooked output is final
            handles.append(m.register_forward_hook(make_hook(name)))
        xt = torch.from_numpy(x).requires_grad_(True)
        out = model(xt)
        out.backward(gradient=torch.nn.functional.one_hot(torch.from_numpy(y), k).to(out.dtype))
    finally:
        for h in handles:
            h.remove()
        if ctx is not None:
            ctx.__exit__(None, None, None)
    return {name: _channel_means(acts[name].detach() * grads[name]) if name in grads
            else torch.zeros(x.shape[0], acts[name].shape[1], dtype=torch.float64) for name in convs}


def _captum_method(method, wrapper, layer, n_steps, batch_size):
    from captum.attr import LayerConductance, LayerDeepLift, LayerGradCam, LayerIntegratedGradients
    if method == "deeplift":
        algo = LayerDeepLift(wrapper, layer)
        return lambda x, y: algo.attribute(x, baselines=torch.zeros_like(x), target=y)
    if method == "ig":
        algo = LayerIntegratedGradients(wrapper, layer)
        return lambda x, y: algo.attribute(x, baselines=torch.zeros_like(x), target=y, n_steps=n_steps,
                                           internal_batch_size=batch_size)
    if method == "conductance":
        algo = LayerConductance(wrapper, layer)
        return lambda x, y: algo.attribute(x, baselines=torch.zeros_like(x), target=y, n_steps=n_steps,
                                           internal_batch_size=batch_size)
    if method == "gradcam":
        algo = LayerGradCam(wrapper, layer)
        return lambda x, y: algo.attribute(x, target=y, attr_dim_summation=False)
    raise GraphpruneError(f"unknown method {method}")


def relevance_scores(net: nn.Module, ds, method: str, batch_size: int = 32, per_class: bool = False,
                     progress: bool = True, n_steps: int = DEFAULT_N_STEPS, epsilon: float = 1e-6,
                     layers: list[str] | None = None):
    """Raw per-channel scores {conv: (C,)}, per-class {conv: (classes, C)}, and the parameters used.

    `layers` restricts scoring to these Conv node names (used to time the
    per-layer captum methods on large models).
    """
    if method == "lrp":
        net = unshared_copy(net)
    wrapper = _Logits(net).eval()
    convs = conv_modules(net)
    if layers is not None:
        convs = {name: convs[name] for name in layers}
    k = check_data(wrapper, net, ds.x, ds.y)
    totals = {name: None for name in convs}
    class_totals = {name: None for name in convs}
    counts = np.bincount(ds.y, minlength=k).astype(np.float64)
    hooked = method in ("lrp", "taylor")
    composite = _lrp_composite(net, epsilon) if method == "lrp" else None
    algos = {} if hooked else {name: _captum_method(method, wrapper, m, n_steps, batch_size)
                                for name, m in convs.items()}
    n_batches = -(-len(ds) // batch_size)
    bar = tqdm(total=n_batches * (1 if hooked else len(convs)), desc=f"importance {method}",
               disable=not progress, leave=False)
    for xb, yb in ds.batches(batch_size):
        if hooked:
            per = _hooked_relevance(wrapper, convs, xb, yb, k, composite)
            bar.update(1)
        else:
            per = {}
            xt, yt = torch.from_numpy(xb), torch.from_numpy(yb)
            for name, run in algos.items():
                per[name] = _channel_means(run(xt, yt))
                bar.update(1)
        for name, r in per.items():
            r = r.numpy()
            totals[name] = r.sum(0) if totals[name] is None else totals[name] + r.sum(0)
            if per_class:
                pc = np.zeros((k, r.shape[1]))
                np.add.at(pc, yb, r)
                class_totals[name] = pc if class_totals[name] is None else class_totals[name] + pc
    bar.close()
    scores = {name: t / len(ds) for name, t in totals.items()}
    pcs = {name: t / np.maximum(counts, 1)[:, None] for name, t in class_totals.items()} if per_class else {}
    if method == "lrp":
        params = {"composite": "EpsilonPlusFlat", "epsilon": epsilon,
                  "canonizer": "BatchNorm merged into the preceding Conv", "start": "true-label logit"}
    elif method in ("ig", "conductance"):
        params = {"n_steps": n_steps, "baseline": "zeros", "target": "true label"}
    elif method == "deeplift":
        params = {"baseline": "zeros", "target": "true label"}
    else:
        params = {"target": "true label"}
    if per_class:
        params["class_counts"] = counts.astype(int).tolist()
    return scores, pcs, params
