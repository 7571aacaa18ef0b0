"""RL-Zoo-style config files: entry lookup with fallbacks, sparse/dense resolution, policy_kwargs strings."""

import pytest
import yaml

from sparse_rl import config as cfg
from sparse_rl.experiment import RunSpec, resolve_hyperparams


@pytest.mark.parametrize("algo", ["sac", "td3", "dqn", "ppo"])
def test_packaged_configs_parse_and_have_a_fallback(algo):
    entries = yaml.safe_load(cfg.default_config_file(algo).read_text())
    assert "default" in entries
    for name, entry in entries.items():
        kwargs = cfg.policy_kwargs_dict(entry.get("policy_kwargs"))
        assert 0 < kwargs["sparsity"] < 1, name
        topology, _ = cfg.topology_callback_kwargs(entry["callback"])
        assert topology["method"] == "rigl" and topology["update_every"] > 0, name


def test_entry_lookup_falls_back_to_atari_then_default(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("Foo-v0: {a: 1}\natari: {a: 2}\ndefault: {a: 3}\n")
    assert cfg.load_entry(path, "Foo-v0", atari=False) == {"a": 1}
    assert cfg.load_entry(path, "ALE/Pong-v5", atari=True) == {"a": 2}
    assert cfg.load_entry(path, "Bar-v0", atari=False) == {"a": 3}


@pytest.mark.parametrize("text,match", [("a: [1, 2", "not valid YAML"), ("- 1\n- 2\n", "must map env ids")])
def test_malformed_config_files(tmp_path, text, match):
    path = tmp_path / "bad.yml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        cfg.load_entry(path, "Pendulum-v1", atari=False)
    with pytest.raises(ValueError, match="not found"):
        cfg.load_entry(tmp_path / "missing.yml", "Pendulum-v1", atari=False)


def test_sparse_and_dense_resolution_share_everything_else():
    sparse, topology, is_sparse = resolve_hyperparams(RunSpec(algo="sac", env="HalfCheetah-v4", sparsity=0.8, seed=3))
    dense, no_topology, is_dense_sparse = resolve_hyperparams(RunSpec(algo="sac", env="HalfCheetah-v4", sparsity=0.0))
    assert is_sparse and not is_dense_sparse and no_topology is None
    assert sparse["policy"] == "SparseMlpPolicy" and dense["policy"] == "MlpPolicy"
    assert sparse["policy_kwargs"]["sparsity"] == 0.8 and "sparsity" not in dense["policy_kwargs"]
    assert topology == {"method": "rigl", "update_every": 1000, "drop_fraction": 0.5, "drop_schedule": "cosine", "end": 0.8,
                        "seed": 3}
    drop = ("policy", "policy_kwargs")
    assert {k: v for k, v in sparse.items() if k not in drop} == {k: v for k, v in dense.items() if k not in drop}
    _, set_topology, _ = resolve_hyperparams(RunSpec(algo="sac", env="HalfCheetah-v4", method="set"))
    assert set_topology["method"] == "set"
    _, _, method_dense = resolve_hyperparams(RunSpec(algo="sac", env="HalfCheetah-v4", method="dense"))
    assert not method_dense


def test_policy_kwargs_strings_and_schedules():
    kwargs = cfg.policy_kwargs_dict("dict(net_arch=[64, 64], activation_fn=nn.ReLU, sparsity=0.5)")
    assert kwargs["net_arch"] == [64, 64] and kwargs["sparsity"] == 0.5
    with pytest.raises(ValueError, match="not a valid Python dict"):
        cfg.policy_kwargs_dict("dict(net_arch=[64")
    schedule = cfg.resolve_schedules({"learning_rate": "lin_0.001"})["learning_rate"]
    assert schedule(1.0) == 0.001 and schedule(0.5) == 0.0005
