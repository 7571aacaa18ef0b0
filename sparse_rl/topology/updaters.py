"""Topology updaters: small classes that differ by their drop and grow scores (JaxPruner's decomposition).

Each class is one DST method, registered under its name in :data:`UPDATERS` (:data:`METHODS` lists the names):

- :class:`Dense` (``"dense"``): the dense baseline, nothing sparse.
- :class:`Static` (``"static"``): the initial random topology is kept (sparse training without rewiring).
- :class:`SET` (``"set"``): drop the smallest magnitudes, grow at random (Mocanu et al. 2018, "Scalable training of
  artificial neural networks with adaptive sparse connectivity inspired by network science", arXiv:1707.04780).
- :class:`RigL` (``"rigl"``): drop the smallest magnitudes, grow the largest dense gradients (Evci et al. 2020,
  "Rigging the Lottery: Making All Tickets Winners", arXiv:1911.11134); the sparse-RL settings follow Graesser et al.
  2022, "The State of Sparse Training in Deep Reinforcement Learning", arXiv:2206.10369.
- :class:`SRigL` (``"srigl"``): RigL with constant fan-in, every output neuron keeps the same number of inputs, with
  optional neuron ablation (Lasby et al. 2024, "Dynamic Sparse Training with Structured Sparsity", arXiv:2305.02299).
- :class:`GradualMagnitudePruning` (``"gmp"``): dense-to-sparse baseline on a cubic sparsity ramp (Zhu and Gupta 2017,
  "To prune, or not to prune: exploring the efficacy of pruning for model compression", arXiv:1710.01878).

An update rewires each layer in place (:meth:`SparseLayer.rewire <sparse_rl.nn.base.SparseLayer.rewire>`) and remaps
the optimizer state with the same map: kept connections keep their weight and moments, grown ones start at zero.
Dropped connections were active and grown connections were inactive before the update; DST keeps every layer's nnz
constant (GMP excepted). Steps are the schedule's clock: environment steps under the SB3 ``TopologyCallback``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from numbers import Integral
from typing import Any, ClassVar, Literal

import torch as th

from sparse_rl.nn.base import SparseLayer
from sparse_rl.topology._deprecation import renamed
from sparse_rl.topology.criteria import gradient_score, magnitude_score, random_score
from sparse_rl.topology.schedules import TopologySchedule, polynomial_sparsity
from sparse_rl.topology.selection import NEG_INF, LayerChange, UpdateStats, apply_rewire, cover, top_overall, top_per_row

__all__ = [
    "METHODS", "SET", "SPARSE_METHODS", "UPDATERS", "BaseUpdater", "Dense", "GradualMagnitudePruning", "LayerChange",
    "Method", "RigL", "SRigL", "Static", "UpdateStats", "create_updater",
]

Method = Literal["dense", "static", "set", "rigl", "srigl", "gmp"]
"""Name of a DST method (a key of :data:`UPDATERS`)."""
Layers = Mapping[str, SparseLayer]


def check_seed(seed: Any) -> int | None:
    """``seed`` as an int (numpy integers too), or ``None``.

    :raises ValueError: for anything else (``"a"``, ``True``, ``1.5``)
    """
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, Integral)):
        raise ValueError(f"seed must be an integer or None, got {seed!r}")
    return None if seed is None else int(seed)


@dataclass
class BaseUpdater:
    """Drop the lowest :meth:`drop_scores`, grow the highest :meth:`grow_scores`; subclasses override the scores.

    :param schedule: when to update (in the caller's steps: environment steps under the SB3 ``TopologyCallback``) and
        which fraction to drop
    :param seed: seed of the generator used by random criteria (``None``: drawn from torch's global RNG)
    :param keep_connected: never drop the last connection of an output unit or of an input (the strongest one of each
        row and column is kept; in a tiny layer whose drop budget would cut into them, fewer connections are swapped).
        Rows (columns) are protected only when the layer has at least as many connections as rows (columns): a
        256-input layer with 205 connections keeps its units connected and rewires its inputs freely

    Class attributes: ``name`` (the registry key), ``is_sparse`` (the policy has sparse layers), ``rewires`` (updates
    change the topology), ``needs_dense_grad`` (the grow score reads ``layer.dense_grad``: run a backward pass under
    :func:`~sparse_rl.topology.criteria.capture_dense_grad` before :meth:`update`), ``constant_fan_in`` (the layers
    must be built with constant fan-in).
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
        self.seed = check_seed(self.seed)
        seed = self.seed if self.seed is not None else int(th.randint(0, 2**62, (1,)).item())
        self.generator = th.Generator().manual_seed(seed)
        schedule = self.schedule
        if self.rewires and schedule.resolvable and schedule.next_update_step(schedule.start_step) is None:
            warnings.warn(f"{self.name}: no update fits the schedule (every {schedule.update_every} steps from step "
                          f"{schedule.start_step} to {schedule.end_step}): the layers stay as they are", stacklevel=3)

    # -------------------------------------------------------------------------------------------------- scores
    def drop_scores(self, layer: SparseLayer) -> th.Tensor:
        """Importance of each active connection, ``[nnz]`` (lowest dropped first)."""
        return magnitude_score(layer)

    def grow_scores(self, layer: SparseLayer) -> th.Tensor:
        """Priority of each position of the dense matrix view, ``[rows, cols]`` (highest grown first)."""
        raise NotImplementedError

    # -------------------------------------------------------------------------------------------------- update
    def is_update_step(self, step: int) -> bool:
        """Whether the schedule fires at ``step`` (never for methods that do not rewire)."""
        return self.rewires and self.schedule.is_update_step(step)

    def update(self, layers: Layers, step: int, optimizers: Iterable[th.optim.Optimizer] = ()) -> UpdateStats:
        """Rewire every layer at ``step`` and remap the optimizers' state.

        :param layers: name -> sparse layer (rewired in place)
        :param step: the current step, in the schedule's clock (sets the decayed drop fraction)
        :param optimizers: optimizers holding the layers' ``values`` (their per-weight state is remapped)
        :return: what changed (nothing for methods that do not rewire)
        :raises RuntimeError: for RigL-type methods when no dense gradient was captured since the last update (an
            update uses up the captured gradient)
        """
        if not self.rewires:
            return UpdateStats(step=step, drop_fraction=0.0,
                               layers={name: LayerChange(0, 0, layer.nnz) for name, layer in layers.items()})
        optimizers = list(optimizers)
        fraction = self.schedule.drop_fraction_at(step)
        changes = {name: self._update_layer(layer, fraction, step, optimizers) for name, layer in layers.items()}
        if self.needs_dense_grad:  # used up: it scored the old topology, so the next update needs a new capture
            for layer in layers.values():
                layer.dense_grad = None
        self.num_updates += 1
        self.last_update_step = step
        return UpdateStats(step=step, drop_fraction=fraction, layers=changes)

    def _update_layer(
        self, layer: SparseLayer, fraction: float, step: int, optimizers: list[th.optim.Optimizer]
    ) -> LayerChange:
        active = layer.mask.reshape(layer.matrix_shape)
        keep, grow = self._select(layer, active, fraction, step)
        return apply_rewire(layer, active, keep, grow, optimizers)

    def _select(
        self, layer: SparseLayer, active: th.Tensor, fraction: float, step: int
    ) -> tuple[th.Tensor, th.Tensor]:
        """Boolean ``[rows, cols]`` masks of the kept and the grown connections."""
        nnz = layer.nnz
        drop_scores = self._dense_drop_scores(layer, active)
        n_protected = int((drop_scores == float("inf")).sum())
        n_swap = min(round(fraction * nnz), int((~active).sum()), nnz - n_protected)
        if n_swap <= 0:
            return active, th.zeros_like(active)
        keep = top_overall(drop_scores, nnz - n_swap)
        grow_scores = self.grow_scores(layer).masked_fill(active, NEG_INF)
        return keep, top_overall(grow_scores, n_swap)

    def _dense_drop_scores(self, layer: SparseLayer, active: th.Tensor, protect: bool = True) -> th.Tensor:
        """Drop scores over the dense view (``-inf`` where inactive); with ``keep_connected`` (and ``protect``) the
        strongest connection of every row and column scores ``+inf``, so no drop ever disconnects a unit or an input."""
        dense = th.full(layer.matrix_shape, NEG_INF, device=active.device)
        dense.view(-1)[layer.flat_indices()] = self.drop_scores(layer).float()
        if self.keep_connected and protect:
            # a side is protected only when the layer holds enough connections to cover it (nnz >= its size): below
            # that it cannot be fully connected anyway, and protecting every connection would freeze the layer
            nnz, (n_rows, n_cols) = int(active.sum()), active.shape
            dense = dense.masked_fill(cover(dense, active, rows=nnz >= n_rows, cols=nnz >= n_cols), float("inf"))
        return dense

    # --------------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The updater's progress and random state (saved with the model; the schedule is not part of it)."""
        return {
            "name": self.name,
            "num_updates": self.num_updates,
            "last_update_step": self.last_update_step,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`.

        :raises ValueError: when the state was saved by another method
        """
        if state.get("name", self.name) != self.name:
            raise ValueError(f"topology state of method {state['name']!r} cannot be loaded into {self.name!r}")
        self.num_updates = int(state["num_updates"])
        self.last_update_step = state["last_update_step"]
        self.generator.set_state(state["generator"])


@dataclass
class Dense(BaseUpdater):
    """Plain dense training: nothing is sparse and nothing changes."""

    name: ClassVar[str] = "dense"
    is_sparse: ClassVar[bool] = False
    rewires: ClassVar[bool] = False


@dataclass
class Static(BaseUpdater):
    """Static sparse training: the initial random topology never changes (the baseline of Graesser et al. 2022,
    arXiv:2206.10369)."""

    name: ClassVar[str] = "static"
    rewires: ClassVar[bool] = False


@dataclass
class SET(BaseUpdater):
    """Sparse Evolutionary Training (Mocanu et al. 2018, arXiv:1707.04780): magnitude drop, random grow."""

    name: ClassVar[str] = "set"

    def grow_scores(self, layer: SparseLayer) -> th.Tensor:
        return random_score(layer, self.generator)


@dataclass
class RigL(BaseUpdater):
    """Rigged Lottery (Evci et al. 2020, arXiv:1911.11134): magnitude drop, grow where the dense gradient is largest.

    The dense gradient is captured only at update steps (:func:`~sparse_rl.topology.criteria.capture_dense_grad`), so
    every other training step stays sparse.
    """

    name: ClassVar[str] = "rigl"
    needs_dense_grad: ClassVar[bool] = True

    def grow_scores(self, layer: SparseLayer) -> th.Tensor:
        return gradient_score(layer)


@dataclass
class SRigL(RigL):
    """Constant fan-in RigL (Lasby et al. 2024, arXiv:2305.02299): drop and grow within each output neuron.

    :param ablation_threshold: gamma_sal of SRigL. A neuron with fewer than ``ablation_threshold * fan_in`` salient
        connections (those an unstructured RigL step would keep or grow) is ablated: it loses all its inputs and
        its budget is shared among the remaining neurons (which then differ in fan-in by at most one, so nnz stays
        exact). ``0`` disables ablation.
    """

    ablation_threshold: float = 0.0
    name: ClassVar[str] = "srigl"
    constant_fan_in: ClassVar[bool] = True

    def _select(
        self, layer: SparseLayer, active: th.Tensor, fraction: float, step: int
    ) -> tuple[th.Tensor, th.Tensor]:
        rows, cols = layer.matrix_shape
        counts = active.sum(dim=1)
        alive = counts[counts > 0]
        if len(alive) and int(alive.max() - alive.min()) > 1:
            raise ValueError(f"srigl needs constant fan-in layers, but this layer's fan-ins range from {int(alive.min())} "
                             f"to {int(alive.max())}: build it with constant_fan_in=True")
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
        keep = top_per_row(drop_dense, n_keep) & active
        grow = top_per_row(grow_dense, target - n_keep) & ~active
        return keep, grow

    def _ablated_targets(
        self, layer: SparseLayer, active: th.Tensor, drop_dense: th.Tensor, grow_dense: th.Tensor, fraction: float
    ) -> th.Tensor:
        nnz = layer.nnz
        counts = active.sum(dim=1)
        n_swap = min(round(fraction * nnz), int((~active).sum()))
        salient = top_overall(drop_dense, nnz - n_swap) | top_overall(grow_dense, n_swap)
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
    """Dense-to-sparse baseline (Zhu and Gupta 2017, arXiv:1710.01878): prune the smallest magnitudes on a cubic ramp.

    Layers start dense (density 1) and reach ``final_sparsity`` (a float for every layer, or per-layer values) at the
    end of the schedule; nothing is regrown, so nnz follows the ramp instead of staying constant.

    :param final_sparsity: sparsity reached at the last scheduled update, for every layer or per layer name
    :param initial_sparsity: sparsity at ``schedule.start``
    :param power: exponent of the ramp (3: cubic)
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
        """Prune every layer to its target sparsity at ``step`` (see :class:`BaseUpdater.update`).

        :raises ValueError: at the first update, for a layer already sparser than ``initial_sparsity`` (the ramp
            would prune nothing until it passed the layer's sparsity): build it dense (``start_dense=True`` in the
            SB3 policies) or pass its sparsity as ``initial_sparsity``
        """
        optimizers = list(optimizers)
        changes = {}
        for name, layer in layers.items():
            sparsity = 1.0 - layer.nnz / layer.numel_dense
            if self.num_updates == 0 and sparsity > self.initial_sparsity + 0.01:
                raise ValueError(f"gmp prunes from initial_sparsity {self.initial_sparsity:g}, but layer {name!r} "
                                 f"starts at sparsity {sparsity:.2f}: build it dense or pass initial_sparsity")
            active = layer.mask.reshape(layer.matrix_shape)
            n_keep = max(1, round((1.0 - self.target_sparsity(name, step)) * layer.numel_dense))
            keep = active if n_keep >= layer.nnz else top_overall(self._dense_drop_scores(layer, active), n_keep)
            changes[name] = apply_rewire(layer, active, keep, th.zeros_like(active), optimizers)
        self.num_updates += 1
        self.last_update_step = step
        return UpdateStats(step=step, drop_fraction=0.0, layers=changes)


UPDATERS: dict[str, type[BaseUpdater]] = {
    cls.name: cls for cls in (Dense, Static, SET, RigL, SRigL, GradualMagnitudePruning)
}
"""Registry: method name -> updater class."""
METHODS: tuple[str, ...] = tuple(UPDATERS)
"""Every DST method name, dense baseline included."""
SPARSE_METHODS: tuple[str, ...] = tuple(name for name, cls in UPDATERS.items() if cls.is_sparse)
"""The methods that train sparse layers (all but ``"dense"``)."""
SCHEDULE_KEYWORDS = frozenset(f.name for f in fields(TopologySchedule))


def create_updater(name: Method | str | Mapping[str, Any], **kwargs: Any) -> BaseUpdater:
    """Build an updater by method name (``dense, static, set, rigl, srigl, gmp``) or from a config mapping with ``name``.

    Schedule fields (``update_every``, ``start``, ``end``, ``drop_fraction``, ``drop_schedule``, ``total_steps``) may
    be passed directly instead of a ``schedule``; ``drop_decay`` is the deprecated former name of ``drop_schedule``.

    :param name: a key of :data:`UPDATERS`, or a mapping holding it under ``"name"`` plus keyword arguments
    :param kwargs: the updater's fields (``seed``, ``keep_connected``, ``ablation_threshold``...) and schedule fields
    :raises ValueError: for an unknown method, or a ``schedule`` given together with schedule fields
    """
    if isinstance(name, Mapping):
        kwargs = {**name, **kwargs}
        name = kwargs.pop("name")
    if name not in UPDATERS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(UPDATERS)}")
    if "drop_decay" in kwargs:
        kwargs["drop_schedule"] = renamed("drop_decay", "drop_schedule", kwargs.pop("drop_decay"),
                                          kwargs.get("drop_schedule", "cosine"), "cosine")
    schedule_kwargs = {key: kwargs.pop(key) for key in list(kwargs) if key in SCHEDULE_KEYWORDS}
    if schedule_kwargs:
        if "schedule" in kwargs:
            raise ValueError("give either a schedule or its fields, not both")
        kwargs["schedule"] = TopologySchedule(**schedule_kwargs)
    return UPDATERS[name](**kwargs)
