"""Sparse Stable-Baselines3 policies: SAC, TD3, DQN (+ CNN) and actor-critic (PPO/A2C, + CNN).

Sparse networks for deep RL as in Graesser et al. 2022, "The State of Sparse Training in Deep Reinforcement Learning"
(ERK layer densities and sparse-fan-in initialisation from Evci et al. 2020, "Rigging the Lottery"). The layers store
only their nonzero weights (:class:`sparse_rl.nn.SparseLinear`, :class:`sparse_rl.nn.SparseConv2d`).

Every SB3 ``policy_kwargs`` key keeps working; the extra keys are those of :class:`sparse_rl.sb3.builders.SparseConfig`
(``sparsity``, ``actor_sparsity``, ``critic_sparsity``, ``distribution``, ``dense_layers``, ``backend``,
``constant_fan_in``, ``start_dense``, ``init_scale``). With ``sparsity=0`` (and no override) the policy is SB3's own.

Where the sparse layers are built:

- SAC / TD3 / DQN: in the factory hooks ``make_actor``, ``make_critic`` and ``make_q_net``, so SB3's ``_build`` creates
  the optimizers on the sparse parameters and the target networks with ``load_state_dict`` (which copies the CSR
  indices too: online and target masks are equal from the start). Each network (actor, critics, q-network) meets its
  sparsity exactly over its sparse layers.
- PPO / A2C: after SB3's ``_build`` (the heads and the orthogonal init come last there); the sparse layers get an
  orthogonal-like init with SB3's gains when ``ortho_init=True`` and the optimizer is recreated on the new
  parameters before any step.

The state of the topology updater (:class:`sparse_rl.sb3.TopologyCallback`) is kept in ``policy.topology_state`` and
saved in the policy's state dict (``_extra_state``), so ``model.save`` / ``Algo.load`` carry it.

This module path is imported by saved models: keep ``sparse_rl.sb3.policies`` importable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from stable_baselines3.common.policies import ActorCriticPolicy, ContinuousCritic
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, NatureCNN
from stable_baselines3.common.type_aliases import Schedule
from stable_baselines3.dqn.policies import DQNPolicy, QNetwork
from stable_baselines3.sac.policies import Actor as SACActor
from stable_baselines3.sac.policies import SACPolicy
from stable_baselines3.td3.policies import Actor as TD3Actor
from stable_baselines3.td3.policies import TD3Policy
from torch import nn

from sparse_rl.nn.layers import SparseWeightMixin
from sparse_rl.sb3.builders import SparseConfig, sparse_orthogonal_, sparsify

__all__ = [
    "SparseActorCriticCnnPolicy", "SparseActorCriticPolicy", "SparseDQNCnnPolicy", "SparseDQNPolicy", "SparseSACPolicy",
    "SparseTD3Policy",
]


class SparsePolicyMixin:
    """Sparsity options, constructor parameters and topology state shared by the ``Sparse*Policy`` classes.

    :param sparsity: fraction of zero weights over the layers made sparse, in [0, 1)
    :param actor_sparsity: override of ``sparsity`` for the actor (policy) network
    :param critic_sparsity: override of ``sparsity`` for the critics / q-network / value network
    :param distribution: ``"erk"`` (default), ``"uniform"`` or ``"er"``
    :param dense_layers: layers kept dense: names, name prefixes, ``"output"`` (heads) or ``"input"``;
        default ``("output",)``
    :param backend: sparse kernel backend (``"auto"`` default)
    :param constant_fan_in: constant fan-in masks (for ``method="srigl"``)
    :param start_dense: sparse layers start fully connected (for ``method="gmp"``, which prunes to ``sparsity``)
    :param init_scale: ``"sparse"`` (weights scaled by the sparse fan-in) or ``"dense"``
    """

    sparse_config: SparseConfig
    topology_state: dict[str, Any] | None

    def __init__(
        self,
        *args: Any,
        sparsity: float = 0.0,
        actor_sparsity: float | None = None,
        critic_sparsity: float | None = None,
        distribution: str = "erk",
        dense_layers: Sequence[str] | None = None,
        backend: str = "auto",
        constant_fan_in: bool = False,
        start_dense: bool = False,
        init_scale: str = "sparse",
        **kwargs: Any,
    ) -> None:
        self.sparse_config = SparseConfig(
            sparsity=sparsity, actor_sparsity=actor_sparsity, critic_sparsity=critic_sparsity, distribution=distribution,
            dense_layers=dense_layers, backend=backend, constant_fan_in=constant_fan_in, start_dense=start_dense,
            init_scale=init_scale,
        )
        self.topology_state = None
        super().__init__(*args, **kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()  # type: ignore[misc]
        data.update(self.sparse_config.kwargs())
        return data

    def get_extra_state(self) -> dict[str, Any]:
        """Topology-updater state, saved with the policy parameters (see :class:`sparse_rl.sb3.TopologyCallback`)."""
        return dict(self.topology_state or {})

    def set_extra_state(self, state: Any) -> None:
        self.topology_state = dict(state) if state else None

    def _build(self, lr_schedule: Schedule) -> None:
        super()._build(lr_schedule)  # type: ignore[misc]
        self.sparse_config.check_dense_layers()


class _SparseActorCriticOffPolicyMixin(SparsePolicyMixin):
    """Sparse ``make_actor`` / ``make_critic`` for SAC and TD3."""

    def make_actor(self, features_extractor: BaseFeaturesExtractor | None = None) -> SACActor | TD3Actor:
        actor = super().make_actor(features_extractor)  # type: ignore[misc]
        sparsify(actor, "actor", self.sparse_config, group_of=lambda name, module: "actor")
        return actor

    def make_critic(self, features_extractor: BaseFeaturesExtractor | None = None) -> ContinuousCritic:
        critic = super().make_critic(features_extractor)  # type: ignore[misc]
        sparsify(critic, "critic", self.sparse_config, group_of=lambda name, module: "critic")
        return critic


class SparseSACPolicy(_SparseActorCriticOffPolicyMixin, SACPolicy):
    """SAC policy whose actor and critics are sparse (SB3's ``SACPolicy`` arguments plus the sparsity options of
    :class:`SparsePolicyMixin`)."""


class SparseTD3Policy(_SparseActorCriticOffPolicyMixin, TD3Policy):
    """TD3 policy whose actor and critics are sparse (SB3's ``TD3Policy`` arguments plus the sparsity options of
    :class:`SparsePolicyMixin`)."""


class SparseDQNPolicy(SparsePolicyMixin, DQNPolicy):
    """DQN policy with a sparse q-network (``critic_sparsity`` overrides ``sparsity`` for it)."""

    def make_q_net(self) -> QNetwork:
        q_net = super().make_q_net()
        sparsify(q_net, "q_net", self.sparse_config, group_of=lambda name, module: "critic")
        return q_net


class SparseDQNCnnPolicy(SparseDQNPolicy):
    """Sparse DQN policy for images: NatureCNN features extractor (its convolutions and 3136x512 linear are sparse)."""

    def __init__(self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = NatureCNN, **kwargs: Any) -> None:
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


def _ppo_gain(name: str) -> float:
    """SB3's orthogonal-init gains: 0.01 for the action head, 1 for the value head, sqrt(2) elsewhere."""
    if name == "action_net" or name.startswith("action_net."):
        return 0.01
    if name == "value_net" or name.startswith("value_net."):
        return 1.0
    return float(np.sqrt(2))


class SparseActorCriticPolicy(SparsePolicyMixin, ActorCriticPolicy):
    """Actor-critic policy (PPO, A2C) with a sparse MLP extractor, sparse features extractor and optionally sparse heads.

    ``actor_sparsity`` applies to ``mlp_extractor.policy_net`` and ``action_net`` (and the actor's own features
    extractor when it is not shared), ``critic_sparsity`` to ``mlp_extractor.value_net``, ``value_net`` and
    ``vf_features_extractor``; a shared features extractor uses ``sparsity``.
    """

    def _layer_group(self, name: str, module: nn.Module) -> str:
        if name.startswith(("mlp_extractor.policy_net", "action_net", "pi_features_extractor")):
            return "actor"
        if name.startswith(("mlp_extractor.value_net", "value_net", "vf_features_extractor")):
            return "critic"
        if name.startswith("features_extractor") and not self.share_features_extractor:
            return "actor"  # features_extractor is pi_features_extractor when not shared
        return "shared"

    def _build(self, lr_schedule: Schedule) -> None:
        ActorCriticPolicy._build(self, lr_schedule)
        built = sparsify(self, "", self.sparse_config, group_of=self._layer_group)
        if built:
            if self.ortho_init:
                for name, layer in built.items():
                    sparse_orthogonal_(layer, gain=_ppo_gain(name))
            # Recreate the optimizer on the sparse parameters (no step has been taken yet).
            self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)  # type: ignore[call-arg]
        self.sparse_config.check_dense_layers()

    @staticmethod
    def init_weights(module: nn.Module, gain: float = 1) -> None:
        """SB3's orthogonal init, extended to sparse layers (orthogonal-like, see :func:`sparse_orthogonal_`)."""
        if isinstance(module, SparseWeightMixin):
            sparse_orthogonal_(module, gain=gain)
        else:
            ActorCriticPolicy.init_weights(module, gain=gain)


class SparseActorCriticCnnPolicy(SparseActorCriticPolicy):
    """Sparse actor-critic policy for images (NatureCNN features extractor)."""

    def __init__(self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = NatureCNN, **kwargs: Any) -> None:
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


def register_policy_aliases() -> None:
    """Let SB3 (and RL Zoo configs) name the sparse policies by string: ``SparseMlpPolicy`` / ``SparseCnnPolicy``.

    Adds entries to each algorithm's public ``policy_aliases`` table; existing aliases are never replaced.
    """
    from stable_baselines3 import A2C, DQN, PPO, SAC, TD3

    table = {
        SAC: {"SparseMlpPolicy": SparseSACPolicy}, TD3: {"SparseMlpPolicy": SparseTD3Policy},
        DQN: {"SparseMlpPolicy": SparseDQNPolicy, "SparseCnnPolicy": SparseDQNCnnPolicy},
        PPO: {"SparseMlpPolicy": SparseActorCriticPolicy, "SparseCnnPolicy": SparseActorCriticCnnPolicy},
        A2C: {"SparseMlpPolicy": SparseActorCriticPolicy, "SparseCnnPolicy": SparseActorCriticCnnPolicy},
    }
    for algo, aliases in table.items():
        for alias, policy in aliases.items():
            algo.policy_aliases.setdefault(alias, policy)


register_policy_aliases()
