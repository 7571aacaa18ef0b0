"""Real short SB3 runs of every algorithm with every topology method, with invariants checked after each update."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import pytest
from stable_baselines3 import DQN, PPO, SAC, TD3
from stable_baselines3.common.env_util import make_atari_env, make_vec_env
from stable_baselines3.common.vec_env import VecFrameStack

from sparse_rl.sb3 import (
    SparseActorCriticCnnPolicy,
    SparseActorCriticPolicy,
    SparseDQNCnnPolicy,
    SparseDQNPolicy,
    SparseSACPolicy,
    SparseTD3Policy,
    sparsity_report,
)

METHODS = ["static", "set", "rigl", "srigl", "gmp"]
OFF_POLICY = dict(learning_starts=50, batch_size=32, buffer_size=1000)
SETTINGS: dict[str, tuple[Any, Any, dict[str, Any]]] = {
    "sac": (SAC, SparseSACPolicy, OFF_POLICY),
    "td3": (TD3, SparseTD3Policy, OFF_POLICY),
    "dqn": (DQN, SparseDQNPolicy, {**OFF_POLICY, "train_freq": 1}),
    "ppo": (PPO, SparseActorCriticPolicy, dict(n_steps=64, batch_size=32, n_epochs=2)),
}


def method_kwargs(method: str) -> dict[str, Any]:
    return {"srigl": dict(constant_fan_in=True), "gmp": dict(start_dense=True)}.get(method, {})


def run(algo_name: str, env: Any, method: str, steps: int, checking_callback: Any, net_arch: Any = (64, 64),
        policy: Any = None, end: int | float = 1.0, **extra: Any) -> tuple[Any, Any]:
    algo, policy_cls, kwargs = SETTINGS[algo_name]
    policy_kwargs = dict(sparsity=0.9, **method_kwargs(method))
    if net_arch is not None:
        policy_kwargs["net_arch"] = list(net_arch)
    model = algo(policy or policy_cls, env, policy_kwargs=policy_kwargs, seed=0, device="cpu", **{**kwargs, **extra})
    callback = checking_callback(method=method, update_every=50, drop_fraction=0.3, end=end, seed=0)
    model.learn(steps, callback=callback)
    return model, callback


def check_run(model: Any, callback: Any, method: str) -> None:
    updates = callback.updater.num_updates
    if method == "static":
        assert updates == 0
        assert len(set(callback.nnz_history)) == 1
        return
    assert updates >= 2, f"expected several updates, got {updates}"
    assert all(callback.rollout_full), "on-policy updates must happen at rollout end"
    if method == "gmp":
        assert all(b <= a for a, b in zip(callback.nnz_history, callback.nnz_history[1:]))
        assert callback.nnz_history[-1] < 0.5 * callback.nnz_history[0]
    else:
        assert len(set(callback.nnz_history)) == 1, "DST must keep nnz constant"
        assert callback.last_stats is not None
    assert 0.0 < sparsity_report(model)["total"]["density"] < 1.0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("algo_name, env_id", [("sac", "Pendulum-v1"), ("td3", "Pendulum-v1"), ("dqn", "CartPole-v1"),
                                               ("ppo", "CartPole-v1")])
def test_classic_control(algo_name: str, env_id: str, method: str, checking_callback: Any) -> None:
    model, callback = run(algo_name, env_id, method, 220 if algo_name in ("sac", "td3") else 320, checking_callback)
    check_run(model, callback, method)


def test_first_update_changes_connections(checking_callback: Any) -> None:
    for method in ("set", "rigl"):
        model, callback = run("sac", "Pendulum-v1", method, 110, checking_callback, end=10_000)
        assert callback.updater.num_updates == 1
        assert callback.last_stats.changed_fraction > 0.1


@pytest.mark.parametrize("algo_name, method", [("sac", "rigl"), ("td3", "set"), ("ppo", "srigl")])
def test_halfcheetah(algo_name: str, method: str, checking_callback: Any) -> None:
    extra = dict(n_steps=128) if algo_name == "ppo" else {}
    model, callback = run(algo_name, "HalfCheetah-v4", method, 256 if algo_name == "ppo" else 220, checking_callback, **extra)
    check_run(model, callback, method)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("algo_name", ["sac", "td3", "ppo"])
def test_halfcheetah_all_methods(algo_name: str, method: str, checking_callback: Any) -> None:
    extra = dict(n_steps=128) if algo_name == "ppo" else {}
    model, callback = run(algo_name, "HalfCheetah-v4", method, 400, checking_callback, **extra)
    check_run(model, callback, method)


def pong(n_envs: int = 1) -> Any:
    import ale_py

    gym.register_envs(ale_py)
    return VecFrameStack(make_atari_env("PongNoFrameskip-v4", n_envs=n_envs, seed=0), n_stack=4)


ATARI = [("dqn", "rigl"), ("ppo", "set")]
ATARI_SLOW = [(a, m) for a in ("dqn", "ppo") for m in METHODS if (a, m) not in ATARI]


def run_atari(algo_name: str, method: str, checking_callback: Any) -> tuple[Any, Any]:
    if algo_name == "dqn":
        extra = dict(optimize_memory_usage=False, train_freq=4)
        policy = SparseDQNCnnPolicy
    else:
        extra = dict(n_steps=64, n_epochs=1)
        policy = SparseActorCriticCnnPolicy
    return run(algo_name, pong(), method, 256, checking_callback, net_arch=None, policy=policy, **extra)


@pytest.mark.parametrize("algo_name, method", ATARI)
def test_atari(algo_name: str, method: str, checking_callback: Any) -> None:
    model, callback = run_atari(algo_name, method, checking_callback)
    check_run(model, callback, method)
    layers = sparsity_report(model)["layers"]
    conv = [name for name in layers if name.endswith("cnn.0")]
    assert conv and all(layers[name]["density"] < 1.0 for name in conv)


@pytest.mark.slow
@pytest.mark.parametrize("algo_name, method", ATARI_SLOW)
def test_atari_all_methods(algo_name: str, method: str, checking_callback: Any) -> None:
    model, callback = run_atari(algo_name, method, checking_callback)
    check_run(model, callback, method)


@pytest.mark.parametrize("algo_name, env_id, n_envs, update_every", [
    ("dqn", "CartPole-v1", 3, 10), ("sac", "Pendulum-v1", 2, 25), ("ppo", "CartPole-v1", 2, 64),
    ("ppo", "CartPole-v1", 2, 200),
])
def test_clock_with_several_envs(algo_name: str, env_id: str, n_envs: int, update_every: int, checking_callback: Any) -> None:
    algo, policy_cls, kwargs = SETTINGS[algo_name]
    env = make_vec_env(env_id, n_envs=n_envs, seed=0)
    model = algo(policy_cls, env, policy_kwargs=dict(sparsity=0.9, net_arch=[32]), seed=0, **kwargs)
    callback = checking_callback(method="set", update_every=update_every, end=10_000, seed=0)
    model.learn(600, callback=callback)
    start = callback.updater.schedule.start_step
    period = n_envs * kwargs.get("n_steps", 1)  # how far the clock moves between two checks
    # Expected: at each check, fire when the clock reached the next scheduled step, then wait for the first scheduled
    # step after the clock (never skipped, never repeated).
    expected, next_step, clock = [], start + update_every, 0
    while clock < 600:
        clock += period
        if clock >= next_step:
            expected.append(clock)
            next_step = start + ((clock - start) // update_every + 1) * update_every
    assert callback.update_clock == expected
    assert len(expected) >= 2
