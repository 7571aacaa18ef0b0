"""Hyperparameter files and their resolution: entry lookup, the override rule, sparse/dense, VecNormalize, checks."""

import pytest
import yaml

from sparse_rl.harness import hyperparams as hp
from sparse_rl.harness.checks import INTEGER_KEYS
from sparse_rl.harness.resolve import RunSpec, resolve


@pytest.mark.parametrize("algo", ["sac", "td3", "dqn", "ppo", "a2c"])
def test_packaged_configs_parse_and_have_a_fallback(algo):
    entries = yaml.safe_load(hp.default_config_file(algo).read_text())
    assert "default" in entries
    for name, entry in entries.items():
        kwargs = hp.policy_kwargs_dict(entry.get("policy_kwargs"))
        assert 0 < kwargs["sparsity"] < 1, name
        topology, _ = hp.topology_callback_kwargs(entry["callback"])
        assert topology["method"] == "rigl" and topology["update_every"] > 0, name


def _entry(path, env_id, atari):
    from sparse_rl.harness.zoo_entries import config_entry

    entry, origin, _ = config_entry(path, env_id, atari, None, {}, ())
    return entry, origin.rsplit(" ", 1)[1].strip("[]")


def test_entry_lookup_falls_back_to_atari_then_default(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("Foo-v0: {a: 1}\natari: {a: 2}\ndefault: {a: 3}\n")
    assert _entry(path, "Foo-v0", atari=False) == ({"a": 1}, "Foo-v0")
    assert _entry(path, "ALE/Pong-v5", atari=True) == ({"a": 2}, "atari")
    assert _entry(path, "Bar-v0", atari=False) == ({"a": 3}, "default")


@pytest.mark.parametrize("text,match", [("a: [1, 2", "not valid YAML"), ("- 1\n- 2\n", "must map env ids")])
def test_malformed_config_files(tmp_path, text, match):
    path = tmp_path / "bad.yml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        _entry(path, "Pendulum-v1", atari=False)
    with pytest.raises(ValueError, match="not found"):
        _entry(tmp_path / "missing.yml", "Pendulum-v1", atari=False)


def test_sparse_and_dense_resolution_share_everything_else():
    sparse = resolve(RunSpec(algo="sac", env="HalfCheetah-v4", sparsity=0.8, seed=3))
    dense = resolve(RunSpec(algo="sac", env="HalfCheetah-v4", sparsity=0.0))
    assert sparse.sparse and not dense.sparse and dense.topology is None
    assert sparse.hyperparams["policy"] == "SparseMlpPolicy" and dense.hyperparams["policy"] == "MlpPolicy"
    assert sparse.hyperparams["policy_kwargs"]["sparsity"] == 0.8 and "sparsity" not in dense.hyperparams["policy_kwargs"]
    assert sparse.topology == {"method": "rigl", "update_every": 1000, "drop_fraction": 0.5, "drop_schedule": "cosine",
                               "end": 0.8, "seed": 3}
    drop = ("policy", "policy_kwargs")
    assert {k: v for k, v in sparse.hyperparams.items() if k not in drop} == \
        {k: v for k, v in dense.hyperparams.items() if k not in drop}
    assert resolve(RunSpec(algo="sac", env="HalfCheetah-v4", method="set")).topology["method"] == "set"
    assert not resolve(RunSpec(algo="sac", env="HalfCheetah-v4", method="dense")).sparse


def test_policy_kwargs_override_keeps_the_configs_sparsity():
    """-params policy_kwargs:dict(net_arch=...) used to train the dense baseline silently (issue: silent overrides)."""
    resolved = resolve(RunSpec(algo="sac", env="Pendulum-v1", hyperparams={"policy_kwargs": "dict(net_arch=[64, 64])"}))
    assert resolved.sparse and resolved.method == "rigl" and resolved.sparsity == 0.9
    assert resolved.hyperparams["policy_kwargs"] == {"sparsity": 0.9, "distribution": "erk", "net_arch": [64, 64]}
    assert any("keeps ['distribution', 'sparsity']" in note for note in resolved.notes)
    named = resolve(RunSpec(algo="sac", env="Pendulum-v1", hyperparams={"policy_kwargs": "dict(sparsity=0.5)"}))
    assert named.sparsity == 0.5


def test_every_kwargs_key_merges_and_other_keys_replace():
    merged, notes = hp.merge_overrides({"env_kwargs": {"a": 1, "b": 2}, "gamma": 0.9},
                                       {"env_kwargs": {"b": 3}, "gamma": 0.8}, "-params")
    assert merged == {"env_kwargs": {"a": 1, "b": 3}, "gamma": 0.8} and len(notes) == 2


def test_sparse_policy_alias_without_sparsity_is_sparse_by_default(tmp_path):
    conf = tmp_path / "c.yml"
    conf.write_text(yaml.safe_dump({"Pendulum-v1": {"n_timesteps": 100, "policy": "SparseMlpPolicy"}}))
    resolved = resolve(RunSpec(algo="sac", env="Pendulum-v1", conf_file=str(conf)))
    assert resolved.sparse and resolved.sparsity == 0.9 and resolved.method == "rigl"
    assert any("default 0.9" in note for note in resolved.notes)
    conf.write_text(yaml.safe_dump({"Pendulum-v1": {"n_timesteps": 100, "policy": "MlpPolicy"}}))
    assert not resolve(RunSpec(algo="sac", env="Pendulum-v1", conf_file=str(conf))).sparse


@pytest.mark.parametrize("spec,match", [
    (dict(method="dense", sparsity=0.9), "--method dense trains the dense baseline"),
    (dict(method="rigl", sparsity=0.0), "--method rigl needs a sparsity above 0"),
])
def test_contradictory_flags_are_an_error(spec, match):
    with pytest.raises(ValueError, match=match):
        resolve(RunSpec(algo="sac", env="Pendulum-v1", **spec))


@pytest.mark.parametrize("normalize,expected", [
    (True, {"gamma": 0.98}),
    ("dict(norm_obs=True, norm_reward=False)", {"norm_obs": True, "norm_reward": False, "gamma": 0.98}),
    ({"norm_obs": False}, {"norm_obs": False, "gamma": 0.98}),
    (False, None),
])
def test_vecnormalize_follows_rl_zoo_with_the_algorithms_gamma(normalize, expected):
    """RL Zoo's string form was ignored and VecNormalize discounted with 0.99 instead of the config's gamma."""
    resolved = resolve(RunSpec(algo="ppo", env="HalfCheetah-v4", hyperparams={"normalize": normalize}))
    assert resolved.normalize == expected


@pytest.mark.parametrize("normalize", [True, "dict()", "True"])
def test_normalize_true_without_gamma_keeps_vecnormalize_with_its_defaults(normalize):
    """``normalize: true`` in an entry without ``gamma`` (configs/a2c.yml HalfCheetah) resolved to no VecNormalize."""
    resolved = resolve(RunSpec(algo="sac", env="Pendulum-v1",
                               hyperparams={"normalize": normalize, "learning_starts": 10}))
    assert "gamma" not in resolved.hyperparams and resolved.normalize == {}
    assert "  normalize: VecNormalize({})" in resolved.describe()
    shipped = resolve(RunSpec(algo="a2c", env="HalfCheetah-v4"))
    assert shipped.normalize is not None


def test_normalize_kwargs_are_honoured():
    resolved = resolve(RunSpec(algo="ppo", env="HalfCheetah-v4", hyperparams={"normalize_kwargs": {"clip_obs": 5.0}}))
    assert resolved.normalize == {"clip_obs": 5.0, "gamma": 0.98}
    with pytest.raises(ValueError, match="unknown VecNormalize arguments"):
        resolve(RunSpec(algo="ppo", env="HalfCheetah-v4", hyperparams={"normalize": {"norm_obz": True}}))


@pytest.mark.parametrize("key,value,match", [
    ("learning_rate", "fast", "learning_rate must be a positive number or 'lin_"),
    ("learning_rate", -1e-3, "learning_rate must be"),
    ("n_envs", 0, "n_envs must be an integer >= 1"),
    ("buffer_size", 0, "buffer_size must be an integer >= 1"),
    ("batch_size", 3.5, "batch_size must be an integer"),
    ("gamma", 1.5, r"gamma must be a number in \[0, 1\]"),
    ("train_freq", [1, "epoch"], "train_freq must be"),
    ("ent_coef", "autoo", "ent_coef must be"),
    ("learning_rat", 0.1, "did you mean 'learning_rate'"),
    ("seed", 3, "is set by the command line"),
    ("policy_kwargs", "dict(net_arch=[64], sparsty=0.9)", "did you mean 'sparsity'"),
    ("policy_kwargs", "dict(sparsity=1.5)", r"sparsity must be a number in \[0, 1\)"),
    ("policy_kwargs", "dict(distribution='gauss')", "unknown distribution"),
    ("callback", [{"sparse_rl.sb3.TopologyCallback": {"method": "rigl", "update_every": 0}}], "update_every"),
    ("callback", ["no.such.Callback"], "cannot be imported"),
])
def test_bad_values_name_the_key_the_value_and_what_is_allowed(key, value, match):
    with pytest.raises(ValueError, match=match) as error:
        resolve(RunSpec(algo="sac", env="Pendulum-v1", hyperparams={key: value}))
    assert "\n" not in str(error.value)


def test_a_wrongly_typed_yaml_entry_is_reported_with_its_file(tmp_path):
    conf = tmp_path / "c.yml"
    conf.write_text("Pendulum-v1:\n  n_timesteps: 1e4\n  policy: SparseMlpPolicy\n")  # YAML 1.1: '1e4' is a string
    with pytest.raises(ValueError, match=r"n_timesteps='1e4' \(from .*c.yml \[Pendulum-v1\]\) is not allowed"):
        resolve(RunSpec(algo="sac", env="Pendulum-v1", conf_file=str(conf)))


def test_policy_kwargs_strings_and_schedules():
    kwargs = hp.policy_kwargs_dict("dict(net_arch=[64, 64], activation_fn=nn.ReLU, sparsity=0.5)")
    assert kwargs["net_arch"] == [64, 64] and kwargs["sparsity"] == 0.5
    with pytest.raises(ValueError, match="not a valid Python expression"):
        hp.policy_kwargs_dict("dict(net_arch=[64")
    schedule = hp.resolve_schedules({"learning_rate": "lin_0.001"})["learning_rate"]
    assert schedule(1.0) == 0.001 and schedule(0.5) == 0.0005


def test_a_repeated_params_key_merges_kwargs_and_rejects_others():
    """-params 'policy_kwargs:...' 'policy_kwargs:...' silently dropped the first one; so did a second -params flag."""
    from sparse_rl.train import parse_args

    spec = parse_args(["-params", "learning_rate:0.0005", "-params", "policy_kwargs:dict(net_arch=[32, 32])"])
    assert spec.hyperparams == {"learning_rate": 0.0005, "policy_kwargs": "dict(net_arch=[32, 32])"}

    spec = parse_args(["-params", "policy_kwargs:dict(net_arch=[32, 32])", "policy_kwargs:dict(sparsity=0.5)"])
    assert resolve(spec).hyperparams["policy_kwargs"] == {"sparsity": 0.5, "distribution": "erk", "net_arch": [32, 32]}
    with pytest.raises(ValueError, match="sets 'gamma' twice"):
        parse_args(["-params", "gamma:0.9", "gamma:0.95"])


def test_to_expression_round_trips_torch_classes():
    import torch as th

    value = {"activation_fn": th.nn.Tanh, "optimizer_class": th.optim.RMSprop, "net_arch": [64, (1, 2)], "x": None}
    text = hp.to_expression(value)
    assert text == "dict(activation_fn=nn.Tanh, optimizer_class=th.optim.RMSprop, net_arch=[64, (1, 2)], x=None)"
    assert hp.evaluate_expression(text, "policy_kwargs") == {**value, "net_arch": [64, (1, 2)]}


def test_a_topology_callback_with_a_dense_policy_is_an_error_unless_dense_was_asked(tmp_path):
    """A -conf entry with a TopologyCallback but no sparse policy trained dense without a word."""
    conf = tmp_path / "c.yml"
    conf.write_text(yaml.safe_dump({"default": {"n_timesteps": 100, "policy_kwargs": "dict(net_arch=[32, 32])",
                                                "callback": [{"sparse_rl.sb3.TopologyCallback": {"method": "set"}}]}}))
    with pytest.raises(ValueError, match="has a TopologyCallback .method set. but trains the dense policy MlpPolicy"):
        resolve(RunSpec(algo="sac", env="Pendulum-v1", conf_file=str(conf)))
    dense = resolve(RunSpec(algo="sac", env="Pendulum-v1", conf_file=str(conf), sparsity=0.0))
    assert not dense.sparse and "dense baseline: the TopologyCallback dropped" in dense.notes
    assert resolve(RunSpec(algo="sac", env="Pendulum-v1", conf_file=str(conf), sparsity=0.8)).topology["method"] == "set"


@pytest.mark.parametrize("spec,match", [
    (dict(sparsity=0.0, distribution="uniform"), "--distribution uniform sets up sparse layers, but this run is the dense"),
    (dict(method="dense", backend="cpu"), "--backend cpu sets up sparse layers"),
    (dict(method="rigl", hyperparams={"callback": [{"sparse_rl.sb3.TopologyCallback": {"method": "set"}}]}),
     "--method rigl contradicts -params TopologyCallback method 'set'"),
    (dict(sparsity=0.8, hyperparams={"policy_kwargs": "dict(sparsity=0.5)"}),
     "--sparsity 0.8 contradicts -params policy_kwargs sparsity 0.5"),
    (dict(backend="triton"), "backend 'triton' cannot run on cpu"),
    # found by a new-user review of the command line: each trained the dense baseline or forced a value with a note
    (dict(n_timesteps=300, hyperparams={"n_timesteps": 1000}), "-n 300 contradicts -params n_timesteps:1000"),
    (dict(method="srigl", hyperparams={"policy_kwargs": "dict(constant_fan_in=False)"}),
     "method srigl needs policy_kwargs constant_fan_in=True, but constant_fan_in=False was given"),
    (dict(hyperparams={"policy_kwargs": "dict(start_dense=True)"}),  # failed at step 0, after writing the folder
     "start_dense=True builds the sparse layers dense for gmp to prune, but the method is rigl"),
    (dict(hyperparams={"policy": "MlpPolicy", "policy_kwargs": "dict(net_arch=[32, 32])"}),  # trained sparse
     "-params policy:MlpPolicy asks for SB3's dense policy"),
    (dict(hyperparams={"policy_kwargs": "dict(net_arch=[0])"}), "net_arch must be a list of layer widths >= 1"),
])
def test_flags_that_would_be_silently_dropped_or_overruled_are_errors(spec, match):
    if spec.get("backend") == "triton":
        from sparse_rl.nn import backends

        if "triton" in backends.available("cuda" if __import__("torch").cuda.is_available() else "cpu"):
            pytest.skip("triton runs here")
    with pytest.raises(ValueError, match=match) as error:
        resolve(RunSpec(algo="sac", env="Pendulum-v1", **spec))
    assert "\n" not in str(error.value)


def test_a_flag_replacing_a_config_value_is_said():
    """--sparsity / --method over the config's values replaced them without a note."""
    resolved = resolve(RunSpec(algo="sac", env="Pendulum-v1", sparsity=0.8, method="set"))
    assert resolved.sparsity == 0.8 and resolved.topology["method"] == "set"
    assert any(n.startswith("policy_kwargs sparsity: --sparsity replaces 0.9") for n in resolved.notes)
    assert any(n.startswith("TopologyCallback method: --method replaces 'rigl'") for n in resolved.notes)


def test_a_number_yaml_leaves_a_string_is_a_float_in_params_and_explained_in_files(tmp_path):
    assert hp.parse_value("1e-3") == 0.001 and hp.parse_value("lin_1e-3") == "lin_1e-3"  # RL Zoo's -params evaluates
    conf = tmp_path / "c.yml"
    conf.write_text("Pendulum-v1:\n  n_timesteps: 100\n  learning_rate: 1e-3\n")
    with pytest.raises(ValueError, match=r"YAML reads 1e-3 as a string: write it with a decimal point, e.g. 0.001"):
        resolve(RunSpec(algo="sac", env="Pendulum-v1", conf_file=str(conf)))


def test_the_topology_schedule_is_resolved_in_env_steps_printed_and_saved():
    """Defaulted start/end/drop schedule were neither printed nor saved; only the given keys were."""
    resolved = resolve(RunSpec(algo="sac", env="HalfCheetah-v4", n_timesteps=150_000))
    assert resolved.schedule == {"update_every": 1000, "start": 10_000, "end": 120_000, "drop_fraction": 0.5,
                                 "drop_schedule": "cosine", "first_update": 11_000, "last_update": 120_000,
                                 "updates": 110, "merged": 0, "check_every": 1,
                                 "defaults": ["start = learning_starts"],  # the config's learning_starts
                                 "gradient_steps_between": 1000.0, "last_update_drops_nothing": True}
    assert any("110 updates, every 1000 env steps (= 1000 gradient steps) from step 11000 to 120000" in line
               and "start = learning_starts" in line for line in resolved.describe())
    assert resolved.saved()["topology_schedule"]["updates"] == 110
    assert resolve(RunSpec(algo="sac", env="HalfCheetah-v4", sparsity=0.0)).schedule is None


def test_gmp_without_a_pruning_step_is_an_error():
    """It trained a fully dense network labelled 90 % sparse."""
    with pytest.raises(ValueError, match="no gmp pruning step fits this run .* the network would stay dense"):
        resolve(RunSpec(algo="sac", env="Pendulum-v1", method="gmp", n_timesteps=600))


def test_a_per_network_sparsity_is_said():
    """A run named rigl90 trained its actor at 50 % without a word."""
    resolved = resolve(RunSpec(algo="sac", env="Pendulum-v1", hyperparams={"policy_kwargs": "dict(actor_sparsity=0.5)"}))
    assert any(n.startswith("actor_sparsity: the actor / policy network trains at 0.5, not 0.9") for n in resolved.notes)


def test_static_masks_have_no_scheduled_update():
    resolved = resolve(RunSpec(algo="sac", env="HalfCheetah-v4", method="static", n_timesteps=150_000))
    assert resolved.schedule["updates"] == 0 and resolved.schedule["first_update"] is None
    assert any("topology schedule: none (static masks)" in line for line in resolved.describe())


def test_the_schedule_counts_updates_at_the_clocks_checks():
    """PPO with 256-step rollouts and update_every 200 printed 18 updates from step 200; 15 ran, at rollout ends."""
    callback = [{"sparse_rl.sb3.TopologyCallback": {"method": "rigl", "update_every": 200, "end": 0.9}}]
    resolved = resolve(RunSpec(algo="ppo", env="CartPole-v1", sparsity=0.9, n_envs=8, n_timesteps=4096,
                               hyperparams={"n_steps": 32, "callback": callback}))
    schedule = resolved.schedule
    assert (schedule["updates"], schedule["first_update"], schedule["last_update"]) == (15, 256, 3840)
    assert schedule["merged"] == 3 and schedule["check_every"] == 256 and "start = 0" in schedule["defaults"]


def test_whole_floats_for_integer_settings_are_ints_and_the_schedule_is_read_in_gradient_steps():
    """-params batch_size:64.0 crashed in SB3's sampling after the run folder was written; --n-envs 4 made SAC's 1000
    env steps between topology updates 250 gradient steps without a word."""
    resolved = resolve(RunSpec(algo="sac", env="Pendulum-v1", n_envs=4,
                               hyperparams={"batch_size": 64.0, "buffer_size": 1e4}))
    assert resolved.hyperparams["batch_size"] == 64 and isinstance(resolved.hyperparams["buffer_size"], int)
    assert "batch_size: 64.0 taken as the integer 64" in resolved.notes
    assert resolved.schedule["gradient_steps_between"] == resolved.schedule["update_every"] / 4
    assert f"(= {resolved.schedule['update_every'] / 4:g} gradient steps)" in "\n".join(resolved.describe())
    ppo = resolve(RunSpec(algo="ppo", env="HalfCheetah-v4"))  # 512-step rollouts, 10 epochs of 8 minibatches
    assert ppo.schedule["gradient_steps_between"] == 320
    # the integer settings come from what their checks accept, not from a word in the checks' descriptions
    assert INTEGER_KEYS >= {"batch_size", "buffer_size", "learning_starts", "n_steps", "n_epochs", "train_freq",
                            "gradient_steps", "target_update_interval", "n_envs", "n_timesteps"}
    assert not INTEGER_KEYS & {"learning_rate", "gamma", "tau", "ent_coef", "clip_range", "policy"}


def test_the_dense_baseline_of_a_shared_command_drops_its_sparse_settings_with_a_note():
    """A sweep over sparsity (or methods) shares one command: its dense baseline drops the -params sparse settings,
    and says so (it is not an error: the same command with --sparsity 0 is the baseline)."""
    callback = [{"sparse_rl.sb3.TopologyCallback": {"method": "set"}}]
    for spec in (dict(sparsity=0.0, hyperparams={"callback": callback}),
                 dict(method="dense", hyperparams={"policy_kwargs": "dict(sparsity=0.8)", "callback": callback})):
        resolved = resolve(RunSpec(algo="sac", env="Pendulum-v1", **spec))
        assert not resolved.sparse and any(n.startswith("dense baseline:") and "dropped" in n for n in resolved.notes)


def test_a_budget_sb3_will_not_train_as_given_is_said():
    """-n 1000 with PPO's 16 x 256-step rollouts trained 4096 env steps while resolved.yml said 1000; TD3 with
    learning_starts 10000 and -n 1500 never took a gradient step, without a word."""
    ppo = resolve(RunSpec(algo="ppo", env="Acrobot-v1", n_timesteps=1000))
    assert ("n_timesteps: PPO collects whole rollouts of 4096 env steps (n_steps 256 x n_envs 16), so 1000 trains 4096 "
            "env steps") in ppo.notes
    assert not any("whole rollouts" in note for note in resolve(RunSpec(algo="ppo", env="Acrobot-v1", n_timesteps=8192)).notes)
    td3 = resolve(RunSpec(algo="td3", env="Pendulum-v1", n_timesteps=1500))
    assert any(note.startswith("learning_starts 10000 >= n_timesteps 1500: no gradient step") for note in td3.notes)


def test_whole_float_steps_of_the_topology_callback_are_steps():
    """update_every: !!float 1e4 (RL Zoo's style for step counts) was an error; end: 1.5e5 too."""
    callback = [{hp.TOPOLOGY_CALLBACK: {"update_every": 1000.0, "end": 1500.0, "start": 0.5}}]
    resolved = resolve(RunSpec(algo="sac", env="Pendulum-v1", n_timesteps=2000, hyperparams={"callback": callback}))
    assert (resolved.topology["update_every"], resolved.topology["end"], resolved.topology["start"]) == (1000, 1500, 0.5)
    assert "TopologyCallback update_every: 1000.0 taken as the step 1000" in resolved.notes
    assert not any("TopologyCallback start" in note for note in resolved.notes)  # 0.5 is a fraction of the run


def test_an_update_at_the_schedules_end_that_changes_nothing_is_said():
    """The schedule line counted the update at `end`, where the cosine drop fraction is 0, as one that rewires."""
    line = next(line for line in resolve(RunSpec(algo="sac", env="HalfCheetah-v4", n_timesteps=150_000)).describe()
                if "topology schedule" in line)
    assert "110 updates" in line and "the last, at end, replaces nothing" in line and "so 109 change the masks" in line
    line = next(line for line in resolve(RunSpec(algo="sac", env="HalfCheetah-v4", n_timesteps=150_500)).describe()
                if "topology schedule" in line)  # end 120400: no update falls on it
    assert "replaces nothing" not in line
