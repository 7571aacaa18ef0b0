"""Sparse Stable-Baselines3 policies: SAC, TD3, DQN (+ CNN) and actor-critic (PPO/A2C, + CNN).

Sparse networks for deep RL as in Graesser et al. 2022, "The State of Sparse Training in Deep Reinforcement Learning"
(arXiv 2206.10369), with ERK layer densities and sparse-fan-in initialisation from Evci et al. 2020, "Rigging the
Lottery" (arXiv 1911.11134). The layers store only their nonzero weights (:class:`sparse_rl.nn.SparseLinear`,
:class:`sparse_rl.nn.SparseConv2d`).

Every SB3 ``policy_kwargs`` key keeps working; the extra keys are those of :class:`sparse_rl.sb3.builders.SparseConfig`
(``sparsity``, ``actor_sparsity``, ``critic_sparsity``, ``distribution``, ``dense_layers``, ``backend``,
``constant_fan_in``, ``start_dense``, ``init_scale``). Sparse by default: without ``sparsity`` a policy is 90 % sparse
(the standard setting of Graesser et al. 2022); ``sparsity=0`` (and no override) is the explicit dense baseline, SB3's
own network.

Where the sparse layers are built:

- SAC / TD3 / DQN: in the factory hooks ``make_actor``, ``make_critic`` and ``make_q_net``, so SB3's ``_build`` creates
  the optimizers on the sparse parameters and the target networks with ``load_state_dict`` (which copies the CSR
  indices too: online and target masks are equal from the start). Each network (actor, critics, q-network) meets its
  sparsity exactly over its sparse layers. The networks are the sparse classes of :mod:`sparse_rl.sb3.networks`, so
  one saved alone (``model.actor.save(path)``, ``SparseSACActor.load(path)``) loads back sparse.
- PPO / A2C: after SB3's ``_build`` (the heads and the orthogonal init come last there); the sparse layers get an
  orthogonal-like init with SB3's gains when ``ortho_init=True`` and the optimizer is recreated on the new
  parameters before any step.

The state of the topology updater (:class:`sparse_rl.sb3.TopologyCallback`) is kept in ``policy.topology_state`` and
written into the policy's state dict as tensors (:mod:`sparse_rl.sb3.policy_state`), so ``model.save`` / ``Algo.load``
carry it; after ``load_state_dict`` of weights of another sparsity, ``policy.sparse_config`` states the loaded one.

Dict observation spaces (goal-conditioned envs with ``HerReplayBuffer``): the ``Sparse*MultiInputPolicy`` classes,
named ``"SparseMultiInputPolicy"`` for every algorithm, like SB3's ``MultiInputPolicy``.

This module path is imported by saved models: keep ``sparse_rl.sb3.policies`` importable.
"""

from __future__ import annotations

import weakref
from collections.abc import MutableMapping, Sequence
from typing import Any, ClassVar

import numpy as np
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, CombinedExtractor, NatureCNN
from stable_baselines3.common.type_aliases import Schedule
from stable_baselines3.dqn.policies import DQNPolicy
from stable_baselines3.sac.policies import SACPolicy
from stable_baselines3.td3.policies import TD3Policy
from torch import nn

from sparse_rl.nn.layers import SparseLayer
from sparse_rl.sb3.builders import (
    DEFAULT_SPARSITY,
    SparseConfig,
    sparse_layers,
    sparse_orthogonal_,
    sparsify,
    sync_targets,
    target_networks,
    target_pairs,
)
from sparse_rl.sb3.networks import SparseContinuousCritic, SparseQNetwork, SparseSACActor, SparseTD3Actor
from sparse_rl.sb3.policy_state import pop_topology_state, restate_sparsity, write_topology_state

__all__ = [
    "SparseActorCriticCnnPolicy", "SparseActorCriticPolicy", "SparseDQNCnnPolicy", "SparseDQNMultiInputPolicy",
    "SparseDQNPolicy", "SparseMultiInputActorCriticPolicy", "SparseSACMultiInputPolicy", "SparseSACPolicy",
    "SparseTD3MultiInputPolicy", "SparseTD3Policy",
]


def _restate_after_load(module: nn.Module, incompatible_keys: Any) -> None:
    """``load_state_dict`` post-hook: the sparsity config states the sparsity of the loaded layers."""
    restate_sparsity(module)


class _SyncTargetsAfterLoad:
    """``load_state_dict`` post-hook of a policy's online networks (``critic.load_state_dict(...)``, ``set_parameters``
    with the critic's keys only): the target kept its old mask, and SB3's Polyak update averaged the loaded values
    slot by slot into other connections. A whole policy loads its targets after their online networks, so its saved
    targets are what remains.

    The policy is held weakly: a copy of the online network alone (``deepcopy``, ``pickle``) does not carry the whole
    policy along, and its hook does nothing; a deep copy of the whole policy gets a hook on the copy."""

    def __init__(self, policy: nn.Module | None) -> None:
        self.policy = weakref.ref(policy) if policy is not None else None

    def __call__(self, module: nn.Module, incompatible_keys: Any) -> None:
        policy = self.policy() if self.policy is not None else None
        if policy is not None:
            sync_targets(policy)

    def __deepcopy__(self, memo: dict[int, Any]) -> _SyncTargetsAfterLoad:
        policy = self.policy() if self.policy is not None else None
        return _SyncTargetsAfterLoad(memo.get(id(policy)))

    def __reduce__(self) -> tuple[Any, tuple[None]]:
        return _SyncTargetsAfterLoad, (None,)


class SparsePolicyMixin:
    """Sparsity options, constructor parameters and topology state shared by the ``Sparse*Policy`` classes.

    :param sparsity: fraction of zero weights over the layers made sparse, in [0, 1); default 0.9, the standard
        90 % of Graesser et al. 2022. ``0`` (with no override) is the explicit dense baseline: SB3's own network
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
        sparsity: float = DEFAULT_SPARSITY,
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
        self.register_load_state_dict_post_hook(_restate_after_load)  # type: ignore[attr-defined]

    def sparsity_group(self, name: str) -> str:
        """Sparsity group of a layer of the policy (by its name): ``"actor"``, ``"critic"`` or ``"shared"``."""
        return "shared"

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()  # type: ignore[misc]
        data.update(self.sparse_config.kwargs())
        return data

    def _save_to_state_dict(self, destination: MutableMapping[str, Any], prefix: str, keep_vars: bool) -> None:
        """Add the topology-updater state (see :class:`sparse_rl.sb3.TopologyCallback`) to the state dict, as tensors."""
        super()._save_to_state_dict(destination, prefix, keep_vars)  # type: ignore[misc]
        write_topology_state(self.topology_state, destination, prefix)

    def _load_from_state_dict(self, state_dict: MutableMapping[str, Any], prefix: str, *args: Any) -> None:
        """Take the topology state out of the state dict (the current tensor format, or ``_extra_state`` of old files)."""
        self.topology_state = pop_topology_state(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args)  # type: ignore[misc]

    def _build(self, lr_schedule: Schedule) -> None:
        super()._build(lr_schedule)  # type: ignore[misc]
        self.sparse_config.check_matched()
        for _, target in target_pairs(self):  # SB3's polyak_update writes them through .data: no stale cached weight
            target.frozen_weight_cache = False
        for online, _ in target_networks(self):  # an online network loaded alone passes its masks to its target
            online.register_load_state_dict_post_hook(_SyncTargetsAfterLoad(self))


class _SparseActorCriticOffPolicyMixin(SparsePolicyMixin):
    """Sparse ``make_actor`` / ``make_critic`` for SAC and TD3 (SB3's hooks, building the sparse network classes)."""

    actor_class: ClassVar[type[SparseSACActor] | type[SparseTD3Actor]]

    def sparsity_group(self, name: str) -> str:
        return "actor" if name.split(".", 1)[0] in ("actor", "actor_target") else "critic"

    def make_actor(self, features_extractor: BaseFeaturesExtractor | None = None) -> SparseSACActor | SparseTD3Actor:
        actor_kwargs = self._update_features_extractor(self.actor_kwargs, features_extractor)  # type: ignore[attr-defined]
        actor = self.actor_class(**actor_kwargs).to(self.device)  # type: ignore[attr-defined]
        sparsify(actor, "actor", self.sparse_config, group_of=lambda name, module: "actor")
        return actor

    def make_critic(self, features_extractor: BaseFeaturesExtractor | None = None) -> SparseContinuousCritic:
        critic_kwargs = self._update_features_extractor(self.critic_kwargs, features_extractor)  # type: ignore[attr-defined]
        critic = SparseContinuousCritic(**critic_kwargs).to(self.device)  # type: ignore[attr-defined]
        sparsify(critic, "critic", self.sparse_config, group_of=lambda name, module: "critic")
        return critic


class SparseSACPolicy(_SparseActorCriticOffPolicyMixin, SACPolicy):
    """SAC policy whose actor and critics are sparse (SB3's ``SACPolicy`` arguments plus the sparsity options of
    :class:`SparsePolicyMixin`)."""

    actor_class = SparseSACActor


class SparseSACMultiInputPolicy(SparseSACPolicy):
    """Sparse SAC policy for Dict observations (goal-conditioned envs, ``HerReplayBuffer``): SB3's
    ``CombinedExtractor`` features extractor; alias ``"SparseMultiInputPolicy"``."""

    def __init__(self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor,
                 **kwargs: Any) -> None:
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class SparseTD3Policy(_SparseActorCriticOffPolicyMixin, TD3Policy):
    """TD3 policy whose actor and critics are sparse (SB3's ``TD3Policy`` arguments plus the sparsity options of
    :class:`SparsePolicyMixin`)."""

    actor_class = SparseTD3Actor


class SparseTD3MultiInputPolicy(SparseTD3Policy):
    """Sparse TD3 policy for Dict observations (``CombinedExtractor``); alias ``"SparseMultiInputPolicy"``."""

    def __init__(self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor,
                 **kwargs: Any) -> None:
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class SparseDQNPolicy(SparsePolicyMixin, DQNPolicy):
    """DQN policy with a sparse q-network (``critic_sparsity`` overrides ``sparsity`` for it)."""

    def sparsity_group(self, name: str) -> str:
        return "critic"

    def make_q_net(self) -> SparseQNetwork:
        net_args = self._update_features_extractor(self.net_args, features_extractor=None)
        q_net = SparseQNetwork(**net_args).to(self.device)
        sparsify(q_net, "q_net", self.sparse_config, group_of=lambda name, module: "critic")
        return q_net


class SparseDQNCnnPolicy(SparseDQNPolicy):
    """Sparse DQN policy for images: NatureCNN features extractor (its convolutions and 3136x512 linear are sparse)."""

    def __init__(self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = NatureCNN, **kwargs: Any) -> None:
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class SparseDQNMultiInputPolicy(SparseDQNPolicy):
    """Sparse DQN policy for Dict observations (``CombinedExtractor``); alias ``"SparseMultiInputPolicy"``."""

    def __init__(self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor,
                 **kwargs: Any) -> None:
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

    def sparsity_group(self, name: str) -> str:
        return self._layer_group(name, None)

    def _layer_group(self, name: str, module: nn.Module | None) -> str:
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
        if self.ortho_init:  # the layers built here and any supplied sparse (SB3's static init_weights has no init_scale)
            for name, layer in sparse_layers(self).items():
                sparse_orthogonal_(layer, gain=_ppo_gain(name), init_scale=self.sparse_config.init_scale)
        if built:
            # Recreate the optimizer on the sparse parameters (no step has been taken yet).
            self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)  # type: ignore[call-arg]
        self.sparse_config.check_matched()

    @staticmethod
    def init_weights(module: nn.Module, gain: float = 1) -> None:
        """SB3's orthogonal init, extended to sparse layers (orthogonal-like, see :func:`sparse_orthogonal_`, with the
        sparse fan-in scale; ``_build`` initialises every sparse layer again with the policy's ``init_scale``)."""
        if isinstance(module, SparseLayer):
            sparse_orthogonal_(module, gain=gain)
        else:
            ActorCriticPolicy.init_weights(module, gain=gain)


class SparseActorCriticCnnPolicy(SparseActorCriticPolicy):
    """Sparse actor-critic policy for images (NatureCNN features extractor)."""

    def __init__(self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = NatureCNN, **kwargs: Any) -> None:
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class SparseMultiInputActorCriticPolicy(SparseActorCriticPolicy):
    """Sparse actor-critic policy (PPO, A2C) for Dict observations (``CombinedExtractor``); alias
    ``"SparseMultiInputPolicy"``."""

    def __init__(self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor,
                 **kwargs: Any) -> None:
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


def register_policy_aliases() -> None:
    """Let SB3 (and RL Zoo configs) name the sparse policies by string: ``SparseMlpPolicy``, ``SparseCnnPolicy`` and
    ``SparseMultiInputPolicy``.

    Adds entries to each algorithm's public ``policy_aliases`` table; existing aliases are never replaced.
    """
    from stable_baselines3 import A2C, DQN, PPO, SAC, TD3

    actor_critic = {"SparseMlpPolicy": SparseActorCriticPolicy, "SparseCnnPolicy": SparseActorCriticCnnPolicy,
                    "SparseMultiInputPolicy": SparseMultiInputActorCriticPolicy}
    table = {
        SAC: {"SparseMlpPolicy": SparseSACPolicy, "SparseMultiInputPolicy": SparseSACMultiInputPolicy},
        TD3: {"SparseMlpPolicy": SparseTD3Policy, "SparseMultiInputPolicy": SparseTD3MultiInputPolicy},
        DQN: {"SparseMlpPolicy": SparseDQNPolicy, "SparseCnnPolicy": SparseDQNCnnPolicy,
              "SparseMultiInputPolicy": SparseDQNMultiInputPolicy},
        PPO: actor_critic, A2C: actor_critic,
    }
    for algo, aliases in table.items():
        for alias, policy in aliases.items():
            algo.policy_aliases.setdefault(alias, policy)


register_policy_aliases()
