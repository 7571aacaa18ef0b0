"""Safe export: safetensors + JSON, loaded without unpickling, same actions as the trained policy, and small."""

import pickle

import numpy as np
import pytest
from stable_baselines3 import A2C, DQN, PPO, SAC
from stable_baselines3.common.vec_env import VecNormalize

from sparse_rl.export import main as export_main
from sparse_rl.harness.envs import make_env
from sparse_rl.harness.export import _config_sha256, export_policy, load_exported
from sparse_rl.sb3 import SparseActorCriticPolicy, SparseDQNCnnPolicy
from sparse_rl.train import main as train_main


def _no_pickle(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("load_exported must not unpickle anything")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


def _file_size(folder):
    return sum(p.stat().st_size for p in folder.iterdir())


def test_sac_run_export_is_small_and_acts_identically(tmp_path, monkeypatch):
    common = ["--algo", "sac", "--env", "HalfCheetah-v4", "-f", str(tmp_path), "-n", "120", "--eval-freq", "-1", "-v", "0"]
    params = ["-params", "learning_starts:60", "buffer_size:200", "batch_size:32"]
    assert train_main([*common, "--sparsity", "0.9", *params, "policy_kwargs:dict(dense_layers=())"]) == 0
    assert train_main([*common, "--sparsity", "0", *params]) == 0
    sparse_out, dense_out = tmp_path / "sparse_export", tmp_path / "dense_export"
    assert export_main([str(tmp_path / "sac" / "HalfCheetah-v4_1"), "-o", str(sparse_out)]) == 0
    assert export_main([str(tmp_path / "sac" / "HalfCheetah-v4_2"), "-o", str(dense_out)]) == 0
    assert _file_size(sparse_out) <= 0.16 * _file_size(dense_out)
    model = SAC.load(tmp_path / "sac" / "HalfCheetah-v4_1" / "HalfCheetah-v4.zip", device="cpu")
    _no_pickle(monkeypatch)
    policy = load_exported(sparse_out)
    observations = np.stack([model.observation_space.sample() for _ in range(16)])
    np.testing.assert_allclose(policy.predict(observations)[0], model.predict(observations, deterministic=True)[0], atol=1e-6)
    np.testing.assert_allclose(policy.predict(observations[0])[0], model.predict(observations[0], deterministic=True)[0],
                               atol=1e-6)


@pytest.mark.parametrize("algo", ["ppo", "a2c"])  # A2C: ONNX exported it, the safetensors export refused it
def test_actor_critic_export_applies_vecnormalize_statistics(tmp_path, algo):
    env = VecNormalize(make_env("Pendulum-v1", n_envs=1, seed=0))
    if algo == "ppo":
        model = PPO(SparseActorCriticPolicy, env, n_steps=64, batch_size=32, n_epochs=1, policy_kwargs=dict(sparsity=0.8),
                    seed=0)
    else:
        model = A2C(SparseActorCriticPolicy, env, n_steps=64, policy_kwargs=dict(sparsity=0.8), seed=0)
    model.learn(128)
    export_policy(model, tmp_path, obs_rms=env.obs_rms, clip_obs=env.clip_obs, epsilon=env.epsilon)
    policy = load_exported(tmp_path)
    raw = np.stack([env.observation_space.sample() for _ in range(8)])
    expected = model.predict(env.normalize_obs(raw), deterministic=True)[0]
    np.testing.assert_allclose(policy.predict(raw)[0], expected, atol=1e-5)


def test_dqn_cnn_export_reads_channels_last_frames(tmp_path):
    env = make_env("ALE/Pong-v5", n_envs=1, seed=0)
    model = DQN(SparseDQNCnnPolicy, env, buffer_size=100, policy_kwargs=dict(sparsity=0.9), seed=0)
    export_policy(model, tmp_path)
    policy = load_exported(tmp_path)
    frames = np.stack([env.observation_space.sample() for _ in range(4)])  # (4, 84, 84, 4): as the env gives them
    assert frames.shape[1:] == (84, 84, 4)
    np.testing.assert_array_equal(policy.predict(frames)[0], model.predict(frames, deterministic=True)[0])
    env.close()


def test_bad_export_folders(tmp_path):
    with pytest.raises(ValueError, match="not an export folder"):
        load_exported(tmp_path)
    assert export_main([str(tmp_path), "-o", str(tmp_path / "out")]) == 2


def test_an_unsupported_agent_leaves_no_folder(tmp_path):
    """export of a TQC agent gave its one error line but left an empty output folder behind."""
    tqc = type("TQC", (), {"policy": None})()
    with pytest.raises(ValueError, match="cannot export a TQC agent"):
        export_policy(tqc, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_damaged_weights_are_found_not_acted_on(tmp_path):
    """Flipped bytes in policy.safetensors loaded silently and acted wrongly; CSR indices out of range gave a raw
    IndexError; an observation of the wrong shape a raw torch error."""
    import hashlib
    import json
    import warnings

    from safetensors.torch import load_file, save_file

    model = SAC("SparseMlpPolicy", "Pendulum-v1", buffer_size=100, policy_kwargs=dict(sparsity=0.9), seed=0)
    export_policy(model, tmp_path)
    tensors_file, config_file = tmp_path / "policy.safetensors", tmp_path / "policy.json"
    good = tensors_file.read_bytes()
    damaged = bytearray(good)
    damaged[-400:] = bytes(b ^ 0xFF for b in damaged[-400:])  # inside the last tensor's values
    tensors_file.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="does not match the SHA-256 in policy.json") as error:
        load_exported(tmp_path)
    assert "\n" not in str(error.value)
    # a well-formed file whose CSR indices point outside the matrix (its checksum recorded): one line
    tensors_file.write_bytes(good)
    tensors = load_file(str(tensors_file))
    key = next(k for k in tensors if k.endswith(".indices"))
    tensors[key] = tensors[key] + 1000
    save_file(tensors, str(tensors_file))
    config = json.loads(config_file.read_text())
    config["tensors_sha256"] = hashlib.sha256(tensors_file.read_bytes()).hexdigest()
    config["config_sha256"] = _config_sha256(config)
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="not a valid .* CSR matrix") as error:
        load_exported(tmp_path)
    assert "\n" not in str(error.value)
    # policy.json's own settings (action bounds, normalisation, ops) are checked too
    export_policy(model, tmp_path)
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "action_high": [0.5]}))
    with pytest.raises(ValueError, match="settings do not match its config_sha256"):
        load_exported(tmp_path)
    # an export written before the checksums were recorded loads, with a warning
    del config["tensors_sha256"], config["config_sha256"]
    config_file.write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="no tensors_sha256"):
        policy = load_exported(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export_policy(model, tmp_path)
        policy = load_exported(tmp_path)
    with pytest.raises(ValueError, match=r"observation of shape \(2,\): this policy reads \(3,\)"):
        policy.predict(np.zeros(2))
    with pytest.raises(ValueError, match=r"observation of shape \(1, 1, 3\)"):
        policy.predict(np.zeros((1, 1, 3)))
    assert policy.predict(np.zeros((5, 3)))[0].shape == (5, 1)
