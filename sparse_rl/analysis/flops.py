"""Multiply-add counts of a policy, sparse vs dense, measured with forward hooks on one acting step.

A linear layer costs ``nnz`` multiply-adds per sample (dense: ``in * out``); a convolution costs ``nnz`` per output
position. Inference counts the layers that run when acting; training counts every weight layer of the policy
(forward and backward scale alike, so their ratio is the forward ratio). The dense-gradient pass at topology updates
is rare and not included.
"""

from __future__ import annotations

from typing import Any

import torch as th
from torch import nn

from sparse_rl.nn.layers import SparseWeightMixin

WEIGHT_LAYERS = (nn.Linear, nn.Conv2d, SparseWeightMixin)


def _costs(module: nn.Module) -> tuple[int, int]:
    """(sparse, dense) multiply-adds of one output position of a weight layer."""
    if isinstance(module, SparseWeightMixin):
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
