"""Multiply-add counts of a policy, sparse vs dense, measured with forward hooks on one acting step.

A linear layer costs ``nnz`` multiply-adds per sample (dense: ``in * out``); a convolution costs ``nnz`` per output
position. Inference counts the layers that run when acting; training counts every weight layer of the policy
(forward and backward scale alike, so their ratio is the forward ratio). The dense-gradient pass at topology updates
is rare and not included.

:func:`sample_observation` builds the observation to measure on for any observation space (Box, Discrete,
MultiDiscrete, MultiBinary, and Dict / Tuple of them), and :func:`policy_flops_for_space` measures on it.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch as th
from torch import nn

from sparse_rl.nn.layers import SparseLayer

WEIGHT_LAYERS = (nn.Linear, nn.Conv2d, SparseLayer)


def sample_observation(space: Any) -> Any:
    """One fixed, valid observation of a gymnasium space, as ``policy.predict`` takes it.

    Box: zeros clipped into the bounds; Discrete / MultiDiscrete: the lowest value; MultiBinary: zeros; Dict and Tuple:
    the same per sub-space (a dict / tuple). Any other space: a sample drawn from a copy of it (its RNG untouched).

    :param space: a ``gymnasium.spaces.Space`` (e.g. ``model.observation_space``)
    """
    from gymnasium import spaces

    if isinstance(space, spaces.Dict):
        return {key: sample_observation(sub) for key, sub in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(sample_observation(sub) for sub in space.spaces)
    if isinstance(space, spaces.Box):
        return np.clip(np.zeros(space.shape, dtype=space.dtype), space.low, space.high).astype(space.dtype)
    if isinstance(space, spaces.Discrete):
        return np.asarray(space.start, dtype=space.dtype)
    if isinstance(space, spaces.MultiDiscrete):
        return np.broadcast_to(np.asarray(getattr(space, "start", 0), dtype=space.dtype), space.shape).copy()
    if isinstance(space, spaces.MultiBinary):
        return np.zeros(space.shape, dtype=space.dtype)
    return copy.deepcopy(space).sample()


def policy_flops_for_space(policy: nn.Module, observation_space: Any) -> dict[str, float]:
    """:func:`policy_flops` measured on :func:`sample_observation` of ``observation_space`` (any space, Dict too).

    :param policy: an SB3 policy (``model.policy``)
    :param observation_space: the space the policy acts on (``model.observation_space``)
    """
    return policy_flops(policy, sample_observation(observation_space))


def _costs(module: nn.Module) -> tuple[int, int]:
    """(sparse, dense) multiply-adds of one output position of a weight layer."""
    if isinstance(module, SparseLayer):
        return module.nnz, module.numel_dense
    numel = module.weight.numel()
    return int((module.weight != 0).sum()), numel


def policy_flops(policy: nn.Module, observation: Any) -> dict[str, float]:
    """Multiply-adds of ``policy`` at acting time and over all its layers, and their ratios to dense.

    :param policy: an SB3 policy (anything with ``predict``) or a plain module called on ``observation``
    :param observation: one observation as the policy's ``predict`` accepts it
    """
    positions: dict[nn.Module, int] = {}
    handles = []
    for module in policy.modules():
        if isinstance(module, WEIGHT_LAYERS):
            def hook(mod: nn.Module, _inputs: Any, output: th.Tensor) -> None:
                per_sample = output[0].numel() // output.shape[-3] if output.dim() == 4 else 1
                positions[mod] = max(positions.get(mod, 0), per_sample)

            handles.append(module.register_forward_hook(hook))
    try:
        with th.no_grad():
            policy.predict(observation, deterministic=True) if hasattr(policy, "predict") else policy(observation)
    finally:
        for handle in handles:
            handle.remove()
    layers = [m for m in policy.modules() if isinstance(m, WEIGHT_LAYERS)]
    result = {"inference_sparse": 0, "inference_dense": 0, "training_sparse": 0, "training_dense": 0}
    for module in layers:
        sparse, dense = _costs(module)
        count = positions.get(module, 1)
        result["training_sparse"] += sparse * count
        result["training_dense"] += dense * count
        if module in positions:
            result["inference_sparse"] += sparse * count
            result["inference_dense"] += dense * count
    result["inference_vs_dense"] = result["inference_sparse"] / max(result["inference_dense"], 1)
    result["training_vs_dense"] = result["training_sparse"] / max(result["training_dense"], 1)
    return result
