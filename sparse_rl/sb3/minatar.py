"""The standard MinAtar network (Young & Tian 2019, "MinAtar: An Atari-Inspired Testbed for Thorough and
Reproducible Reinforcement Learning Experiments", arXiv 1903.03176) as an SB3 features extractor, and DQN policies
that use it.

MinAtar frames are ``10 x 10 x C`` binary images (channels last), far too small for SB3's NatureCNN (8x8 stride-4
kernels). The paper's network is one 3x3 convolution with 16 channels (stride 1, no padding), a ReLU, a 128-unit
hidden layer and the Q-value head. In the sparse policy every layer of it is sparse except the head (ERK spreads the
nonzeros, as for the other networks).

Policy names, registered for DQN like SB3's aliases: ``MinAtarPolicy`` (dense) and ``SparseMinAtarPolicy``.
Importing this module also registers the ``MinAtar/<Game>-v0|v1`` environment ids (as ``minatar.gym.register_envs()``
does, but without importing ``minatar`` until an environment is made), so ``--gym-packages sparse_rl.sb3`` is enough
for RL Zoo's scripts.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import gymnasium as gym
import torch as th
from stable_baselines3 import DQN
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.dqn.policies import DQNPolicy
from torch import nn

from sparse_rl.sb3.policies import SparseDQNPolicy

MINATAR_CHANNELS = 16
MINATAR_HIDDEN = 128
MINATAR_GAMES = ("asterix", "breakout", "freeway", "seaquest", "space_invaders")  # minatar.gym.register_envs()'s


def register_minatar_envs() -> None:
    """Register ``MinAtar/<Game>-v0`` (full action set) and ``-v1`` (minimal action set) when the ``minatar`` package
    is installed, with the ids and settings of ``minatar.gym.register_envs()``; ids already registered are kept."""
    if importlib.util.find_spec("minatar") is None:
        return
    for game in MINATAR_GAMES:
        name = game.title().replace("_", "")
        for version, minimal in (("v0", False), ("v1", True)):
            env_id = f"MinAtar/{name}-{version}"
            if env_id not in gym.registry:
                gym.register(env_id, entry_point="minatar.gym:BaseEnv",
                             kwargs=dict(game=game, use_minimal_action_set=minimal))


class MinAtarCNN(BaseFeaturesExtractor):
    """Conv 3x3 (16 channels) -> ReLU -> Linear (``features_dim``, 128 in the paper) -> ReLU.

    :param observation_space: a ``(height, width, channels)`` Box (MinAtar's frames, channels last)
    :param features_dim: hidden units after the convolution
    :param channels: output channels of the convolution
    """

    def __init__(self, observation_space: gym.spaces.Box, features_dim: int = MINATAR_HIDDEN,
                 channels: int = MINATAR_CHANNELS) -> None:
        super().__init__(observation_space, features_dim)
        if len(observation_space.shape) != 3:
            raise ValueError(f"MinAtarCNN needs (height, width, channels) frames, got shape {observation_space.shape}")
        height, width, in_channels = observation_space.shape
        self.cnn = nn.Sequential(nn.Conv2d(in_channels, channels, kernel_size=3, stride=1), nn.ReLU(), nn.Flatten())
        self.linear = nn.Sequential(nn.Linear(channels * (height - 2) * (width - 2), features_dim), nn.ReLU())

    def forward(self, observations: th.Tensor) -> th.Tensor:
        """``[B, H, W, C]`` frames (bool or float) -> ``[B, features_dim]``."""
        return self.linear(self.cnn(observations.float().permute(0, 3, 1, 2)))


def _minatar_defaults(kwargs: dict[str, Any]) -> dict[str, Any]:
    kwargs.setdefault("features_extractor_class", MinAtarCNN)
    kwargs.setdefault("net_arch", [])  # the head reads the 128 features directly
    return kwargs


class MinAtarPolicy(DQNPolicy):
    """Dense DQN policy with the MinAtar network (the dense baseline)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **_minatar_defaults(kwargs))


class SparseMinAtarPolicy(SparseDQNPolicy):
    """Sparse DQN policy with the MinAtar network: convolution and hidden layer sparse, Q head dense."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **_minatar_defaults(kwargs))


def register_policy_aliases() -> None:
    """``MinAtarPolicy`` / ``SparseMinAtarPolicy`` for DQN (existing aliases are never replaced)."""
    DQN.policy_aliases.setdefault("MinAtarPolicy", MinAtarPolicy)
    DQN.policy_aliases.setdefault("SparseMinAtarPolicy", SparseMinAtarPolicy)


register_policy_aliases()
register_minatar_envs()
