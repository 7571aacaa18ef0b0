"""Optimizer state of rewired connections: kept entries follow their weight, dropped and grown entries start at zero.

Google's RigL code, JaxPruner and Cerebras reset Adam's moments on regrowth; most DST code bases do not, which lets a
grown weight inherit the momentum of the connection that held its slot before. Any per-element state tensor shaped
like the parameter is remapped (Adam/AdamW ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``; SGD ``momentum_buffer``;
RMSprop ``square_avg``, ...); scalar entries such as ``step`` are left alone.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch as th


def remap_state_tensor(value: th.Tensor, source: th.Tensor) -> th.Tensor:
    """New per-entry state: ``value[source]`` where ``source >= 0``, zero where ``source == -1`` (grown)."""
    kept = source >= 0
    result = value.new_zeros(source.numel())
    result[kept] = value[source[kept].to(value.device)]
    return result


def remap_optimizer_state(
    optimizers: Iterable[th.optim.Optimizer], param: th.Tensor, source: th.Tensor, old_numel: int
) -> int:
    """Remap the state of ``param`` in every optimizer that owns it after a topology change.

    :param optimizers: optimizers to update (those that do not hold ``param`` are skipped)
    :param param: the ``values`` Parameter that was rewired
    :param source: for each new entry, the old slot it keeps, or ``-1`` for a grown entry
    :param old_numel: number of entries before the change
    :return: number of state tensors remapped
    """
    remapped = 0
    for optimizer in optimizers:
        state = optimizer.state.get(param)
        if not state:
            continue
        for key, value in list(state.items()):
            if isinstance(value, th.Tensor) and value.dim() == 1 and value.numel() == old_numel and key != "step":
                state[key] = remap_state_tensor(value, source)
                remapped += 1
    return remapped


def replace_parameter(optimizers: Iterable[th.optim.Optimizer], old: th.Tensor, new: th.Tensor) -> None:
    """Point every optimizer that holds ``old`` at ``new`` instead, carrying its (already remapped) state over."""
    if old is new:
        return
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["params"] = [new if p is old else p for p in group["params"]]
        if old in optimizer.state:
            optimizer.state[new] = optimizer.state.pop(old)
