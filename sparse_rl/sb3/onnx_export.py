"""ONNX export of a trained agent's acting path: raw observation in, ``model.predict(obs, deterministic=True)`` out.

``python -m sparse_rl.export RUN_DIR -o OUT_DIR --format onnx`` writes ``OUT_DIR/policy.onnx`` (needs the ``onnx``
extra: ``pip install "sparse_rl[onnx]"``). The graph has one input and one output:

- ``obs``: a batch of observations exactly as the environment gives them, ``[batch, *env_observation_shape]`` in the
  observation space's dtype (``uint8`` frames, ``float32`` / ``float64`` vectors). Everything SB3 and the run did to
  them before the network is inside the graph: VecNormalize's ``clip((obs - mean) / sqrt(var + eps))`` (in float64,
  as VecNormalize computes it), the HWC -> CHW transpose of SB3's ``VecTransposeImage`` for images, and the division
  of images by 255.
- ``action``: what ``model.predict(obs, deterministic=True)`` returns: ``float32 [batch, *action_shape]`` for Box action
  spaces (squashed actions unscaled to the bounds, others clipped to them), ``int64 [batch]`` for Discrete (greedy).

Supported: SAC and TD3 (deterministic actor), DQN (greedy q-network), PPO and A2C (mean or most likely action), with
Box observations and MLP or CNN features. Sparse layers export through their traceable path
(:mod:`sparse_rl.nn.backends.traceable`): the file keeps the stored values and their positions (12 bytes per weight
rather than 4 per dense one, so smaller below 1/3 density), and ONNX Runtime folds them into dense weights when it
loads the model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from torch import nn

OPSET = 18
INPUT_NAME, OUTPUT_NAME = "obs", "action"
ACTOR_CRITIC = ("PPO", "A2C")
SUPPORTED = ("SAC", "TD3", "DQN", *ACTOR_CRITIC)


def env_gives_channels_last(model: Any, obs_rms: Any = None) -> bool:
    """Whether the environment's frames are HWC while the policy reads CHW (SB3 wrapped it in ``VecTransposeImage``).

    VecNormalize statistics have the environment's own shape and settle it; without them, a policy that reads a
    channels-first image is taken to have been transposed by SB3 (gymnasium and Atari frames are channels-last).

    :param model: the SB3 algorithm
    :param obs_rms: VecNormalize observation statistics (``RunningMeanStd``), if the run used them
    """
    from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first

    space = model.observation_space
    if not (is_image_space(space, check_channels=False) and is_image_space_channels_first(space)):
        return False
    if obs_rms is not None:
        return tuple(np.shape(obs_rms.mean)) == (*space.shape[1:], space.shape[0])
    return True


class OnnxActingPolicy(nn.Module):
    """Raw observations to the actions ``model.predict(obs, deterministic=True)`` returns, as one traceable module.

    It calls the policy's own networks (feature extractor with SB3's preprocessing, heads), so it acts like the model
    by construction; only the parts of ``predict`` that run in numpy (VecNormalize, transpose, unscale / clip) are
    rewritten here in torch.

    :param model: a SAC, TD3, DQN, PPO or A2C model with a Box observation space
    :param obs_rms: VecNormalize observation statistics, to normalise inside the graph (None: no normalisation)
    :param clip_obs: VecNormalize's ``clip_obs``
    :param epsilon: VecNormalize's ``epsilon``
    :param channels_last: whether the environment gives HWC frames for a policy that reads CHW (None: guess, see
        :func:`env_gives_channels_last`)
    """

    def __init__(self, model: Any, obs_rms: Any = None, clip_obs: float = 10.0, epsilon: float = 1e-8,
                 channels_last: bool | None = None) -> None:
        from gymnasium import spaces

        super().__init__()
        self.algo = type(model).__name__
        if self.algo not in SUPPORTED:
            raise ValueError(f"cannot export a {self.algo} agent to ONNX: supported algorithms are {', '.join(SUPPORTED)}")
        space, action_space = model.observation_space, model.action_space
        if not isinstance(space, spaces.Box):
            raise ValueError(f"ONNX export supports Box observation spaces only, not {type(space).__name__}")
        if not isinstance(action_space, (spaces.Box, spaces.Discrete)):
            raise ValueError(f"ONNX export supports Box and Discrete action spaces only, not {type(action_space).__name__}")
        self.policy = model.policy
        self.channels_last = env_gives_channels_last(model, obs_rms) if channels_last is None else channels_last
        shape = space.shape
        self.input_shape = (*shape[1:], shape[0]) if self.channels_last else tuple(shape)
        self.input_dtype = space.dtype
        self.normalize = obs_rms is not None
        if self.normalize:
            self.register_buffer("obs_mean", th.as_tensor(np.asarray(obs_rms.mean), dtype=th.float64))
            self.register_buffer("obs_std", th.sqrt(th.as_tensor(np.asarray(obs_rms.var), dtype=th.float64) + epsilon))
        self.clip_obs = float(clip_obs)
        self.discrete = isinstance(action_space, spaces.Discrete)
        self.squash = bool(getattr(self.policy, "squash_output", False))
        if not self.discrete:
            self.register_buffer("action_low", th.as_tensor(action_space.low, dtype=th.float32))
            self.register_buffer("action_high", th.as_tensor(action_space.high, dtype=th.float32))
        if self.algo in ACTOR_CRITIC:
            self._check_distribution()

    def _check_distribution(self) -> None:
        from stable_baselines3.common.distributions import (
            CategoricalDistribution,
            DiagGaussianDistribution,
            StateDependentNoiseDistribution,
        )

        dist = self.policy.action_dist
        if not isinstance(dist, (CategoricalDistribution, DiagGaussianDistribution, StateDependentNoiseDistribution)):
            raise ValueError(f"ONNX export does not support a {type(dist).__name__} action distribution")
        self.tanh_mean = isinstance(dist, StateDependentNoiseDistribution) and dist.bijector is not None

    def preprocess(self, obs: th.Tensor) -> th.Tensor:
        """The environment's observations as the policy reads them (before SB3's own ``preprocess_obs``)."""
        if self.normalize:
            obs = th.clamp((obs.to(th.float64) - self.obs_mean) / self.obs_std, -self.clip_obs, self.clip_obs)
        obs = obs.to(th.float32)
        return obs.permute(0, 3, 1, 2) if self.channels_last else obs

    def network_output(self, obs: th.Tensor) -> th.Tensor:
        """Deterministic action in the policy's own scale (Box), or q-values / logits (Discrete)."""
        policy = self.policy
        if self.algo == "SAC":
            return th.tanh(policy.actor.get_action_dist_params(obs)[0])
        if self.algo == "TD3":
            return policy.actor(obs)
        if self.algo == "DQN":
            return policy.q_net(obs)
        features = policy.extract_features(obs)
        if not policy.share_features_extractor:
            features = features[0]
        out = policy.action_net(policy.mlp_extractor.forward_actor(features))
        return th.tanh(out) if self.tanh_mean else out

    def forward(self, obs: th.Tensor) -> th.Tensor:
        out = self.network_output(self.preprocess(obs))
        if self.discrete:
            return out.argmax(dim=1)
        out = out.reshape(out.shape[0], *self.action_low.shape)
        if self.squash:
            return self.action_low + 0.5 * (out + 1.0) * (self.action_high - self.action_low)
        return th.maximum(th.minimum(out, self.action_high), self.action_low)


def export_onnx(model: Any, path: str | Path, obs_rms: Any = None, clip_obs: float = 10.0, epsilon: float = 1e-8,
                channels_last: bool | None = None, opset_version: int = OPSET) -> Path:
    """Write ``model``'s acting path as an ONNX file (see the module docstring for its input and output).

    :param model: a SAC, TD3, DQN, PPO or A2C model (SB3)
    :param path: the ``.onnx`` file to write
    :param obs_rms: VecNormalize observation statistics, if the run normalised observations
    :param clip_obs: VecNormalize's ``clip_obs``
    :param epsilon: VecNormalize's ``epsilon``
    :param channels_last: the environment gives HWC frames for a CHW policy (None: guess)
    :param opset_version: ONNX opset
    :return: the path written
    """
    try:
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError:
        raise ValueError('ONNX export needs the onnx extra: pip install "sparse_rl[onnx]"') from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = OnnxActingPolicy(model, obs_rms, clip_obs, epsilon, channels_last).eval()
    model.policy.set_training_mode(False)
    space = model.observation_space
    example = np.stack([space.sample(), space.sample()])  # a batch of 2: the batch dimension stays symbolic
    if wrapper.channels_last:
        example = example.transpose(0, 2, 3, 1)
    example_t = th.as_tensor(np.ascontiguousarray(example), device=model.policy.device)
    batch = th.export.Dim("batch")
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")  # "torchvision is not installed"
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        with th.no_grad():
            th.onnx.export(wrapper, (example_t,), str(path), dynamo=True, opset_version=opset_version,
                           input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},),
                           external_data=False, verbose=False)
    finally:
        registry_log.setLevel(level)
    return path
