"""Sparse SB3 sub-networks: actors, critics and q-networks that save and load on their own, still sparse.

SB3 lets a user save one network of a policy and load it alone (``model.actor.save(path)`` then
``Actor.load(path)``, ``model.q_net.save(path)`` then ``QNetwork.load(path)``): ``BaseModel.save`` stores
``_get_constructor_parameters()`` beside the state dict and ``load`` calls ``cls(**data)`` before
``load_state_dict``. The classes below are what the ``Sparse*Policy`` factory hooks build: SB3's own networks plus a
``sparse_layout`` constructor parameter (nnz by layer name), so that ``cls(**data)`` rebuilds the same sparse layers
and ``load_state_dict`` restores the saved topology (Graesser et al. 2022 sparse networks, stored as CSR). A features
extractor is saved whole by SB3 (it is a constructor parameter), sparse layers included, so it is not in the layout.
"""

from __future__ import annotations

from typing import Any

from gymnasium import spaces
from stable_baselines3.common.policies import ContinuousCritic
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.dqn.policies import QNetwork
from stable_baselines3.sac.policies import Actor as SACActor
from stable_baselines3.td3.policies import Actor as TD3Actor
from torch import nn

from sparse_rl.nn.layers import SparseLayer
from sparse_rl.sb3.builders import rebuild_sparse_layers, sparse_layout

__all__ = ["SparseContinuousCritic", "SparseCriticMixin", "SparseNetworkMixin", "SparseQNetwork", "SparseSACActor",
           "SparseTD3Actor"]


class SparseNetworkMixin:
    """Constructor parameters that rebuild the sparse layers of an SB3 network (``BaseModel``) when it is loaded.

    :param sparse_layout: nnz of each sparse layer by name (outside the features extractor); ``None``: all dense
        (the factory hooks build the network dense and make it sparse with :func:`sparse_rl.sb3.builders.sparsify`)
    :param sparse_backend: kernel backend of the rebuilt layers
    """

    def __init__(self, *args: Any, sparse_layout: dict[str, int] | None = None, sparse_backend: str = "auto",
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if sparse_layout:
            rebuild_sparse_layers(self, sparse_layout, backend=sparse_backend)  # type: ignore[arg-type]

    def sparse_layout(self) -> dict[str, int]:
        """nnz of each sparse layer by name (the features extractor, saved whole by SB3, left out)."""
        return sparse_layout(self)  # type: ignore[arg-type]

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()  # type: ignore[misc]
        layers = [m for m in self.modules() if isinstance(m, SparseLayer)]  # type: ignore[attr-defined]
        data.update(sparse_layout=self.sparse_layout(), sparse_backend=layers[0].backend if layers else "auto")
        return data


class SparseSACActor(SparseNetworkMixin, SACActor):
    """SB3's SAC ``Actor`` with sparse layers that survive ``actor.save`` / ``SparseSACActor.load``."""


class SparseTD3Actor(SparseNetworkMixin, TD3Actor):
    """SB3's TD3 ``Actor`` with sparse layers that survive ``actor.save`` / ``SparseTD3Actor.load``."""


class SparseQNetwork(SparseNetworkMixin, QNetwork):
    """SB3's DQN ``QNetwork`` with sparse layers that survive ``q_net.save`` / ``SparseQNetwork.load``."""


class SparseCriticMixin(SparseNetworkMixin):
    """:class:`SparseNetworkMixin` for critics, which SB3 and sb3-contrib build without saving ``net_arch``,
    ``features_dim``, ``activation_fn`` and some of their other constructor arguments: the subclass's ``__init__``
    calls :meth:`_keep_architecture`, and :attr:`saved_attributes` names the other arguments the base class keeps as
    attributes of the same name, so that ``critic.save`` / ``type(critic).load`` round-trips.
    """

    #: constructor arguments the base class stores as attributes of the same name
    saved_attributes: tuple[str, ...] = ("n_critics", "share_features_extractor")

    def _keep_architecture(self, net_arch: list[int], features_dim: int, activation_fn: type[nn.Module]) -> None:
        self.net_arch = list(net_arch)
        self.features_dim = features_dim
        self.activation_fn = activation_fn

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(net_arch=self.net_arch, features_extractor=self.features_extractor,  # type: ignore[attr-defined]
                    features_dim=self.features_dim, activation_fn=self.activation_fn,
                    **{name: getattr(self, name) for name in self.saved_attributes})
        return data


class SparseContinuousCritic(SparseCriticMixin, ContinuousCritic):
    """SB3's ``ContinuousCritic`` (SAC, TD3) with sparse layers, and the constructor parameters SB3's own critic lacks,
    so that ``critic.save`` / ``SparseContinuousCritic.load`` round-trips.

    Same parameters as ``ContinuousCritic``, plus those of :class:`SparseNetworkMixin`.
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
        sparse_layout: dict[str, int] | None = None,
        sparse_backend: str = "auto",
    ) -> None:
        super().__init__(
            observation_space, action_space, net_arch, features_extractor, features_dim, activation_fn=activation_fn,
            normalize_images=normalize_images, n_critics=n_critics, share_features_extractor=share_features_extractor,
            sparse_layout=sparse_layout, sparse_backend=sparse_backend,
        )
        self._keep_architecture(net_arch, features_dim, activation_fn)
