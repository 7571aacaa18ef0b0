"""Sparse sb3-contrib sub-networks: TQC's actor and quantile critics, QR-DQN's quantile network, CrossQ's actor and
critics, each saving and loading on its own, still sparse.

Like :mod:`sparse_rl.sb3.networks` for SB3's own networks: sb3-contrib's classes plus the ``sparse_layout`` /
``sparse_backend`` constructor parameters of :class:`~sparse_rl.sb3.networks.SparseNetworkMixin`, so that
``net.save(path)`` / ``type(net).load(path)`` rebuild the same sparse layers (Graesser et al. 2022 sparse networks,
stored as CSR). sb3-contrib's TQC and CrossQ critics, and CrossQ's actor, do not save all their constructor arguments
(``net_arch``, ``n_quantiles``, the BatchRenorm settings...): the classes here add them, so a critic saved alone
loads back with its own architecture.
"""

from __future__ import annotations

from typing import Any

from gymnasium import spaces
from sb3_contrib.crossq.policies import Actor as CrossQActor
from sb3_contrib.crossq.policies import CrossQCritic
from sb3_contrib.qrdqn.policies import QuantileNetwork
from sb3_contrib.tqc.policies import Actor as TQCActor
from sb3_contrib.tqc.policies import Critic as TQCCritic
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from sparse_rl.sb3.networks import SparseCriticMixin, SparseNetworkMixin

__all__ = ["SparseCrossQActor", "SparseCrossQCritic", "SparseQuantileNetwork", "SparseTQCActor", "SparseTQCCritic"]

#: CrossQ's BatchRenorm arguments (sb3-contrib's defaults), which its actor and critic do not save themselves
BATCH_NORM_DEFAULTS: dict[str, Any] = dict(batch_norm=True, batch_norm_momentum=0.01, batch_norm_eps=0.001,
                                           renorm_warmup_steps=100_000)


class SparseTQCActor(SparseNetworkMixin, TQCActor):
    """sb3-contrib's TQC ``Actor`` with sparse layers that survive ``actor.save`` / ``SparseTQCActor.load``."""


class SparseTQCCritic(SparseCriticMixin, TQCCritic):
    """sb3-contrib's TQC quantile ``Critic`` with sparse layers, saving every constructor argument (``net_arch``,
    ``n_quantiles``, ``n_critics``...), so that ``critic.save`` / ``SparseTQCCritic.load`` round-trips.

    Same parameters as TQC's ``Critic``, plus those of :class:`~sparse_rl.sb3.networks.SparseNetworkMixin`.
    """

    saved_attributes = ("n_quantiles", "n_critics", "share_features_extractor")

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        net_arch: list[int],
        features_extractor: BaseFeaturesExtractor,
        features_dim: int,
        activation_fn: type[nn.Module] = nn.ReLU,
        normalize_images: bool = True,
        n_quantiles: int = 25,
        n_critics: int = 2,
        share_features_extractor: bool = False,
        sparse_layout: dict[str, int] | None = None,
        sparse_backend: str = "auto",
    ) -> None:
        super().__init__(
            observation_space, action_space, net_arch, features_extractor, features_dim, activation_fn=activation_fn,
            normalize_images=normalize_images, n_quantiles=n_quantiles, n_critics=n_critics,
            share_features_extractor=share_features_extractor, sparse_layout=sparse_layout, sparse_backend=sparse_backend,
        )
        self._keep_architecture(net_arch, features_dim, activation_fn)


class SparseQuantileNetwork(SparseNetworkMixin, QuantileNetwork):
    """sb3-contrib's QR-DQN ``QuantileNetwork`` with sparse layers that survive ``quantile_net.save`` /
    ``SparseQuantileNetwork.load``."""


class _BatchNormArgsMixin(SparseNetworkMixin):
    """Keeps CrossQ's BatchRenorm arguments, which sb3-contrib's CrossQ networks take but do not save."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        params = {key: kwargs.get(key, default) for key, default in BATCH_NORM_DEFAULTS.items()}
        super().__init__(*args, **kwargs)
        self.batch_norm_params = params

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(self.batch_norm_params)
        return data


class SparseCrossQActor(_BatchNormArgsMixin, CrossQActor):
    """sb3-contrib's CrossQ ``Actor`` (BatchRenorm layers) with sparse layers that survive ``actor.save`` /
    ``SparseCrossQActor.load``; its BatchRenorm arguments are saved too."""


class SparseCrossQCritic(_BatchNormArgsMixin, SparseCriticMixin, CrossQCritic):
    """sb3-contrib's ``CrossQCritic`` (BatchRenorm layers, no target network) with sparse layers, saving every
    constructor argument, so that ``critic.save`` / ``SparseCrossQCritic.load`` round-trips.

    Same parameters as ``CrossQCritic``, plus those of :class:`~sparse_rl.sb3.networks.SparseNetworkMixin`.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        net_arch: list[int],
        features_extractor: BaseFeaturesExtractor,
        features_dim: int,
        activation_fn: type[nn.Module] = nn.ReLU,
        normalize_images: bool = True,
        n_critics: int = 2,
        share_features_extractor: bool = True,
        batch_norm: bool = True,
        batch_norm_momentum: float = 0.01,
        batch_norm_eps: float = 0.001,
        renorm_warmup_steps: int = 100_000,
        sparse_layout: dict[str, int] | None = None,
        sparse_backend: str = "auto",
    ) -> None:
        super().__init__(
            observation_space, action_space, net_arch, features_extractor, features_dim, activation_fn=activation_fn,
            normalize_images=normalize_images, n_critics=n_critics, share_features_extractor=share_features_extractor,
            batch_norm=batch_norm, batch_norm_momentum=batch_norm_momentum, batch_norm_eps=batch_norm_eps,
            renorm_warmup_steps=renorm_warmup_steps, sparse_layout=sparse_layout, sparse_backend=sparse_backend,
        )
        self._keep_architecture(net_arch, features_dim, activation_fn)
