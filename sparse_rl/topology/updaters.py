"""Topology updaters: small classes that differ by their drop and grow scores.

- :class:`Static`: the initial random topology is kept (sparse training without rewiring).
- :class:`SET`: drop the smallest magnitudes, grow at random (Mocanu et al. 2018, "Scalable training of artificial
  neural networks with adaptive sparse connectivity").
- :class:`RigL`: drop the smallest magnitudes, grow the largest dense gradients (Evci et al. 2020, "Rigging the
  Lottery"); sparse RL settings from Graesser et al. 2022, "The State of Sparse Training in Deep RL".
- :class:`SRigL`: RigL with constant fan-in, every output neuron keeps the same number of inputs, with optional neuron
  ablation (Lasby et al. 2024, "Dynamic Sparse Training with Structured Sparsity").
- :class:`GradualMagnitudePruning`: dense-to-sparse baseline, cubic sparsity ramp (Zhu and Gupta 2017).

An update rewires each layer in place (:meth:`SparseWeightMixin.rewire`) and remaps the optimizer state with the same
map: kept connections keep their weight and moments, grown ones start at zero. Dropped connections were active and
grown connections were inactive before the update; DST keeps every layer's nnz constant.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch as th

from sparse_rl.nn.layers import SparseWeightMixin
from sparse_rl.topology.criteria import gradient_score, magnitude_score, random_score
from sparse_rl.topology.optim import remap_optimizer_state, replace_parameter
from sparse_rl.topology.schedules import TopologySchedule, polynomial_sparsity

Layers = Mapping[str, SparseWeightMixin]
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


def _top_per_row(scores: th.Tensor, counts: th.Tensor) -> th.Tensor:
    """Boolean mask selecting the ``counts[r]`` highest scores of each row ``r`` of ``scores``."""
    order = scores.argsort(dim=1, descending=True, stable=True)
    ranks = th.empty_like(order)
    ranks.scatter_(1, order, th.arange(scores.shape[1], device=scores.device).expand_as(order))
    return ranks < counts.unsqueeze(1)


def _cover(scores: th.Tensor, active: th.Tensor) -> th.Tensor:
    """The highest-scoring active connection of every row and of every column that has one (at most rows + cols)."""
    masked = scores.masked_fill(~active, NEG_INF)
    cover = th.zeros_like(active)
    rows = active.any(dim=1).nonzero().squeeze(1)
    cover[rows, masked[rows].argmax(dim=1)] = True
    cols = active.any(dim=0).nonzero().squeeze(1)
    cover[masked[:, cols].argmax(dim=0), cols] = True
    return cover


def _top_overall(scores: th.Tensor, count: int) -> th.Tensor:
    """Boolean mask (shaped like ``scores``) of the ``count`` highest scores."""
    selected = th.zeros(scores.numel(), dtype=th.bool, device=scores.device)
    if count > 0:
        selected[th.topk(scores.flatten(), count, sorted=False).indices] = True
    return selected.view_as(scores)


@dataclass
class BaseUpdater:
    """Drop the lowest :meth:`drop_scores`, grow the highest :meth:`grow_scores`; subclasses override the scores.

    :param schedule: when to update and which fraction to drop
    :param seed: seed of the generator used by random criteria (``None``: drawn from torch's global RNG)
    :param keep_connected: never drop the last connection of an output unit or of an input (the strongest one of each
        row and column is kept; in a tiny layer whose drop budget would cut into them, fewer connections are swapped)
    """

    schedule: TopologySchedule = field(default_factory=TopologySchedule)
    seed: int | None = None
    keep_connected: bool = True
    num_updates: int = field(default=0, init=False)
    last_update_step: int | None = field(default=None, init=False)

    name: ClassVar[str] = "base"
    is_sparse: ClassVar[bool] = True
    rewires: ClassVar[bool] = True
    needs_dense_grad: ClassVar[bool] = False
    constant_fan_in: ClassVar[bool] = False

    def __post_init__(self) -> None:
        seed = self.seed if self.seed is not None else int(th.randint(0, 2**62, (1,)).item())
        self.generator = th.Generator().manual_seed(seed)

    # -------------------------------------------------------------------------------------------------- scores
    def drop_scores(self, layer: SparseWeightMixin) -> th.Tensor:
        """Importance of each active connection, ``[nnz]`` (lowest dropped first)."""
        return magnitude_score(layer)

    def grow_scores(self, layer: SparseWeightMixin) -> th.Tensor:
        """Priority of each position of the dense matrix view, ``[rows, cols]`` (highest grown first)."""
        raise NotImplementedError

    # -------------------------------------------------------------------------------------------------- update
    def is_update_step(self, step: int) -> bool:
        return self.rewires and self.schedule.is_update_step(step)

    def update(self, layers: Layers, step: int, optimizers: Iterable[th.optim.Optimizer] = ()) -> UpdateStats:
        """Rewire every layer at ``step`` and remap the optimizers' state; returns what changed (nothing for static)."""
        if not self.rewires:
            return UpdateStats(step=step, drop_fraction=0.0,
                               layers={name: LayerChange(0, 0, layer.nnz) for name, layer in layers.items()})
        optimizers = list(optimizers)
        fraction = self.schedule.drop_fraction_at(step)
        changes = {name: self._update_layer(layer, fraction, step, optimizers) for name, layer in layers.items()}
        self.num_updates += 1
        self.last_update_step = step
        return UpdateStats(step=step, drop_fraction=fraction, layers=changes)

    def _update_layer(
        self, layer: SparseWeightMixin, fraction: float, step: int, optimizers: list[th.optim.Optimizer]
    ) -> LayerChange:
        active = layer.mask.reshape(layer.matrix_shape)
        keep, grow = self._select(layer, active, fraction, step)
        return _apply(layer, active, keep, grow, optimizers)

    def _select(
        self, layer: SparseWeightMixin, active: th.Tensor, fraction: float, step: int
    ) -> tuple[th.Tensor, th.Tensor]:
        """Boolean ``[rows, cols]`` masks of the kept and the grown connections."""
        nnz = layer.nnz
        drop_scores = self._dense_drop_scores(layer, active)
        n_protected = int((drop_scores == float("inf")).sum())
        n_swap = min(round(fraction * nnz), int((~active).sum()), nnz - n_protected)
        if n_swap <= 0:
            return active, th.zeros_like(active)
        keep = _top_overall(drop_scores, nnz - n_swap)
        grow_scores = self.grow_scores(layer).masked_fill(active, NEG_INF)
        return keep, _top_overall(grow_scores, n_swap)

    def _dense_drop_scores(self, layer: SparseWeightMixin, active: th.Tensor, protect: bool = True) -> th.Tensor:
        """Drop scores over the dense view (``-inf`` where inactive); with ``keep_connected`` (and ``protect``) the
        strongest connection of every row and column scores ``+inf``, so no drop ever disconnects a unit or an input."""
        dense = th.full(layer.matrix_shape, NEG_INF, device=active.device)
        dense.view(-1)[layer.flat_indices()] = self.drop_scores(layer).float()
        if self.keep_connected and protect:
            dense = dense.masked_fill(_cover(dense, active), float("inf"))
        return dense

    # --------------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "num_updates": self.num_updates,
            "last_update_step": self.last_update_step,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("name", self.name) != self.name:
            raise ValueError(f"topology state of method {state['name']!r} cannot be loaded into {self.name!r}")
        self.num_updates = int(state["num_updates"])
        self.last_update_step = state["last_update_step"]
        self.generator.set_state(state["generator"])


def _apply(
    layer: SparseWeightMixin, active: th.Tensor, keep: th.Tensor, grow: th.Tensor, optimizers: list[th.optim.Optimizer]
) -> LayerChange:
    """Rewire ``layer`` to ``keep | grow`` and remap optimizer state with the same slot map."""
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


@dataclass
class Dense(BaseUpdater):
    """Plain dense training: nothing is sparse and nothing changes."""

    name: ClassVar[str] = "dense"
    is_sparse: ClassVar[bool] = False
    rewires: ClassVar[bool] = False


@dataclass
class Static(BaseUpdater):
    """Static sparse training: the initial random topology never changes."""

    name: ClassVar[str] = "static"
    rewires: ClassVar[bool] = False


@dataclass
class SET(BaseUpdater):
    """Sparse Evolutionary Training (Mocanu et al. 2018): magnitude drop, random grow."""

    name: ClassVar[str] = "set"

    def grow_scores(self, layer: SparseWeightMixin) -> th.Tensor:
        return random_score(layer, self.generator)


@dataclass
class RigL(BaseUpdater):
    """Rigged Lottery (Evci et al. 2020): magnitude drop, grow where the dense gradient is largest."""

    name: ClassVar[str] = "rigl"
    needs_dense_grad: ClassVar[bool] = True

    def grow_scores(self, layer: SparseWeightMixin) -> th.Tensor:
        return gradient_score(layer)


@dataclass
class SRigL(RigL):
    """Constant fan-in RigL (Lasby et al. 2024): drop and grow within each output neuron.

    :param ablation_threshold: gamma_sal of SRigL. A neuron with fewer than ``ablation_threshold * fan_in`` salient
        connections (those an unstructured RigL step would keep or grow) is ablated: it loses all its inputs and
        its budget is shared among the remaining neurons (which then differ in fan-in by at most one, so nnz stays
        exact). ``0`` disables ablation.
    """

    ablation_threshold: float = 0.0
    name: ClassVar[str] = "srigl"
    constant_fan_in: ClassVar[bool] = True

    def _select(
        self, layer: SparseWeightMixin, active: th.Tensor, fraction: float, step: int
    ) -> tuple[th.Tensor, th.Tensor]:
        rows, cols = layer.matrix_shape
        counts = active.sum(dim=1)
        drop_raw = self._dense_drop_scores(layer, active, protect=False)
        drop_dense = self._dense_drop_scores(layer, active)
        grow_dense = self.grow_scores(layer).float().masked_fill(active, NEG_INF)
        target = counts.clone()
        if self.ablation_threshold > 0:  # ablation empties rows on purpose: it judges the unprotected scores
            target = self._ablated_targets(layer, active, drop_raw, grow_dense, fraction)
        n_drop = th.round(fraction * counts.float()).long()
        n_keep = th.minimum(counts - n_drop, target)
        n_keep = th.maximum(n_keep, target - (cols - counts))  # never grow more than a row's free positions
        n_keep = th.minimum(n_keep, counts)
        # keep the row's protected connections (last of an input): such a row swaps fewer, unless ablation empties it
        protected = (drop_dense == float("inf")).sum(dim=1)
        n_keep = th.maximum(n_keep, th.minimum(protected, target))
        keep = _top_per_row(drop_dense, n_keep) & active
        grow = _top_per_row(grow_dense, target - n_keep) & ~active
        return keep, grow

    def _ablated_targets(
        self, layer: SparseWeightMixin, active: th.Tensor, drop_dense: th.Tensor, grow_dense: th.Tensor, fraction: float
    ) -> th.Tensor:
        nnz = layer.nnz
        counts = active.sum(dim=1)
        n_swap = min(round(fraction * nnz), int((~active).sum()))
        salient = _top_overall(drop_dense, nnz - n_swap) | _top_overall(grow_dense, n_swap)
        fan_in = max(1, round(nnz / max(int((counts > 0).sum()), 1)))
        alive = (counts > 0) & (salient.sum(dim=1) >= self.ablation_threshold * fan_in)
        if not alive.any():
            return counts
        n_alive = int(alive.sum())
        base, extra = divmod(nnz, n_alive)
        if base + (extra > 0) > layer.matrix_shape[1]:
            return counts
        target = th.zeros_like(counts)
        target[alive] = base
        alive_rows = alive.nonzero().squeeze(1)
        target[alive_rows[:extra]] += 1
        return target


@dataclass
class GradualMagnitudePruning(BaseUpdater):
    """Dense-to-sparse baseline (Zhu and Gupta 2017): prune the smallest magnitudes on a cubic sparsity ramp.

    Layers start dense (density 1) and reach ``final_sparsity`` (a float for every layer, or per-layer values) at the
    end of the schedule; nothing is regrown, so nnz follows the ramp instead of staying constant.
    """

    final_sparsity: float | Mapping[str, float] = 0.9
    initial_sparsity: float = 0.0
    power: int = 3
    name: ClassVar[str] = "gmp"

    def target_sparsity(self, layer_name: str, step: int) -> float:
        """Sparsity of a layer at ``step``; the ramp ends at the last scheduled update, so the final value is reached."""
        final = self.final_sparsity if isinstance(self.final_sparsity, (int, float)) else self.final_sparsity[layer_name]
        start, every = self.schedule.start_step, self.schedule.update_every
        last_update = start + max(0, (self.schedule.end_step - start) // every) * every
        progress = 1.0 if last_update <= start else min(1.0, max(0.0, (step - start) / (last_update - start)))
        return polynomial_sparsity(progress, final, self.initial_sparsity, self.power)

    def update(self, layers: Layers, step: int, optimizers: Iterable[th.optim.Optimizer] = ()) -> UpdateStats:
        optimizers = list(optimizers)
        changes = {}
        for name, layer in layers.items():
            active = layer.mask.reshape(layer.matrix_shape)
            n_keep = max(1, round((1.0 - self.target_sparsity(name, step)) * layer.numel_dense))
            keep = active if n_keep >= layer.nnz else _top_overall(self._dense_drop_scores(layer, active), n_keep)
            changes[name] = _apply(layer, active, keep, th.zeros_like(active), optimizers)
        self.num_updates += 1
        self.last_update_step = step
        return UpdateStats(step=step, drop_fraction=0.0, layers=changes)


UPDATERS: dict[str, type[BaseUpdater]] = {
    cls.name: cls for cls in (Dense, Static, SET, RigL, SRigL, GradualMagnitudePruning)
}


def create_updater(name: str | Mapping[str, Any], **kwargs: Any) -> BaseUpdater:
    """Build an updater by name (``dense, static, set, rigl, srigl, gmp``) or from a config mapping with ``name``.

    Schedule fields (``update_every``, ``start``, ``end``, ``drop_fraction``, ``drop_decay``, ``total_steps``) may be
    passed directly instead of a ``schedule``.
    """
    if isinstance(name, Mapping):
        kwargs = {**name, **kwargs}
        name = kwargs.pop("name")
    if name not in UPDATERS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(UPDATERS)}")
    schedule_keys = set(TopologySchedule.__dataclass_fields__)
    schedule_kwargs = {key: kwargs.pop(key) for key in list(kwargs) if key in schedule_keys}
    if schedule_kwargs:
        if "schedule" in kwargs:
            raise ValueError("give either a schedule or its fields, not both")
        kwargs["schedule"] = TopologySchedule(**schedule_kwargs)
    return UPDATERS[name](**kwargs)
