"""Sparse policies for sb3-contrib's TQC, QR-DQN, CrossQ, RecurrentPPO and MaskablePPO.

Sparse networks for deep RL as in Graesser et al. 2022, "The State of Sparse Training in Deep Reinforcement Learning"
(arXiv 2206.10369), with ERK layer densities from Evci et al. 2020, "Rigging the Lottery" (arXiv 1911.11134); the
algorithms are Kuznetsov et al. 2020 (TQC), Dabney et al. 2018 (QR-DQN), Bhatt et al. 2024 (CrossQ), and PPO
(Schulman et al. 2017) with an LSTM or with invalid-action masking (Huang and Ontanon 2020). Every policy takes the
algorithm's own ``policy_kwargs`` plus the sparsity options of :class:`sparse_rl.sb3.policies.SparsePolicyMixin`
(``sparsity``, default 0.9; ``sparsity=0`` is sb3-contrib's own dense network).

Where the sparse layers are built, each algorithm through its own factory hooks, before the optimizers and target
copies exist (as for SB3's own algorithms, :mod:`sparse_rl.sb3.policies`):

- TQC: ``make_actor`` / ``make_critic`` build :class:`SparseTQCActor` / :class:`SparseTQCCritic` (the quantile
  critics); ``critic_target`` is built by ``make_critic`` and given the online weights with ``load_state_dict``, which
  copies the CSR indices too. The actor's ``mu`` / ``log_std`` and each critic's quantile output layer stay dense by
  default (``dense_layers=("output",)``).
- QR-DQN: ``make_quantile_net`` builds :class:`SparseQuantileNetwork` (online and target).
- CrossQ: ``make_actor`` / ``make_critic``; CrossQ has no target network, and its BatchRenorm layers stay dense
  (they are not weight matrices).
- RecurrentPPO: after ``_build`` like PPO (the MLP extractor, heads, and the features extractor when it has layers);
  the linear layer that replaces the critic LSTM (``enable_critic_lstm=False``) is made sparse right after the
  constructor creates it. **The LSTMs stay dense** (``nn.LSTM`` is not a sparse layer here): they are outside the
  sparsity budget and not counted by :func:`sparse_rl.sparsity_report`, which counts linear and convolutional weights.
- MaskablePPO: after its own ``_build``, like PPO.

The on-policy policies re-apply SB3's orthogonal init to the sparse layers (``ortho_init=True``) and recreate the
optimizer on the sparse parameters before any step. This module path is imported by saved models: keep it importable.
"""

from __future__ import annotations

from typing import Any, ClassVar

from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from sb3_contrib.crossq.policies import CrossQPolicy
from sb3_contrib.qrdqn.policies import QRDQNPolicy
from sb3_contrib.tqc.policies import TQCPolicy
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, CombinedExtractor, NatureCNN
from stable_baselines3.common.type_aliases import Schedule
from torch import nn

from sparse_rl.sb3.builders import sparse_orthogonal_, sparsify
from sparse_rl.sb3.contrib.networks import (
    SparseCrossQActor,
    SparseCrossQCritic,
    SparseQuantileNetwork,
    SparseTQCActor,
    SparseTQCCritic,
)
from sparse_rl.sb3.policies import SparseActorCriticPolicy, SparsePolicyMixin, _ppo_gain

__all__ = [
    "SparseCrossQPolicy", "SparseMaskableActorCriticCnnPolicy", "SparseMaskableActorCriticPolicy",
    "SparseMaskableMultiInputActorCriticPolicy", "SparseQRDQNCnnPolicy", "SparseQRDQNMultiInputPolicy",
    "SparseQRDQNPolicy", "SparseRecurrentActorCriticCnnPolicy", "SparseRecurrentActorCriticPolicy",
    "SparseRecurrentMultiInputActorCriticPolicy", "SparseTQCCnnPolicy", "SparseTQCMultiInputPolicy", "SparseTQCPolicy",
    "register_policy_aliases",
]


class _SparseActorCriticNetworksMixin(SparsePolicyMixin):
    """Sparse ``make_actor`` / ``make_critic`` (the hooks of TQC and CrossQ), building the sparse network classes."""

    actor_class: ClassVar[type[nn.Module]]
    critic_class: ClassVar[type[nn.Module]]

    def sparsity_group(self, name: str) -> str:
        return "actor" if name.split(".", 1)[0] in ("actor", "actor_target") else "critic"

    def make_actor(self, features_extractor: BaseFeaturesExtractor | None = None) -> Any:
        actor_kwargs = self._update_features_extractor(self.actor_kwargs, features_extractor)  # type: ignore[attr-defined]
        actor = self.actor_class(**actor_kwargs).to(self.device)  # type: ignore[attr-defined]
        sparsify(actor, "actor", self.sparse_config, group_of=lambda name, module: "actor")
        return actor

    def make_critic(self, features_extractor: BaseFeaturesExtractor | None = None) -> Any:
        critic_kwargs = self._update_features_extractor(self.critic_kwargs, features_extractor)  # type: ignore[attr-defined]
        critic = self.critic_class(**critic_kwargs).to(self.device)  # type: ignore[attr-defined]
        sparsify(critic, "critic", self.sparse_config, group_of=lambda name, module: "critic")
        return critic


# ------------------------------------------------------------------------------------------------------------ TQC
class SparseTQCPolicy(_SparseActorCriticNetworksMixin, TQCPolicy):
    """TQC policy whose actor and quantile critics are sparse (sb3-contrib's ``TQCPolicy`` arguments plus the sparsity
    options of :class:`~sparse_rl.sb3.policies.SparsePolicyMixin`); alias ``"SparseMlpPolicy"`` for ``TQC``."""

    actor_class = SparseTQCActor
    critic_class = SparseTQCCritic


class SparseTQCCnnPolicy(SparseTQCPolicy):
    """Sparse TQC policy for images (NatureCNN features extractor, its layers sparse); alias ``"SparseCnnPolicy"``."""

    def __init__(self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = NatureCNN, **kwargs: Any) -> None:
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class SparseTQCMultiInputPolicy(SparseTQCPolicy):
    """Sparse TQC policy for Dict observations (``CombinedExtractor``); alias ``"SparseMultiInputPolicy"``."""

    def __init__(self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor,
                 **kwargs: Any) -> None:
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


# --------------------------------------------------------------------------------------------------------- QR-DQN
class SparseQRDQNPolicy(SparsePolicyMixin, QRDQNPolicy):
    """QR-DQN policy with a sparse quantile network (``critic_sparsity`` overrides ``sparsity`` for it); alias
    ``"SparseMlpPolicy"`` for ``QRDQN``."""

    def sparsity_group(self, name: str) -> str:
        return "critic"

    def make_quantile_net(self) -> SparseQuantileNetwork:
        net_args = self._update_features_extractor(self.net_args, features_extractor=None)
        quantile_net = SparseQuantileNetwork(**net_args).to(self.device)
        sparsify(quantile_net, "quantile_net", self.sparse_config, group_of=lambda name, module: "critic")
        return quantile_net


class SparseQRDQNCnnPolicy(SparseQRDQNPolicy):
    """Sparse QR-DQN policy for images (NatureCNN, its convolutions and linear layer sparse); alias ``"SparseCnnPolicy"``."""

    def __init__(self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = NatureCNN, **kwargs: Any) -> None:
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class SparseQRDQNMultiInputPolicy(SparseQRDQNPolicy):
    """Sparse QR-DQN policy for Dict observations (``CombinedExtractor``); alias ``"SparseMultiInputPolicy"``."""

    def __init__(self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor,
                 **kwargs: Any) -> None:
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


# ---------------------------------------------------------------------------------------------------------- CrossQ
class SparseCrossQPolicy(_SparseActorCriticNetworksMixin, CrossQPolicy):
    """CrossQ policy whose actor and critics are sparse (BatchRenorm layers dense; no target network); alias
    ``"SparseMlpPolicy"`` for ``CrossQ``."""

    actor_class = SparseCrossQActor
    critic_class = SparseCrossQCritic


# ------------------------------------------------------------------------------------ RecurrentPPO and MaskablePPO
class _SparseOnPolicyMixin(SparsePolicyMixin):
    """Layer groups and orthogonal init of :class:`~sparse_rl.sb3.policies.SparseActorCriticPolicy`, for sb3-contrib's
    actor-critic policies (``actor_sparsity``: policy side, ``critic_sparsity``: value side)."""

    sparsity_group = SparseActorCriticPolicy.sparsity_group
    _layer_group = SparseActorCriticPolicy._layer_group
    init_weights = staticmethod(SparseActorCriticPolicy.init_weights)

    def _make_sparse(self, lr_schedule: Schedule) -> None:
        """Make the built network sparse (orthogonal init with SB3's gains) and recreate the optimizer on it."""
        built = sparsify(self, "", self.sparse_config, group_of=self._layer_group)  # type: ignore[arg-type]
        if built:
            if self.ortho_init:  # type: ignore[attr-defined]
                for name, layer in built.items():
                    sparse_orthogonal_(layer, gain=_ppo_gain(name), init_scale=self.sparse_config.init_scale)
            self._new_optimizer(lr_schedule(1))

    def _new_optimizer(self, lr: float) -> None:
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr, **self.optimizer_kwargs)  # type: ignore[attr-defined]


class SparseRecurrentActorCriticPolicy(_SparseOnPolicyMixin, RecurrentActorCriticPolicy):
    """RecurrentPPO policy with a sparse MLP extractor, sparse heads (when not kept dense) and sparse features extractor;
    **the LSTMs stay dense**. Without a critic LSTM (``enable_critic_lstm=False``, ``shared_lstm=False``) the linear
    layer that stands in for it (``critic``) is sparse too, in the critic group. Aliases ``"SparseMlpLstmPolicy"`` and
    ``"SparseMlpPolicy"`` for ``RecurrentPPO``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(self.critic, nn.Linear):  # created by the constructor after _build: made sparse now
            holder = nn.Module()
            holder.critic = self.critic
            if sparsify(holder, "", self.sparse_config, group_of=lambda name, module: "critic", heads=set(),
                        inputs={"critic"}):
                self.critic = holder.critic
                self._new_optimizer(self.optimizer.param_groups[0]["lr"])
        self.sparse_config.check_matched()

    def _layer_group(self, name: str, module: nn.Module | None) -> str:
        if name.split(".", 1)[0] in ("critic", "lstm_critic"):
            return "critic"
        return SparseActorCriticPolicy._layer_group(self, name, module)  # type: ignore[arg-type]

    def _build(self, lr_schedule: Schedule) -> None:
        ActorCriticPolicy._build(self, lr_schedule)  # sb3-contrib's _build_mlp_extractor reads the LSTM output
        self._make_sparse(lr_schedule)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        """sb3-contrib's parameters plus the LSTM's, so that ``policy.save`` / ``load`` rebuilds the same LSTMs."""
        data = super()._get_constructor_parameters()
        lstm = self.lstm_actor
        data.update(lstm_hidden_size=lstm.hidden_size, n_lstm_layers=lstm.num_layers, shared_lstm=self.shared_lstm,
                    enable_critic_lstm=self.enable_critic_lstm, lstm_kwargs=self.lstm_kwargs)
        return data


class SparseRecurrentActorCriticCnnPolicy(SparseRecurrentActorCriticPolicy):
    """Sparse recurrent policy for images (NatureCNN); aliases ``"SparseCnnLstmPolicy"`` and ``"SparseCnnPolicy"``."""

    def __init__(self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = NatureCNN, **kwargs: Any) -> None:
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class SparseRecurrentMultiInputActorCriticPolicy(SparseRecurrentActorCriticPolicy):
    """Sparse recurrent policy for Dict observations (``CombinedExtractor``); aliases ``"SparseMultiInputLstmPolicy"``
    and ``"SparseMultiInputPolicy"``."""

    def __init__(self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor,
                 **kwargs: Any) -> None:
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class SparseMaskableActorCriticPolicy(_SparseOnPolicyMixin, MaskableActorCriticPolicy):
    """MaskablePPO policy with a sparse MLP extractor, features extractor and (optionally) heads; alias
    ``"SparseMlpPolicy"`` for ``MaskablePPO``."""

    def _build(self, lr_schedule: Schedule) -> None:
        MaskableActorCriticPolicy._build(self, lr_schedule)
        self._make_sparse(lr_schedule)
        self.sparse_config.check_matched()


class SparseMaskableActorCriticCnnPolicy(SparseMaskableActorCriticPolicy):
    """Sparse maskable policy for images (NatureCNN); alias ``"SparseCnnPolicy"``."""

    def __init__(self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = NatureCNN, **kwargs: Any) -> None:
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class SparseMaskableMultiInputActorCriticPolicy(SparseMaskableActorCriticPolicy):
    """Sparse maskable policy for Dict observations (``CombinedExtractor``); alias ``"SparseMultiInputPolicy"``."""

    def __init__(self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor,
                 **kwargs: Any) -> None:
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


def register_policy_aliases() -> None:
    """Name the sparse policies by string for sb3-contrib's algorithms (``SparseMlpPolicy``, ``SparseCnnPolicy``,
    ``SparseMultiInputPolicy``; for RecurrentPPO also ``SparseMlpLstmPolicy``, ``SparseCnnLstmPolicy`` and
    ``SparseMultiInputLstmPolicy``), in each algorithm's ``policy_aliases``; existing aliases are never replaced."""
    from sb3_contrib import QRDQN, TQC, CrossQ, MaskablePPO, RecurrentPPO

    recurrent = {"SparseMlpPolicy": SparseRecurrentActorCriticPolicy, "SparseCnnPolicy": SparseRecurrentActorCriticCnnPolicy,
                 "SparseMultiInputPolicy": SparseRecurrentMultiInputActorCriticPolicy}
    table: dict[Any, dict[str, type]] = {
        TQC: {"SparseMlpPolicy": SparseTQCPolicy, "SparseCnnPolicy": SparseTQCCnnPolicy,
              "SparseMultiInputPolicy": SparseTQCMultiInputPolicy},
        QRDQN: {"SparseMlpPolicy": SparseQRDQNPolicy, "SparseCnnPolicy": SparseQRDQNCnnPolicy,
                "SparseMultiInputPolicy": SparseQRDQNMultiInputPolicy},
        CrossQ: {"SparseMlpPolicy": SparseCrossQPolicy},  # sb3-contrib's CrossQ has an MLP policy only
        RecurrentPPO: {**recurrent, **{name.replace("Policy", "LstmPolicy"): cls for name, cls in recurrent.items()}},
        MaskablePPO: {"SparseMlpPolicy": SparseMaskableActorCriticPolicy,
                      "SparseCnnPolicy": SparseMaskableActorCriticCnnPolicy,
                      "SparseMultiInputPolicy": SparseMaskableMultiInputActorCriticPolicy},
    }
    for algo, aliases in table.items():
        for alias, policy in aliases.items():
            algo.policy_aliases.setdefault(alias, policy)


register_policy_aliases()
