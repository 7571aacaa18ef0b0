"""Sparsity report of an SB3 model or policy (sparse RL as in Graesser et al. 2022).

Counts the weight matrices of every linear, convolutional and recurrent (LSTM) layer of the policy, dense ones
included; biases and other parameters (``log_std``) are left out, and so are the target networks (``*_target``),
which mirror the online networks and are not trained. A features extractor shared by several networks is counted once.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from sparse_rl.nn.layers import SparseLayer
from sparse_rl.sb3.builders import is_target_name


def _policy_of(model_or_policy: Any) -> nn.Module:
    policy = getattr(model_or_policy, "policy", model_or_policy)
    if not isinstance(policy, nn.Module):
        raise ValueError(f"expected an SB3 algorithm or policy (an nn.Module), got {type(model_or_policy).__name__}")
    return policy


def sparsity_report(model_or_policy: Any) -> dict[str, dict[str, Any]]:
    """Nonzeros per layer and in total.

    :param model_or_policy: an SB3 algorithm (its ``.policy`` is used) or a policy / any ``nn.Module``
    :return: ``{"layers": {name: {"nnz", "numel", "density"}}, "total": {"nnz", "numel", "density"}}``
    """
    layers: dict[str, dict[str, Any]] = {}
    for name, module in _policy_of(model_or_policy).named_modules():
        if is_target_name(name):
            continue
        if isinstance(module, SparseLayer):
            nnz, numel = module.nnz, module.numel_dense
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            nnz = numel = module.weight.numel()
        elif isinstance(module, nn.RNNBase):  # RecurrentPPO's LSTMs stay dense: their weight matrices count as dense
            nnz = numel = sum(p.numel() for n, p in module.named_parameters(recurse=False) if n.startswith("weight"))
        else:
            continue
        layers[name] = {"nnz": int(nnz), "numel": int(numel), "density": nnz / max(numel, 1)}
    nnz_total = sum(layer["nnz"] for layer in layers.values())
    numel_total = sum(layer["numel"] for layer in layers.values())
    total = {"nnz": nnz_total, "numel": numel_total, "density": nnz_total / max(numel_total, 1)}
    return {"layers": layers, "total": total}
