"""Channel bookkeeping shared by the analysis and the rewrite passes.

Every channel that some operator creates (a Conv filter, a Gemm output feature) is an
*element* with an integer id. A tensor's tracked axis is described by a `ChannelMap`:
the element id of each position along that axis. Concat concatenates maps, Slice
slices them, Flatten repeats them; elementwise joins *union* the elements they add
together. After propagation, elements that must go together form *units*, and units
that share a producer form *groups*: the unit of pruning and the unit of reporting.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs


@dataclass
class ChannelMap:
    axis: int            # the tracked axis of the tensor (non-negative)
    elems: np.ndarray    # int64 element id per position along that axis
    rank: int            # rank of the tensor, to align broadcast operands on rewrite


@dataclass
class Source:
    """A contiguous range of element ids created by one node (or an untracked tensor)."""
    start: int
    stop: int
    node: str            # creating node name ('' for untracked tensors)
    kind: str            # 'conv', 'convtranspose', 'gemm', 'matmul', 'untracked'


class PropagationContext:
    """What rules read (shapes, constants, input maps) and record (sources, unions, freezes)."""

    def __init__(self, allow_inexact: bool = False, graph_outputs: set[str] | None = None):
        self.allow_inexact = allow_inexact
        self.graph_outputs = graph_outputs or set()
        self.maps: dict[str, ChannelMap] = {}
        self.sources: list[Source] = []
        self.n = 0
        self._unions: list[tuple[np.ndarray, np.ndarray]] = []
        self.freezes: list[tuple[np.ndarray, str]] = []
        self.inexact: list[tuple[np.ndarray, str]] = []
        self.touches: list[tuple[str, np.ndarray]] = []   # (node name, elements it reads or writes)
        self._weight_users: dict[tuple[str, str], np.ndarray | None] = {}

    # -- reading --------------------------------------------------------------
    def map(self, t: gs.Tensor) -> ChannelMap | None:
        return self.maps.get(t.name) if t is not None and t.name else None

    @staticmethod
    def rank(t: gs.Tensor) -> int | None:
        shape = t.shape
        return None if shape is None else len(shape)

    @staticmethod
    def shape(t: gs.Tensor) -> list | None:
        """Dims as ints where known, strings for symbolic dims, None where unknown."""
        if t.shape is None:
            return None
        return [d if isinstance(d, (int, np.integer)) and d >= 0 else (d if isinstance(d, str) and d else None)
                for d in t.shape]

    # -- recording ------------------------------------------------------------
    def set_map(self, t: gs.Tensor, axis: int, elems: np.ndarray, node: gs.Node | None = None,
                rank: int | None = None) -> None:
        if rank is None:
            rank = self.rank(t)
        if rank is None and not t.outputs and t.name not in self.graph_outputs:
            return  # an unused output (Dropout's mask): nothing to follow
        if rank is None:  # no shape: cannot follow an axis through it
            self.freeze(elems, f"no shape known for {t.name}")
            return
        self.maps[t.name] = ChannelMap(axis, np.asarray(elems, np.int64), rank)
        if node is not None:
            self.touches.append((node.name, elems))

    def new_source(self, node: gs.Node | None, size: int, kind: str) -> np.ndarray:
        start = self.n
        self.n += int(size)
        self.sources.append(Source(start, self.n, node.name if node is not None else "", kind))
        return np.arange(start, self.n, dtype=np.int64)

    def untracked(self, size: int, reason: str) -> np.ndarray:
        """Elements for channels that come from a tensor the analysis does not follow: frozen."""
        elems = self.new_source(None, size, "untracked")
        self.freeze(elems, reason)
        return elems

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        self._unions.append((np.asarray(a, np.int64), np.asarray(b, np.int64)))

    def freeze(self, elems: np.ndarray, reason: str) -> None:
        if len(elems):
            self.freezes.append((np.asarray(elems, np.int64), reason))

    def freeze_tensor(self, t: gs.Tensor, reason: str) -> None:
        m = self.map(t)
        if m is not None:
            self.freeze(m.elems, reason)

    def mark_inexact(self, elems: np.ndarray, reason: str) -> None:
        self.inexact.append((np.asarray(elems, np.int64), reason))

    def touch(self, node: gs.Node, elems: np.ndarray) -> None:
        self.touches.append((node.name, elems))

    def share_weight(self, weight: str, role: str, elems: np.ndarray | None) -> None:
        """Consumers of one weight initializer (tied weights: an unrolled RNN's steps, shared
        filter banks) must slice it identically, so the pruned model keeps ONE initializer
        instead of a copy per slicing: their channels along `role` ('in' or 'out') are
        coupled, or frozen where one consumer's channels are not followed."""
        key = (weight, role)
        if key not in self._weight_users:
            self._weight_users[key] = elems
            return
        first = self._weight_users[key]
        if first is None or elems is None or len(first) != len(elems):
            reason = f"weight {weight} is shared with a layer whose channels are not followed"
            for e in (first, elems):
                if e is not None:
                    self.freeze(e, reason)
            self._weight_users[key] = None
            return
        self.union(first, elems)

    def union_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._unions:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return (np.concatenate([a for a, _ in self._unions]), np.concatenate([b for _, b in self._unions]))


@dataclass
class RewriteContext:
    """What rules read when rewriting: the keep mask of each tracked tensor."""
    maps: dict[str, ChannelMap]
    keep: np.ndarray                      # bool per element
    opset: int = 13
    # (source constant name, dtype, shape, digest) -> the sliced constant already made from it
    _made: dict = field(default_factory=dict, repr=False)

    def mask(self, t: gs.Tensor) -> np.ndarray | None:
        m = self.maps.get(t.name) if t is not None and t.name else None
        return None if m is None else self.keep[m.elems]

    def changed(self, t: gs.Tensor) -> bool:
        mask = self.mask(t)
        return mask is not None and not bool(mask.all())

    def set_input(self, node: gs.Node, index: int, values: np.ndarray) -> None:
        """Give `node` a new constant for input `index`; the original stays intact for its
        other users. Consumers that slice one shared initializer identically (an unrolled
        RNN's per-step Gemms, PyTorch's deduplicated biases) get ONE new constant: a copy
        per consumer would multiply the parameters of the pruned model."""
        old = node.inputs[index]
        values = np.ascontiguousarray(values)
        key = (old.name, values.dtype.str, values.shape, hashlib.blake2b(values.tobytes(), digest_size=16).digest())
        const = self._made.get(key)
        if const is None or not np.array_equal(const.values, values):
            const = gs.Constant(f"{old.name}__pruned_{node.name}", values)
            self._made[key] = const
        node.inputs[index] = const
