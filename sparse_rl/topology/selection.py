"""Selection primitives of the topology updates: top-k masks, the connectivity cover, and applying a rewire.

Every function works on the dense ``[rows, cols]`` matrix view of a layer (boolean masks, float scores); only
:func:`apply_rewire` touches the layer and the optimizers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch as th

from sparse_rl.nn.base import SparseLayer
from sparse_rl.topology.optim import remap_optimizer_state, replace_parameter

NEG_INF = float("-inf")


@dataclass
class LayerChange:
    """What one update did to one layer."""

    dropped: int
    grown: int
    nnz: int


@dataclass
class UpdateStats:
    """What one update did: the drop fraction used and the per-layer changes."""

    step: int
    drop_fraction: float
    layers: dict[str, LayerChange]

    @property
    def changed_fraction(self) -> float:
        """Fraction of the connections (before the update) that were replaced."""
        total = sum(c.nnz for c in self.layers.values())
        return sum(c.dropped for c in self.layers.values()) / max(total, 1)


def top_per_row(scores: th.Tensor, counts: th.Tensor) -> th.Tensor:
    """Boolean mask selecting the ``counts[r]`` highest scores of each row ``r`` of ``scores`` (ties: first column).

    :param scores: ``[rows, cols]``
    :param counts: ``[rows]`` integers
    """
    order = scores.argsort(dim=1, descending=True, stable=True)
    ranks = th.empty_like(order)
    ranks.scatter_(1, order, th.arange(scores.shape[1], device=scores.device).expand_as(order))
    return ranks < counts.unsqueeze(1)


def cover(scores: th.Tensor, active: th.Tensor, rows: bool = True, cols: bool = True) -> th.Tensor:
    """The highest-scoring active connection of every row and of every column that has one (at most rows + cols).

    :param scores: ``[rows, cols]``
    :param active: ``[rows, cols]`` boolean
    :param rows: cover the rows (output units)
    :param cols: cover the columns (inputs)
    """
    masked = scores.masked_fill(~active, NEG_INF)
    cover = th.zeros_like(active)
    if rows:
        kept = active.any(dim=1).nonzero().squeeze(1)
        cover[kept, masked[kept].argmax(dim=1)] = True
    if cols:
        kept = active.any(dim=0).nonzero().squeeze(1)
        cover[masked[:, kept].argmax(dim=0), kept] = True
    return cover


def top_overall(scores: th.Tensor, count: int) -> th.Tensor:
    """Boolean mask (shaped like ``scores``) of the ``count`` highest scores."""
    selected = th.zeros(scores.numel(), dtype=th.bool, device=scores.device)
    if count > 0:
        selected[th.topk(scores.flatten(), count, sorted=False).indices] = True
    return selected.view_as(scores)


def apply_rewire(
    layer: SparseLayer, active: th.Tensor, keep: th.Tensor, grow: th.Tensor, optimizers: list[th.optim.Optimizer]
) -> LayerChange:
    """Rewire ``layer`` to ``keep | grow`` and remap optimizer state with the same slot map.

    :param layer: the layer to rewire
    :param active: ``[rows, cols]`` its connectivity before the update
    :param keep: ``[rows, cols]`` the kept connections (a subset of ``active``)
    :param grow: ``[rows, cols]`` the grown connections (outside ``active``; they start at zero)
    :param optimizers: optimizers whose per-weight state follows the connections
    """
    old_nnz = layer.nnz
    assert not (keep & ~active).any() and not (grow & active).any(), "kept must be active and grown inactive"
    slot_of = th.full(layer.matrix_shape, -1, dtype=th.long, device=active.device)
    slot_of.view(-1)[layer.flat_indices()] = th.arange(old_nnz, device=active.device)
    new_mask = keep | grow
    source = slot_of.masked_fill(~keep, -1)[new_mask]  # CSR order: row-major boolean indexing
    old_param = layer.values
    remap_optimizer_state(optimizers, old_param, source, old_nnz)
    layer.rewire(new_mask, source)
    replace_parameter(optimizers, old_param, layer.values)
    return LayerChange(dropped=int((active & ~keep).sum()), grown=int(grow.sum()), nnz=old_nnz)
