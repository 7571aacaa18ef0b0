"""model.save / Algo.load round trips of sparse models, and the topology schedule across a save and a load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch as th
from stable_baselines3 import DQN, PPO, SAC, TD3
from stable_baselines3.common.env_util import make_vec_env

from sparse_rl.sb3 import SparseActorCriticPolicy, SparseDQNPolicy, SparseSACPolicy
from sparse_rl.sb3.builders import find_optimizers, sparse_layers


def assert_same_model(a: Any, b: Any, obs: np.ndarray) -> None:
    state_a, state_b = a.policy.state_dict(), b.policy.state_dict()
    assert state_a.keys() == state_b.keys()
    assert "topology_state._json" in state_a and "_extra_state" not in state_a
    for key in state_a:  # tensors only, the topology state included
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
    assert resumed.updater.schedule.end_step == 400, "fractions resolve against this learn call's end (0.8 * 500)"
    assert resumed.update_clock == [350, 400]  # after the clock (300); the ramp already reached its final sparsity
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
    model = DQN(SparseDQNPolicy, "CartPole-v1", learning_starts=10, policy_kwargs=dict(sparsity=0.9, net_arch=[16]))
    model.learn(20, callback=checking_callback(method="set", update_every=5))
    model.save(tmp_path / "m")
    loaded = DQN.load(tmp_path / "m", env=model.get_env())
    with pytest.raises(ValueError, match="method"):
        loaded.learn(10, reset_num_timesteps=False, callback=checking_callback(method="rigl"))


def test_model_saved_with_old_extra_state_format_still_loads(tmp_path: Path, checking_callback: Any, monkeypatch: Any
                                                             ) -> None:
    import zipfile

    from torch import nn

    from sparse_rl.sb3.policies import SparsePolicyMixin

    def old_format(self: Any, destination: Any, prefix: str, keep_vars: bool) -> None:  # what get_extra_state wrote
        nn.Module._save_to_state_dict(self, destination, prefix, keep_vars)
        destination[prefix + "_extra_state"] = dict(self.topology_state or {})

    model = DQN(SparseDQNPolicy, "CartPole-v1", learning_starts=50, batch_size=32, buffer_size=1000, seed=0,
                policy_kwargs=dict(sparsity=0.9, net_arch=[32]))
    model.learn(200, callback=checking_callback(method="set", update_every=50, end=10_000, seed=0))
    with monkeypatch.context() as patch:
        patch.setattr(SparsePolicyMixin, "_save_to_state_dict", old_format)
        model.save(tmp_path / "old")
    with zipfile.ZipFile(tmp_path / "old.zip") as archive, archive.open("policy.pth") as file:
        saved = th.load(file, weights_only=False)
    assert isinstance(saved["_extra_state"], dict) and not any(k.startswith("topology_state") for k in saved)
    loaded = DQN.load(tmp_path / "old", env=model.get_env())
    state = loaded.policy.topology_state
    assert state["updater"]["num_updates"] == 3 and state["next_update_step"] == 250
    assert th.equal(state["updater"]["generator"], model.policy.topology_state["updater"]["generator"])
    assert all(isinstance(value, th.Tensor) for value in loaded.policy.state_dict().values())
    resumed = checking_callback(method="set", update_every=50, end=10_000, seed=0)
    loaded.learn(100, reset_num_timesteps=False, callback=resumed)
    assert resumed.update_clock == [250, 300]


@pytest.mark.parametrize("algo, env_id", [(SAC, "Pendulum-v1"), (TD3, "Pendulum-v1"), (DQN, "CartPole-v1")])
def test_sb3_save_load_policy_pattern(tmp_path: Path, checking_callback: Any, algo: Any, env_id: str) -> None:
    """SB3's ``test_save_load_policy`` / ``test_save_load_q_net`` steps on a 90 %-sparse policy after topology updates:
    the policy and its actor / q-network saved alone and loaded by their own classes act the same."""
    model = algo("SparseMlpPolicy", env_id, policy_kwargs=dict(sparsity=0.9, net_arch=[16]), learning_starts=50,
                 buffer_size=500, seed=0)
    model.learn(128, callback=checking_callback(method="set", update_every=25, end=10_000, seed=0))
    policy = model.policy
    net = policy.q_net if algo is DQN else policy.actor
    params = policy.state_dict()
    assert all(isinstance(value, th.Tensor) for value in params.values())
    obs = np.stack([model.observation_space.sample() for _ in range(10)])
    actions = policy.predict(obs, deterministic=True)[0]
    policy.save(tmp_path / "policy.pkl")
    net.save(tmp_path / "net.pkl")
    policy_loaded = type(policy).load(tmp_path / "policy.pkl")
    net_loaded = type(net).load(tmp_path / "net.pkl")
    new_params = policy_loaded.state_dict()
    assert params.keys() == new_params.keys()
    assert all(th.equal(params[key], new_params[key]) for key in params)
    assert policy_loaded.topology_state["updater"]["num_updates"] == policy.topology_state["updater"]["num_updates"]
    np.testing.assert_allclose(policy_loaded.predict(obs, deterministic=True)[0], actions, rtol=1e-4)
    np.testing.assert_allclose(net_loaded.predict(obs, deterministic=True)[0], actions, rtol=1e-4)
    assert {n for n, m in net_loaded.named_modules() if m.__class__.__name__ == "SparseLinear"} == set(
        net.sparse_layout())
