"""Node names of the written model: the names the scores are keyed by.

Scores are computed on the normalised model (graphprune.load names every node
uniquely: unnamed nodes get invented names, duplicates a suffix). A scored model
written with the user's unnamed or duplicate-named nodes would carry keys that
match no node (issue 11 #9) or two. So each node of the written copy whose first
output also exists in the normalised model takes that node's name; output names
are unique in ONNX, so this matches nodes exactly, whatever naming rule the
normaliser uses. Already unique names are never changed (the normaliser keeps them).
"""
from __future__ import annotations

from collections import Counter

import onnx

from graphprune.errors import GraphpruneError


def name_like_normalised(model: onnx.ModelProto, names: dict[str, str], keys) -> None:
    """Rename `model`'s nodes in place from {first output: normalised name}; check every key names one node."""
    for node in model.graph.node:
        if node.output and node.output[0] in names:
            node.name = names[node.output[0]]
    counts = Counter(n.name for n in model.graph.node)
    bad = [k for k in keys if counts.get(k, 0) != 1]
    if bad:  # not the model that was scored: writing would store scores no node carries
        raise GraphpruneError(f"the scores' node {bad[0]!r} is not a unique node of the model being written "
                              "(write the scores into the model they were computed on)")
