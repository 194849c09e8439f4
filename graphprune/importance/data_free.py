"""The layers that are scored, and the data-free criteria (l1, l2, bn) on their weights.

Every producer of prunable channels is scored: Conv and ConvTranspose filters and the
output features of Gemm / constant-weight MatMul (the units the pruning analysis
removes). Scoring only the convs left dense hidden units to a silent L1 fallback in
`prune --criterion metadata`.
"""
from __future__ import annotations

import numpy as np
import torch.nn as nn

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONVT = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_PRODUCER_TYPES = _CONV + _CONVT + (nn.Linear,)


def producer_modules(net: nn.Module) -> dict[str, nn.Module]:
    """Layers to score, keyed by ONNX node name (bridge) or module name (plain nn.Module), in graph order."""
    if hasattr(net, "producer_nodes"):
        return {name: net.module_for_node(name) for name in net.producer_nodes()}
    return {name: m for name, m in net.named_modules() if isinstance(m, _PRODUCER_TYPES)}


def conv_modules(net: nn.Module) -> dict[str, nn.Module]:
    """The Conv layers only (what importance scored before dense layers were added)."""
    return {k: m for k, m in producer_modules(net).items() if isinstance(m, _CONV)}


def channel_axis(module: nn.Module) -> int:
    """Axis of the module's output that holds its channels: 1 for convs, the last for nn.Linear."""
    return -1 if isinstance(module, nn.Linear) else 1


def _conv_bn(net: nn.Module) -> dict[str, nn.Module]:
    if hasattr(net, "conv_bn_pairs"):
        return {c: net.module_for_node(b) for c, b in net.conv_bn_pairs()}
    out, last = {}, None  # plain module: a BN registered right after its conv
    for name, m in net.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and last is not None and \
                last[1].out_channels == m.num_features:
            out[last[0]] = m
        last = (name, m) if isinstance(m, _CONV) else None
    return out


def filters(module: nn.Module):
    """(out_channels, fan_in) view of the weights, one row per output channel."""
    w = module.weight.detach().double()
    if isinstance(module, _CONVT):  # (in, out/groups, k...) -> (out, in/groups * k...)
        g = module.groups
        ci, co = w.shape[0] // g, w.shape[1]
        return w.reshape(g, ci, co, -1).permute(0, 2, 1, 3).reshape(g * co, -1)
    return w.reshape(w.shape[0], -1)


def data_free_scores(net: nn.Module, method: str) -> tuple[dict[str, np.ndarray], dict]:
    """l1 / l2 / bn scores from the weights (before normalisation) and the parameters used.

    bn: |gamma| of the BatchNormalization that alone consumes a Conv; any other layer
    (BN folded by the exporter, dense layers) is scored by its L2 norm and listed in
    parameters["bn_fallback"].
    """
    params, scores, fallback = {}, {}, []
    bns = _conv_bn(net) if method == "bn" else {}
    for name, layer in producer_modules(net).items():
        w = filters(layer)
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
