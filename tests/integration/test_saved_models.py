"""Models saved by an earlier release (v0.1.0, before the state dict held tensors only) keep loading and acting."""

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3 import PPO, SAC

from sparse_rl.nn import SparseLinear
from sparse_rl.sb3 import TopologyCallback

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.mark.parametrize("algo,name,env_id,method,obs,action,updates", [
    (SAC, "sac_pendulum_rigl90_v0.1.0.zip", "Pendulum-v1", "rigl", np.linspace(-1, 1, 3, dtype=np.float32),
     [0.10378527641296387], 2),
    (PPO, "ppo_cartpole_set90_v0.1.0.zip", "CartPole-v1", "set", np.array([0.01, -0.02, 0.03, 0.04], dtype=np.float32), 1, 2),
])
def test_a_model_saved_before_loads_acts_and_continues(algo, name, env_id, method, obs, action, updates):
    model = algo.load(FIXTURES / name, env=gym.make(env_id), device="cpu")
    assert any(isinstance(m, SparseLinear) for m in model.policy.modules())
    assert model.policy.topology_state["updater"]["num_updates"] == updates
    np.testing.assert_allclose(model.predict(obs, deterministic=True)[0], action, atol=1e-6)
    assert all(isinstance(v, th.Tensor) for v in model.policy.state_dict().values())
    model.learn(64, callback=TopologyCallback(method=method, update_every=32, end=1.0), reset_num_timesteps=False)
    assert model.policy.topology_state["updater"]["num_updates"] > updates
