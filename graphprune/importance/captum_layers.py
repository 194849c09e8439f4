"""captum's layer methods at every scored layer from one pass per batch (ig: one call per layer).

Each runner returns run(x, y) -> [attribution map per layer]; `captum_runner`
reduces them to (N, C) mean |R| per channel. Kept apart from graphprune.importance.xai
(the hooked LRP / Taylor pass and the batching loop) because these reach into
captum's internals (compute_layer_gradients_and_eval, LayerDeepLift's hooks), which
is what a captum upgrade may break; tests/test_importance.py checks each one-pass
form against captum's own per-layer class.
"""
from __future__ import annotations

import torch

from graphprune.errors import GraphpruneError


def channel_means(r: torch.Tensor, axis: int = 1) -> torch.Tensor:
    """(N, ..., C at `axis`, ...) relevance -> (N, C) float64 mean |R| over the other positions.

    Reduced in the input's precision (torch sums pairwise, so float32 loses
    nothing that matters here) and cast after: casting whole activation maps
    of a large model to float64 first doubled their memory for no gain.
    """
    r = r.detach()
    if axis % r.dim() != 1:  # a dense layer's features are on the last axis
        r = r.movedim(axis, 1)
    return r.abs().reshape(r.shape[0], r.shape[1], -1).mean(-1).double()


def _gradcam_layers(wrapper, layers, axes=None):
    """LayerGradCam (per channel: attr_dim_summation=False, no ReLU) at all `layers` from one forward/backward.

    captum's compute_layer_gradients_and_eval, which LayerGradCam itself calls,
    takes a list of layers; the rest is LayerGradCam's formula: the layer
    output times its gradient averaged over positions (over nothing for a
    (N, C) output, as captum does). A layer whose channels are not on axis 1
    (a MatMul on (N, T, C)) has them moved there first, so its maps come out
    channels-first.
    Returns run(x, y) -> [attribution per layer].
    """
    from captum._utils.gradient import compute_layer_gradients_and_eval
    axes = axes or [1] * len(layers)

    def run(x, y):
        grads, evals = compute_layer_gradients_and_eval(wrapper, layers, x, y)
        out = []
        for (g,), (e,), axis in zip(grads, evals, axes):
            if axis % g.dim() != 1:
                g, e = g.movedim(axis, 1), e.movedim(axis, 1)
            out.append((g.mean(dim=tuple(range(2, g.dim())), keepdim=True) if g.dim() > 2 else g) * e)
        return out
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


def captum_runner(method, wrapper, layers, axes, n_steps, batch_size):
    """run(x, y) -> [(N, C) mean |R| per layer] for a captum layer method on a batch of examples.

    `axes`: the channel axis of each layer's output (1 for convs, -1 for dense layers).
    """
    if method == "gradcam":
        run, axes = _gradcam_layers(wrapper, layers, axes), [1] * len(layers)  # maps come channels-first
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
            parts = [[channel_means(a, ax) for a, ax in zip(path(x[i:i + per_call], y[i:i + per_call]), axes)]
                     for i in range(0, x.shape[0], per_call)]
            return [torch.cat(layer_parts) for layer_parts in zip(*parts)]
        return run_sliced
    else:
        raise GraphpruneError(f"unknown method {method}")
    return lambda x, y: [channel_means(a, ax) for a, ax in zip(run(x, y), axes)]
