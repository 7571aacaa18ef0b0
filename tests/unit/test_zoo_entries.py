"""Which config entry a run takes: the packaged entry, else RL Zoo's tuned one with our sparse settings, else the
generic default, announced. Envs the packaged configs do not list took the generic ``default`` entry without a word
(PPO on Hopper: no VecNormalize, SB3's defaults; DQN on LunarLander: CartPole's settings; A2C on Atari: an MLP)."""

import pytest
import yaml

from sparse_rl.harness import hyperparams as hp
from sparse_rl.harness import zoo_entries
from sparse_rl.harness.resolve import RunSpec, resolve

rl_zoo3 = pytest.importorskip("rl_zoo3")


def _zoo(algo):
    return yaml.safe_load(zoo_entries.rl_zoo_file(algo).read_text())


def _dense_equal(resolved, zoo_entry, keys_ignored=()):
    """Every dense setting of RL Zoo's entry is the resolved run's (policy_kwargs: RL Zoo's keys)."""
    hyper = resolved.hyperparams
    for key, value in zoo_entry.items():
        if key in ("policy", "callback", *keys_ignored):
            continue
        if key == "policy_kwargs":
            ours = hyper["policy_kwargs"]
            for k, v in hp.policy_kwargs_dict(value).items():
                assert ours[k] == v, (key, k)
        elif key in ("normalize",):
            assert resolved.normalize is not None if value else resolved.normalize is None
        elif key == "n_timesteps":
            assert int(hyper[key]) == int(value)
        elif key in hp.SCHEDULE_KEYS or key in hp.EXPRESSION_KEYS:
            continue  # parsed forms; compared through resolve's own checks
        else:
            assert hyper[key] == value, key


@pytest.mark.parametrize("algo,env_id", [("ppo", "Hopper-v4"), ("ppo", "Walker2d-v4"), ("ppo", "LunarLander-v3"),
                                         ("ppo", "Acrobot-v1"), ("a2c", "LunarLander-v3"), ("dqn", "Acrobot-v1"),
                                         ("dqn", "MountainCar-v0"), ("sac", "MountainCarContinuous-v0"),
                                         ("td3", "Humanoid-v4"), ("sac", "Swimmer-v4")])
def test_an_env_without_a_packaged_entry_takes_rl_zoos_tuned_one_with_the_sparse_settings(algo, env_id):
    resolved = resolve(RunSpec(algo=algo, env=env_id))
    _dense_equal(resolved, _zoo(algo)[env_id])
    assert resolved.sparse and resolved.sparsity == 0.9 and resolved.method == "rigl"
    assert resolved.hyperparams["policy"].startswith("Sparse")
    assert any(n.startswith(f"hyperparameters: {algo}.yml has no entry for {env_id}: RL Zoo's tuned entry")
               for n in resolved.notes)
    dense = resolve(RunSpec(algo=algo, env=env_id, sparsity=0.0))
    _dense_equal(dense, _zoo(algo)[env_id])
    assert not dense.sparse and not dense.hyperparams["policy"].startswith("Sparse")


def test_ppo_hopper_normalizes_as_rl_zoo_does():
    assert resolve(RunSpec(algo="ppo", env="Hopper-v4")).normalize is not None
    v5 = resolve(RunSpec(algo="ppo", env="Hopper-v5"))
    assert v5.normalize is not None and any("RL Zoo tunes Hopper-v4; its settings used for Hopper-v5" in n for n in v5.notes)


def test_a2c_on_atari_keeps_rl_zoos_atari_settings_with_its_own_topology_interval():
    pytest.importorskip("ale_py")
    resolved = resolve(RunSpec(algo="a2c", env="BreakoutNoFrameskip-v4"))
    zoo = yaml.safe_load(zoo_entries.rl_zoo_file("a2c").read_text())["atari"]
    for key, value in zoo.items():
        if key not in ("policy", "policy_kwargs"):
            assert resolved.hyperparams[key] == value, key
    assert resolved.hyperparams["policy"] == "SparseCnnPolicy"
    assert "RMSpropTFLike" in str(resolved.hyperparams["policy_kwargs"])
    # 16 envs x 5 steps = 80 env steps per gradient step: the default's 2048 env steps left 26 gradient steps between
    # topology updates; the atari entry takes PPO's Atari interval (102 gradient steps)
    assert resolved.topology["update_every"] == 8192 and resolved.entry.endswith("a2c.yml [atari]")


def test_packaged_entries_come_first_and_the_generic_default_is_announced(tmp_path):
    resolved = resolve(RunSpec(algo="ppo", env="HalfCheetah-v4"))
    assert not any(n.startswith(("hyperparameters:", "note: no tuned")) for n in resolved.notes)
    conf = tmp_path / "c.yml"
    conf.write_text(yaml.safe_dump({"default": {"n_timesteps": 100, "policy": "SparseMlpPolicy",
                                                "policy_kwargs": "dict(sparsity=0.9)"}}))
    resolved = resolve(RunSpec(algo="ppo", env="Hopper-v4", conf_file=str(conf)))  # a -conf file is used as it is
    assert any(n.startswith("note: no tuned hyperparameters for Hopper-v4 (c.yml has no entry; a -conf file is used as "
                            "it is)") for n in resolved.notes)
    assert resolved.sources["n_timesteps"] == f"{conf} [default]"


def test_without_rl_zoo_the_default_entry_is_announced(monkeypatch):
    monkeypatch.setattr(zoo_entries, "rl_zoo_file", lambda algo: None)
    resolved = resolve(RunSpec(algo="ppo", env="Hopper-v4"))
    assert any("rl_zoo3, which tunes many more envs, is not installed" in n for n in resolved.notes)
    assert resolved.normalize is None  # the generic entry: SB3's defaults
    assert "ppo.yml [default]" in resolved.sources["n_timesteps"]


def test_with_sparse_settings_keeps_rl_zoos_dense_settings():
    dense = {"policy": "MlpPolicy", "normalize": True, "policy_kwargs": "dict(net_arch=[64, 64], log_std_init=-2)",
             "n_timesteps": 1000}
    sparse = {"policy": "SparseMlpPolicy", "learning_starts": 10000, "policy_kwargs": "dict(sparsity=0.9, "
              "distribution='erk', net_arch=[400, 300])", "callback": [{hp.TOPOLOGY_CALLBACK: {"method": "rigl"}}]}
    from sparse_rl.harness.resolve import SPARSE_ALIASES, SPARSE_POLICY_KWARGS

    entry = zoo_entries.with_sparse_settings(dense, sparse, SPARSE_ALIASES, SPARSE_POLICY_KWARGS)
    assert entry == {"policy": "SparseMlpPolicy", "normalize": True, "n_timesteps": 1000,
                     "policy_kwargs": {"net_arch": [64, 64], "log_std_init": -2, "sparsity": 0.9, "distribution": "erk"},
                     "callback": [{hp.TOPOLOGY_CALLBACK: {"method": "rigl"}}]}


def test_every_rl_zoo_entry_for_an_env_installed_here_resolves_sparse_and_dense():
    import gymnasium as gym

    from sparse_rl.harness.envs import register_optional_envs

    register_optional_envs()
    resolved = 0
    for algo in zoo_entries.RL_ZOO_FILES:
        if algo == "ppo_mask":  # RL Zoo's PPO file, mostly continuous envs: see the MaskablePPO test
            continue
        ours = yaml.safe_load(hp.default_config_file(algo).read_text())
        for env_id in _zoo(algo):
            if env_id in ours or env_id in ("atari", "default") or env_id not in gym.registry:
                continue
            for sparsity in (None, 0.0):
                if (algo, env_id) == ("sac", "CarRacing-v3"):  # RL Zoo's entry needs its external autoencoder
                    with pytest.raises(ValueError, match="ae.wrapper.AutoencoderWrapper' cannot be imported"):
                        resolve(RunSpec(algo=algo, env=env_id, sparsity=sparsity))
                    continue
                run = resolve(RunSpec(algo=algo, env=env_id, sparsity=sparsity))
                assert run.sparse == (sparsity is None), (algo, env_id)
                resolved += 1
    assert resolved >= 100


def test_maskable_ppo_takes_rl_zoos_ppo_entry_with_its_action_masks_wrapper():
    pytest.importorskip("sb3_contrib")
    resolved = resolve(RunSpec(algo="ppo_mask", env="LunarLander-v3"))
    _dense_equal(resolved, _zoo("ppo")["LunarLander-v3"])
    wrappers = hp.class_specs(resolved.hyperparams.get("env_wrapper"), "env_wrapper")
    assert [cls.__name__ for cls, _ in wrappers] == ["ActionMasks"]
    assert any("RL Zoo's tuned entry [LunarLander-v3]" in n for n in resolved.notes)


def test_an_env_the_algorithm_cannot_act_in_is_named_before_a_hyperparameter_error(tmp_path, capsys):
    """MaskablePPO on Pendulum took RL Zoo's PPO entry and failed on its use_sde: the action space is the real error."""
    pytest.importorskip("sb3_contrib")
    from sparse_rl.train import main

    assert main(["--algo", "ppo_mask", "--env", "Pendulum-v1", "-n", "100", "-f", str(tmp_path)]) == 2
    assert "--algo ppo_mask needs a discrete action space" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_the_entry_and_every_hyperparameter_are_printed_and_saved():
    """Only policy_kwargs, the topology and normalize were printed: the entry a run took and its other settings
    (learning rate, batch size...) were in resolved.yml only."""
    resolved = resolve(RunSpec(algo="ppo", env="HalfCheetah-v4"))
    [line] = [line for line in resolved.describe() if line.startswith("  hyperparameters (")]
    assert "ppo.yml [HalfCheetah-v4]): n_envs=1, batch_size=64, n_steps=512, gamma=0.98" in line
    assert resolved.saved()["entry"].endswith("ppo.yml [HalfCheetah-v4]")


def test_an_env_whose_dependency_is_missing_is_one_error_line(tmp_path, capsys):
    """DQN on LunarLander-v3 without Box2D was a 42-line traceback (gymnasium's DependencyNotInstalled)."""
    import importlib.util

    if importlib.util.find_spec("Box2D") is not None:
        pytest.skip("Box2D is installed here")
    from sparse_rl.train import main

    assert main(["--algo", "dqn", "--env", "LunarLander-v3", "-n", "100", "-f", str(tmp_path / "logs")]) == 2
    assert "error: LunarLander-v3 cannot be built here: Box2D is not installed" in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()


def test_ale_v5_frame_skip_is_announced():
    pytest.importorskip("ale_py")
    resolved = resolve(RunSpec(algo="dqn", env="ALE/Pong-v5"))
    assert any(n.startswith("env: ALE/*-v5 frameskip set to 1") for n in resolved.notes)
