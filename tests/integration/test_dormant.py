"""Dormant-neuron fractions (Sokar et al. 2023) measured during training, for dense and sparse agents."""

import csv

import numpy as np
import torch as th
from stable_baselines3 import SAC

from sparse_rl.sb3 import TopologyCallback
from sparse_rl.sb3.dormant import DormantNeuronCallback, dormant_fractions
from sparse_rl.train import main as train_main


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_a_dead_unit_is_dormant_and_a_live_one_is_not():
    model = SAC("MlpPolicy", "Pendulum-v1", buffer_size=10, policy_kwargs=dict(net_arch=[8, 8]))
    with th.no_grad():
        model.policy.actor.latent_pi[0].weight[:3] = 0.0
        model.policy.actor.latent_pi[0].bias[:3] = -1.0  # ReLU(-1) = 0 for every state: 3 of 16 actor units dead
    obs, actions = th.randn(64, 3), th.rand(64, 1) * 2 - 1
    fractions = dormant_fractions(model.policy, obs, actions, taus=(0.0, 0.1))
    assert fractions["actor"]["units"] == 16 and fractions["critic"]["units"] == 32
    assert 3 / 16 <= fractions["actor"]["tau=0"] <= fractions["actor"]["tau=0.1"]
    with th.no_grad():
        model.policy.actor.latent_pi[0].weight[:3] = 1.0
        model.policy.actor.latent_pi[0].bias[:3] = 1.0  # alive again
    assert dormant_fractions(model.policy, obs, actions, taus=(0.0,))["actor"]["tau=0"] < fractions["actor"]["tau=0"]


def test_measuring_never_changes_training():
    def train(with_callback):
        model = SAC("SparseMlpPolicy", "Pendulum-v1", learning_starts=50, buffer_size=500, batch_size=16, seed=3,
                    policy_kwargs=dict(net_arch=[32, 32]))
        callbacks = [TopologyCallback(method="rigl", update_every=50, end=1.0)]
        if with_callback:
            callbacks.append(DormantNeuronCallback(every=60))
        model.learn(200, callback=callbacks)
        return model.policy.state_dict()

    a, b = train(False), train(True)
    assert all(th.equal(a[k], b[k]) for k in a)


def test_ppo_rigl_and_dormant_at_the_same_rollout_end(tmp_path):
    """RigL's dense-gradient pass flattens the rollout buffer; the measurement used to index it as [step, env] and
    crashed the run at the first rollout end where both fall (HalfCheetah PPO at 10,240 steps with the defaults)."""
    assert train_main(["--algo", "ppo", "--env", "CartPole-v1", "-n", "1024", "--n-envs", "2", "--eval-freq", "512",
                       "--eval-episodes", "1", "-f", str(tmp_path), "-v", "0", "-params", "n_steps:128", "batch_size:64",
                       "callback:[{sparse_rl.sb3.TopologyCallback: {method: rigl, update_every: 512, end: 1.0}}]"]) == 0
    rows = _rows(next(tmp_path.rglob("dormant.csv")))
    assert sorted({int(r["timesteps"]) for r in rows}) == [512, 1024]
    assert {r["network"] for r in rows} == {"mlp_extractor.policy_net", "mlp_extractor.value_net"}


def test_dense_runs_log_dormant_fractions_including_the_final_step(tmp_path):
    assert train_main(["--algo", "sac", "--env", "Pendulum-v1", "--sparsity", "0", "-n", "250", "--eval-freq", "100",
                       "--eval-episodes", "1", "-f", str(tmp_path), "-v", "0", "-params", "learning_starts:50"]) == 0
    rows = _rows(next(tmp_path.rglob("dormant.csv")))
    evaluations = np.load(next(tmp_path.rglob("evaluations.npz")))["timesteps"].tolist()
    assert sorted({int(r["timesteps"]) for r in rows}) == evaluations == [100, 200, 250]
    assert all(0.0 <= float(r["fraction"]) <= 1.0 for r in rows)
