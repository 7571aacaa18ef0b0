"""model.save / Algo.load round trips of sparse models, and the topology schedule across a save and a load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from stable_baselines3 import DQN, PPO, SAC
from stable_baselines3.common.env_util import make_vec_env

from sparse_rl.sb3 import SparseActorCriticPolicy, SparseDQNPolicy, SparseSACPolicy
from sparse_rl.sb3.builders import find_optimizers, sparse_layers


def assert_same_model(a: Any, b: Any, obs: np.ndarray) -> None:
    state_a, state_b = a.policy.state_dict(), b.policy.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        if key == "_extra_state":
            continue
        assert th.equal(state_a[key], state_b[key]), key
    assert a.policy.topology_state["next_update_step"] == b.policy.topology_state["next_update_step"]
    for opt_a, opt_b in zip(find_optimizers(a), find_optimizers(b)):
        sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
        assert sa.keys() == sb.keys()
        for index in sa:
            for name, value in sa[index].items():
                assert th.equal(th.as_tensor(value), th.as_tensor(sb[index][name])), (index, name)
    np.testing.assert_array_equal(a.predict(obs, deterministic=True)[0], b.predict(obs, deterministic=True)[0])


def test_sac_rigl_round_trip_and_resumed_schedule(tmp_path: Path, checking_callback: Any) -> None:
    kwargs = dict(learning_starts=50, batch_size=32, buffer_size=1000, seed=0)
    model = SAC(SparseSACPolicy, "Pendulum-v1", policy_kwargs=dict(sparsity=0.9, net_arch=[32, 32]), **kwargs)
    first = checking_callback(method="rigl", update_every=50, end=10_000, seed=0)
    model.learn(200, callback=first)
    assert first.update_clock == [100, 150, 200]
    model.save(tmp_path / "sac")
    loaded = SAC.load(tmp_path / "sac", env=model.get_env())
    obs = np.stack([model.observation_space.sample() for _ in range(8)])
    assert_same_model(model, loaded, obs)
    assert loaded.policy.sparse_config.sparsity == 0.9
    # Resume: the update at 200 already happened, the next ones are 250, 300, 350.
    second = checking_callback(method="rigl", update_every=50, end=10_000, seed=0)
    loaded.learn(150, reset_num_timesteps=False, callback=second)
    assert second.update_clock == [250, 300, 350]
    assert second.updater.num_updates == 6


def test_dqn_gmp_round_trip_keeps_pruned_nnz_and_fraction_end(tmp_path: Path, checking_callback: Any) -> None:
    model = DQN(SparseDQNPolicy, "CartPole-v1", learning_starts=50, batch_size=32, buffer_size=1000, seed=0,
                policy_kwargs=dict(sparsity=0.9, start_dense=True, net_arch=[32, 32]))
    callback = checking_callback(method="gmp", update_every=50, end=0.8)
    model.learn(300, callback=callback)
    assert callback.update_clock == [100, 150, 200]  # end = 0.8 * 300 = 240
    nnz = {name: layer.nnz for name, layer in sparse_layers(model.policy).items()}
    assert sum(nnz.values()) < callback.nnz_history[0]
    model.save(tmp_path / "dqn")
    loaded = DQN.load(tmp_path / "dqn", env=model.get_env())
    assert {name: layer.nnz for name, layer in sparse_layers(loaded.policy).items()} == nnz
    obs = np.stack([model.observation_space.sample() for _ in range(8)])
    assert_same_model(model, loaded, obs)
    resumed = checking_callback(method="gmp", update_every=50, end=0.8)
    loaded.learn(200, reset_num_timesteps=False, callback=resumed)
    assert resumed.updater.schedule.end_step == 240, "fractions resolve against the first run's total"
    assert resumed.update_clock == []
    assert {name: layer.nnz for name, layer in sparse_layers(loaded.policy).items()} == nnz


def test_ppo_resume_with_several_envs(tmp_path: Path, checking_callback: Any) -> None:
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    model = PPO(SparseActorCriticPolicy, env, n_steps=64, batch_size=32, n_epochs=1, seed=0,
                policy_kwargs=dict(sparsity=0.8, net_arch=[32, 32]))
    first = checking_callback(method="set", update_every=100, end=10_000, seed=0)
    model.learn(256, callback=first)
    assert first.update_clock == [128, 256]
    model.save(tmp_path / "ppo")
    loaded = PPO.load(tmp_path / "ppo", env=env)
    assert_same_model(model, loaded, np.stack([model.observation_space.sample() for _ in range(8)]))
    second = checking_callback(method="set", update_every=100, end=10_000, seed=0)
    loaded.learn(256, reset_num_timesteps=False, callback=second)
    assert second.update_clock == [384, 512]


def test_wrong_method_on_resume(tmp_path: Path, checking_callback: Any) -> None:
    import pytest

    model = DQN(SparseDQNPolicy, "CartPole-v1", learning_starts=10, policy_kwargs=dict(sparsity=0.9, net_arch=[16]))
    model.learn(20, callback=checking_callback(method="set", update_every=5))
    model.save(tmp_path / "m")
    loaded = DQN.load(tmp_path / "m", env=model.get_env())
    with pytest.raises(ValueError, match="method"):
        loaded.learn(10, reset_num_timesteps=False, callback=checking_callback(method="rigl"))
