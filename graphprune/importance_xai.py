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
    """(N, C, ...) relevance -> (N, C) float64 mean |R| over positions.

    Reduced in the input's precision (torch sums pairwise, so float32 loses
    nothing that matters here) and cast after: casting whole activation maps
    of a large model to float64 first doubled their memory for no gain.
    """
    r = r.detach()
    return r.abs().reshape(r.shape[0], r.shape[1], -1).mean(-1).double()


def _hooked_relevance(wrapper, layers, x, y, k, composite=None):
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
    return [_channel_means(a.detach() * g) if g is not None
            else torch.zeros(x.shape[0], a.shape[1], dtype=torch.float64) for a, g in zip(acts, grads)]


def _gradcam_layers(wrapper, layers):
    """LayerGradCam (per channel: attr_dim_summation=False, no ReLU) at all `layers` from one forward/backward.

    captum's compute_layer_gradients_and_eval, which LayerGradCam itself calls,
    takes a list of layers; the rest is LayerGradCam's formula: the layer
    output times its gradient averaged over positions.
    Returns run(x, y) -> [attribution per layer].
    """
    from captum._utils.gradient import compute_layer_gradients_and_eval

    def run(x, y):
        grads, evals = compute_layer_gradients_and_eval(wrapper, layers, x, y)
        return [g.mean(dim=tuple(range(2, g.dim())), keepdim=True) * e for (g,), (e,) in zip(grads, evals)]
    return run


def _deeplift_layers(wrapper, layers):
    """LayerDeepLift (zero baseline) at all `layers` from one forward/backward over [inputs; baselines].

    LayerDeepLift.attribute is this same pass (DeepLift's hooks on the
    nonlinearities, compute_layer_gradients_and_eval on a forward over inputs
    and baselines, (input - baseline) x multiplier at the layer) but unpacks
    the result for one layer only. The multipliers at every layer come out of
    the one backward, and captum's hooks at the conv outputs only clone them.
    Returns run(x, y) -> [attribution per layer].
    """
    from captum._utils.common import ExpansionTypes, _expand_target
    from captum._utils.gradient import compute_layer_gradients_and_eval
    from captum.attr import LayerDeepLift

    algo = LayerDeepLift(wrapper, layers[0])  # for its hooks and forward construction only

    def run(x, y):
        main_hooks = algo._hook_main_model()
        try:
            wrapper.apply(lambda mod: algo._register_hooks(mod, attribute_to_layer_input=False))
            forward = algo._construct_forward_func(wrapper, ((x,), (torch.zeros_like(x),)),
                                                   _expand_target(y, 2, expansion_type=ExpansionTypes.repeat))
            grads, evals = compute_layer_gradients_and_eval(forward, layers, (x,),
                                                            output_fn=lambda out: out[0].chunk(2))
        finally:
            algo._remove_hooks(main_hooks)
            algo.forward_handles, algo.backward_handles = [], []
        return [(ev[0] - ev[1]) * g[0] for g, ev in zip(grads, evals)]
    return run


def _conductance_layers(wrapper, layers, n_steps, internal_batch_size=None):
    """LayerConductance (zero baseline) at all `layers`, one forward/backward per point on the input path.

    Conductance reads only the layer's outputs and gradients along the path, so
    LayerConductance._attribute works for a list of layers once
    compute_layer_gradients_and_eval gets the list; captum's attribute() with
    its path approximation and internal batching runs unchanged around it.
    Returns run(x, y) -> [attribution per layer].
    """
    from captum._utils.common import _expand_target
    from captum._utils.gradient import compute_layer_gradients_and_eval
    from captum.attr import LayerConductance
    from captum.attr._utils.approximation_methods import approximation_parameters
    from captum.attr._utils.common import _reshape_and_sum

    class MultiLayerConductance(LayerConductance):
        def _attribute(self, inputs, baselines, target=None, n_steps=50, method="gausslegendre",
                       step_sizes_and_alphas=None, **_):
            n = inputs[0].shape[0]
            alphas = approximation_parameters(method)[1](n_steps + 1) if step_sizes_and_alphas is None \
                else step_sizes_and_alphas[1]
            scaled = tuple(torch.cat([b + a * (x - b) for a in alphas], dim=0).requires_grad_()
                           for x, b in zip(inputs, baselines))
            grads, evals = compute_layer_gradients_and_eval(self.forward_func, self.layer, scaled,
                                                            _expand_target(target, n_steps + 1))
            return tuple(_reshape_and_sum((e[n:] - e[:-n]) * g[:-n], n_steps, n, tuple(e.shape[1:]))
                         for (g,), (e,) in zip(grads, evals))

    algo = MultiLayerConductance(wrapper, layers)
    return lambda x, y: list(algo.attribute(x, baselines=torch.zeros_like(x), target=y, n_steps=n_steps,
                                            internal_batch_size=internal_batch_size))


def _ig_layers(wrapper, layers, n_steps, internal_batch_size=None):
    """LayerIntegratedGradients (zero baseline), one captum call per layer.

    IG interpolates AT the layer (the layer's output is replaced by points
    between its values for the baseline and the input), so another layer's
    integral is only right while the layers feeding it are not patched:
    captum's documentation rules out layers in one call that feed one
    another, and in a conv net nearly every pair does (on ResNet-50, grouping
    the layers that do not would save 4 of 53 calls). Conductance is the
    IG-family method that splits the one input-path integral at every layer
    in one pass.
    """
    from captum.attr import LayerIntegratedGradients
    algos = [LayerIntegratedGradients(wrapper, m) for m in layers]
    return lambda x, y: [a.attribute(x, baselines=torch.zeros_like(x), target=y, n_steps=n_steps,
                                     internal_batch_size=internal_batch_size) for a in algos]


def _captum_runner(method, wrapper, layers, n_steps, batch_size):
    """run(x, y) -> [(N, C) mean |R| per layer] for a captum layer method on a batch of examples."""
    if method == "gradcam":
        run = _gradcam_layers(wrapper, layers)
    elif method == "deeplift":
        run = _deeplift_layers(wrapper, layers)
    elif method == "ig":
        run = _ig_layers(wrapper, layers, n_steps, internal_batch_size=batch_size)
    elif method == "conductance":
        # captum's internal batching splits the n_steps + 1 path points into chunks that share an end
        # point, which doubles the work when a chunk holds two points. Split the examples instead: one
        # call holds all path points of as many examples as fit into batch_size inputs (at least one).
        path = _conductance_layers(wrapper, layers, n_steps, internal_batch_size=max(batch_size, n_steps + 1))
        per_call = max(1, batch_size // (n_steps + 1))

        def run_sliced(x, y):
            parts = [[_channel_means(a) for a in path(x[i:i + per_call], y[i:i + per_call])]
                     for i in range(0, x.shape[0], per_call)]
            return [torch.cat(layer_parts) for layer_parts in zip(*parts)]
        return run_sliced
    else:
        raise GraphpruneError(f"unknown method {method}")
    return lambda x, y: [_channel_means(a) for a in run(x, y)]


def relevance_scores(net: nn.Module, ds, method: str, batch_size: int = 32, per_class: bool = False,
                     progress: bool = True, n_steps: int = DEFAULT_N_STEPS, epsilon: float = 1e-6,
                     layers: list[str] | None = None):
    """Raw per-channel scores {conv: (C,)}, per-class {conv: (classes, C)}, and the parameters used.

    Every method except ig gets all layers from one pass per batch (see the
    helpers above); ig makes one captum call per layer. `layers` restricts
    scoring to these Conv node names (used to time ig on large models).
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
    composite = _lrp_composite(net, epsilon) if method == "lrp" else None
    # (layer names, run(x, y) -> [(N, C) mean |R| per layer]): one pass for all layers, except ig
    if method in ("lrp", "taylor"):
        groups = [(list(convs), lambda x, y: _hooked_relevance(wrapper, list(convs.values()), x, y, k, composite))]
    elif method == "ig":
        groups = [([name], _captum_runner(method, wrapper, [m], n_steps, batch_size)) for name, m in convs.items()]
    else:
        groups = [(list(convs), _captum_runner(method, wrapper, list(convs.values()), n_steps, batch_size))]
    n_batches = -(-len(ds) // batch_size)
    bar = tqdm(total=n_batches * len(groups), desc=f"importance {method}", disable=not progress, leave=False)
    for xb, yb in ds.batches(batch_size):
        per = {}
        xt, yt = torch.from_numpy(xb), torch.from_numpy(yb)
        for names, run in groups:
            per.update(zip(names, run(xt, yt)))
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
