"""Shared helpers for the SB3 integration tests: one torch thread, and a TopologyCallback that checks invariants."""

from __future__ import annotations

from typing import Any

import pytest
import torch as th
import yaml

from sparse_rl.sb3 import TopologyCallback
from sparse_rl.sb3.builders import find_optimizers, same_topology, sparse_layers, target_pairs

th.set_num_threads(1)


def check_invariants(model: Any) -> None:
    """Online and target masks equal, pruned target weights 0, optimizer state sized like the values, no grads."""
    policy = model.policy
    for online, target in target_pairs(policy):
        assert same_topology(online, target), "target network lost its online mask"
        assert th.equal(online.mask, target.mask)
        assert th.all(target.dense_weight()[~target.mask] == 0)
        assert target.values.numel() == online.nnz
    for layer in sparse_layers(policy).values():
        assert layer.values.numel() == layer.nnz == int(layer.mask.sum())
        assert layer.values.grad is None
        for optimizer in find_optimizers(model):
            state = optimizer.state.get(layer.values)
            if state and "exp_avg" in state:
                assert state["exp_avg"].shape == layer.values.shape


class CheckingCallback(TopologyCallback):
    """TopologyCallback that records each update (clock, nnz) and checks the invariants right after it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.update_clock: list[int] = []
        self.nnz_history: list[int] = []
        self.rollout_full: list[bool] = []

    def _init_callback(self) -> None:
        super()._init_callback()
        self.nnz_history.append(sum(layer.nnz for layer in self.layers.values()))
        check_invariants(self.model)

    def update_topology(self) -> None:
        buffer = getattr(self.model, "rollout_buffer", None)
        self.rollout_full.append(bool(buffer.full) if buffer is not None else True)
        super().update_topology()
        self.update_clock.append(self.model.num_timesteps)
        self.nnz_history.append(sum(layer.nnz for layer in self.layers.values()))
        check_invariants(self.model)


@pytest.fixture
def checking_callback() -> type[CheckingCallback]:
    return CheckingCallback


@pytest.fixture
def invariants() -> Any:
    return check_invariants


def sac_pendulum_config(path: Any, n_timesteps: int, net_arch: list[int] | None = None, method: str = "set",
                        end: float = 0.8, buffer_size: int = 2000) -> Any:
    """A small SAC Pendulum config file (90 % sparse, a topology update every 100 steps) for short real runs."""
    kwargs = "dict(sparsity=0.9" + (f", net_arch={net_arch})" if net_arch else ")")
    path.write_text(yaml.safe_dump({"Pendulum-v1": {
        "n_timesteps": n_timesteps, "policy": "SparseMlpPolicy", "learning_starts": 100, "buffer_size": buffer_size,
        "batch_size": 32, "policy_kwargs": kwargs,
        "callback": [{"sparse_rl.sb3.TopologyCallback": {"method": method, "update_every": 100, "end": end}}],
    }}))
    return path
