"""ONNX and torch.export of sparse agents: SB3's documented recipes on every CPU backend, and ``--format onnx``."""

import sys

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3 import DDPG, DQN, PPO, SAC, TD3
from stable_baselines3.common.envs import FakeImageEnv
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from sparse_rl.export import main as export_main
from sparse_rl.nn import backends
from sparse_rl.sb3 import (
    SparseActorCriticCnnPolicy,
    SparseActorCriticPolicy,
    SparseDQNCnnPolicy,
    SparseDQNPolicy,
    SparseSACPolicy,
    SparseTD3Policy,
)
from sparse_rl.sb3.onnx_export import export_onnx
from sparse_rl.train import main as train_main

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

CPU_BACKENDS = [name for name in ("cpu", "torch_csr", "reference") if backends.get(name).available("cpu")]
EXPORTERS = [pytest.param(False, id="torchscript"), pytest.param(True, id="dynamo")]


@pytest.fixture
def no_distribution_validation():
    """SB3's policies build torch distributions, whose argument checks torch.export cannot trace (dense ones alike)."""
    previous = th.distributions.Distribution._validate_args
    th.distributions.Distribution.set_default_validate_args(False)
    yield
    th.distributions.Distribution.set_default_validate_args(previous)


def _image_env(discrete: bool) -> FakeImageEnv:
    return FakeImageEnv(screen_height=36, screen_width=36, n_channels=2, discrete=discrete)  # HWC uint8 frames


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session, x: np.ndarray) -> list[np.ndarray]:
    return session.run(None, {session.get_inputs()[0].name: x})


AGENTS = {
    "sac-mlp": lambda: SAC(SparseSACPolicy, "Pendulum-v1", buffer_size=100, policy_kwargs=dict(sparsity=0.9), seed=0),
    "td3-mlp": lambda: TD3(SparseTD3Policy, "Pendulum-v1", buffer_size=100, policy_kwargs=dict(sparsity=0.9), seed=0),
    "dqn-mlp": lambda: DQN(SparseDQNPolicy, "CartPole-v1", buffer_size=100, policy_kwargs=dict(sparsity=0.9), seed=0),
    "ppo-mlp-discrete": lambda: PPO(SparseActorCriticPolicy, "CartPole-v1", n_steps=16, batch_size=16,
                                    policy_kwargs=dict(sparsity=0.9), seed=0),
    "ppo-mlp-continuous": lambda: PPO(SparseActorCriticPolicy, "Pendulum-v1", n_steps=16, batch_size=16,
                                      policy_kwargs=dict(sparsity=0.9, log_std_init=-1.0), seed=0),
    "dqn-cnn": lambda: DQN(SparseDQNCnnPolicy, _image_env(True), buffer_size=100, policy_kwargs=dict(sparsity=0.9), seed=0),
    "ppo-cnn-continuous": lambda: PPO(SparseActorCriticCnnPolicy, _image_env(False), n_steps=16, batch_size=16,
                                      policy_kwargs=dict(sparsity=0.9), seed=0),
}


@pytest.mark.parametrize("agent", list(AGENTS))
def test_onnx_actions_match_predict(agent, tmp_path):
    model = AGENTS[agent]()
    path = export_onnx(model, tmp_path / "policy.onnx")
    session = _session(path)
    env_space = model.get_env().get_attr("observation_space")[0]  # the env's own: HWC frames, before VecTransposeImage
    observations = np.stack([env_space.sample() for _ in range(16)])
    assert session.get_inputs()[0].shape[1:] == list(observations.shape[1:])
    for obs in (observations, observations[:1]):
        actions, expected = _run(session, obs)[0], model.predict(obs, deterministic=True)[0]
        assert actions.shape == expected.shape and actions.dtype == expected.dtype
        if hasattr(model.action_space, "n"):
            np.testing.assert_array_equal(actions, expected)
        else:
            np.testing.assert_allclose(actions, expected, atol=1e-5)
    if not hasattr(model.action_space, "n"):
        assert np.ptp(_run(session, observations)[0], axis=0).min() > 0, "the ONNX actions do not depend on the input"


def test_onnx_export_normalises_raw_observations_in_the_graph(tmp_path):
    env = VecNormalize(DummyVecEnv([lambda: gym.make("Pendulum-v1")]), clip_obs=1.5)
    env.obs_rms.mean, env.obs_rms.var = np.array([0.5, -0.2, 1.0]), np.array([0.3, 2.0, 4.0])
    model = PPO(SparseActorCriticPolicy, env, n_steps=16, batch_size=16, policy_kwargs=dict(sparsity=0.8), seed=0)
    path = export_onnx(model, tmp_path / "policy.onnx", obs_rms=env.obs_rms, clip_obs=env.clip_obs, epsilon=env.epsilon)
    raw = np.stack([env.observation_space.sample() for _ in range(32)]) * 3  # some beyond clip_obs after normalising
    expected = model.predict(env.normalize_obs(raw), deterministic=True)[0]
    np.testing.assert_allclose(_run(_session(path), raw)[0], expected, atol=1e-5)


def test_export_cli_onnx_format_matches_predict(tmp_path):
    argv = ["--algo", "ppo", "--env", "Pendulum-v1", "--sparsity", "0.9", "-f", str(tmp_path), "-n", "32", "--eval-freq",
            "-1", "-v", "0", "-params", "n_envs:1", "n_steps:32", "batch_size:32", "n_epochs:1", "normalize:True"]
    assert train_main(argv) == 0
    run_dir = tmp_path / "ppo" / "Pendulum-v1_1"
    assert export_main([str(run_dir), "-o", str(tmp_path / "out"), "--format", "onnx"]) == 0
    model = PPO.load(run_dir / "Pendulum-v1.zip", device="cpu")
    env = VecNormalize.load(str(run_dir / "Pendulum-v1" / "vecnormalize.pkl"), DummyVecEnv([lambda: gym.make("Pendulum-v1")]))
    raw = np.stack([env.observation_space.sample() for _ in range(16)])
    expected = model.predict(env.normalize_obs(raw), deterministic=True)[0]
    np.testing.assert_allclose(_run(_session(tmp_path / "out" / "policy.onnx"), raw)[0], expected, atol=1e-5)


def test_onnx_export_errors_are_one_line(tmp_path, monkeypatch, capsys):
    with pytest.raises(ValueError, match="cannot export a DDPG agent to ONNX") as error:
        export_onnx(DDPG("MlpPolicy", "Pendulum-v1", buffer_size=100), tmp_path / "policy.onnx")
    assert "\n" not in str(error.value)
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if the onnx extra were not installed
    with pytest.raises(ValueError, match=r'pip install "sparse_rl\[onnx\]"'):
        export_onnx(SAC(SparseSACPolicy, "Pendulum-v1", buffer_size=100), tmp_path / "policy.onnx")
    assert export_main([str(tmp_path), "-o", str(tmp_path / "out"), "--format", "onnx"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


class OnnxableSACActor(th.nn.Module):
    """SB3's documented recipe for SAC ("Exporting models"): the actor, deterministic."""

    def __init__(self, actor: th.nn.Module) -> None:
        super().__init__()
        self.actor = actor

    def forward(self, observation: th.Tensor) -> th.Tensor:
        return self.actor(observation, deterministic=True)


class OnnxableSB3Policy(th.nn.Module):
    """SB3's documented recipe for PPO: the whole policy, returning actions, values and log-probabilities."""

    def __init__(self, policy: th.nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, observation: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        return self.policy(observation, deterministic=True)


def _check_recipe(wrapper: th.nn.Module, path, dynamo: bool) -> None:
    """Export as SB3's docs do, then: ONNX Runtime outputs equal eager ones and change with the input."""
    th.onnx.export(wrapper, th.randn(1, 3), str(path), opset_version=17, input_names=["input"], dynamo=dynamo)
    session = _session(path)
    first, second = np.array([[0.3, -0.8, 1.2]], dtype=np.float32), np.array([[-0.9, 0.4, -2.0]], dtype=np.float32)
    for obs in (first, second):
        with th.no_grad():
            eager = wrapper(th.as_tensor(obs))
        eager = eager if isinstance(eager, tuple) else (eager,)
        for out, ref in zip(_run(session, obs), eager):
            np.testing.assert_allclose(out, ref.numpy(), atol=1e-5)
    assert not np.allclose(_run(session, first)[0], _run(session, second)[0]), "the ONNX model ignores its input"


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_sb3_sac_actor_recipe_exports_input_dependent_onnx(backend, dynamo, tmp_path, no_distribution_validation):
    model = SAC(SparseSACPolicy, "Pendulum-v1", buffer_size=100, policy_kwargs=dict(sparsity=0.9, backend=backend), seed=0)
    _check_recipe(OnnxableSACActor(model.policy.actor), tmp_path / "actor.onnx", dynamo)


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_sb3_ppo_policy_recipe_exports_input_dependent_onnx(backend, dynamo, tmp_path, no_distribution_validation):
    model = PPO(SparseActorCriticPolicy, "Pendulum-v1", n_steps=16, batch_size=16,
                policy_kwargs=dict(sparsity=0.9, backend=backend), seed=0)
    _check_recipe(OnnxableSB3Policy(model.policy), tmp_path / "policy.onnx", dynamo)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_torch_export_of_sparse_actors_matches_eager(backend, no_distribution_validation):
    def kwargs() -> dict:  # SB3 writes into policy_kwargs: a fresh dict per model
        return dict(buffer_size=100, policy_kwargs=dict(sparsity=0.9, backend=backend), seed=0)

    obs, other = th.randn(4, 3), th.randn(4, 3)
    for wrapper in (OnnxableSACActor(SAC(SparseSACPolicy, "Pendulum-v1", **kwargs()).policy.actor),
                    TD3(SparseTD3Policy, "Pendulum-v1", **kwargs()).policy.actor):
        exported = th.export.export(wrapper, (obs,)).module()
        with th.no_grad():
            th.testing.assert_close(exported(obs), wrapper(obs))
            th.testing.assert_close(exported(other), wrapper(other))
        assert not th.allclose(exported(obs), exported(other))
