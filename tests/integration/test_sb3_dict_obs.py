"""Dict observation spaces: SparseMultiInputPolicy with HER on SB3's goal-conditioned BitFlippingEnv, and DST on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch as th
from stable_baselines3 import DQN, PPO, SAC, HerReplayBuffer
from stable_baselines3.common.envs import BitFlippingEnv

import sparse_rl.sb3.policies  # noqa: F401  (registers the SparseMultiInputPolicy aliases)
from sparse_rl.sb3.builders import sparse_layers
from sparse_rl.sb3.flops import policy_flops_for_space
from sparse_rl.sb3.tensorboard import SparsityLog


def her_kwargs() -> dict[str, Any]:
    """The settings of SB3's own HER test, smaller (a fresh dict each time: SB3 writes into policy_kwargs)."""
    return dict(replay_buffer_class=HerReplayBuffer, learning_starts=100, buffer_size=2000, batch_size=32, train_freq=4,
                replay_buffer_kwargs=dict(n_sampled_goal=2, goal_selection_strategy="future"),
                policy_kwargs=dict(net_arch=[32, 32]))


def _obs(env: BitFlippingEnv, n: int = 4) -> dict[str, np.ndarray]:
    samples = [env.observation_space.sample() for _ in range(n)]
    return {key: np.stack([s[key] for s in samples]) for key in samples[0]}


@pytest.mark.parametrize("algo, continuous, method", [(SAC, True, "rigl"), (DQN, False, "set")])
def test_her_with_sparse_multi_input_policy_and_topology_updates(tmp_path: Path, checking_callback: Any, algo: Any,
                                                                 continuous: bool, method: str) -> None:
    env = BitFlippingEnv(n_bits=4, continuous=continuous)
    model = algo("SparseMultiInputPolicy", env, seed=0, **her_kwargs())
    assert type(model.policy).__name__.endswith("MultiInputPolicy") and model.policy.sparse_config.sparsity == 0.9
    callback = checking_callback(method=method, update_every=50, end=10_000, seed=0)
    model.learn(300, callback=callback)  # the FLOPs logged at the first step used to crash on Dict spaces
    assert callback.update_clock == [150, 200, 250, 300]
    assert 0.05 < sum(m.nnz for m in sparse_layers(model.policy).values()) / sum(
        m.numel_dense for m in sparse_layers(model.policy).values()) < 0.2
    model.save(tmp_path / "her")
    loaded = algo.load(tmp_path / "her", env=env)
    obs = _obs(env)
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])
    assert loaded.policy.topology_state["updater"]["num_updates"] == 4


def test_ppo_with_sparse_multi_input_policy_on_dict_space(checking_callback: Any) -> None:
    env = BitFlippingEnv(n_bits=4, continuous=False)
    model = PPO("SparseMultiInputPolicy", env, n_steps=64, batch_size=32, n_epochs=1, seed=0,
                policy_kwargs=dict(net_arch=[32, 32]))
    callback = checking_callback(method="set", update_every=64, end=10_000, seed=0)
    model.learn(192, callback=callback)
    assert callback.update_clock == [64, 128, 192]


def test_flops_and_sparsity_log_on_dict_space() -> None:
    from stable_baselines3.common.logger import Logger

    env = BitFlippingEnv(n_bits=4, continuous=True)
    model = SAC("SparseMultiInputPolicy", env, buffer_size=100, policy_kwargs=dict(net_arch=[32, 32]), seed=0)
    flops = policy_flops_for_space(model.policy, model.observation_space)
    assert 0.0 < flops["inference_vs_dense"] < 1.0 and flops["inference_sparse"] > 0
    logger = Logger(folder=None, output_formats=[])
    SparsityLog(sparse_layers(model.policy)).record(logger, model)
    assert logger.name_to_value["sparsity/inference_flops_vs_dense"] == flops["inference_vs_dense"]
    with th.no_grad():
        assert model.policy.actor(model.policy.obs_to_tensor(_obs(env))[0], deterministic=True).shape == (4, 4)
