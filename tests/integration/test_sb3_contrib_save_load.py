"""sb3-contrib models with sparse policies: save / load round trips with the topology schedule, and
``python -m sparse_rl.train --algo tqc|qrdqn|crossq|ppo_lstm|ppo_mask`` with the packaged configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

pytest.importorskip("sb3_contrib")

from sparse_rl.harness.resolve import ALGOS, RunSpec, algo_class, resolve  # noqa: E402
from sparse_rl.sb3.builders import sparse_layers  # noqa: E402
from sparse_rl.sb3.policies import SparsePolicyMixin  # noqa: E402
from sparse_rl.train import main as train_main  # noqa: E402
from tests.integration.test_sb3_contrib_runs import make  # noqa: E402
from tests.integration.test_sb3_save_load import assert_same_model  # noqa: E402

CONTRIB = ("tqc", "qrdqn", "crossq", "ppo_lstm", "ppo_mask")


@pytest.mark.parametrize("name", ["tqc", "qrdqn", "crossq", "ppo_lstm_no_critic_lstm", "ppo_mask"])
def test_round_trip_and_resumed_schedule(tmp_path: Path, checking_callback: Any, name: str) -> None:
    model = make(name, "rigl", net_arch=[32, 32])
    on_policy = name.startswith("ppo")
    first = checking_callback(method="rigl", update_every=64 if on_policy else 50, end=10_000, seed=0)
    model.learn(192 if on_policy else 150, callback=first)
    assert first.update_clock == ([64, 128, 192] if on_policy else [100, 150])
    model.save(tmp_path / "model")
    loaded = type(model).load(tmp_path / "model", env=model.get_env())
    assert type(loaded.policy) is type(model.policy) and loaded.policy.sparse_config.sparsity == 0.9
    obs = np.stack([model.observation_space.sample() for _ in range(8)])
    assert_same_model(model, loaded, obs)
    second = checking_callback(method="rigl", update_every=64 if on_policy else 50, end=10_000, seed=0)
    loaded.learn(128 if on_policy else 100, reset_num_timesteps=False, callback=second)
    assert second.update_clock == ([256, 320] if on_policy else [200, 250])
    assert second.updater.num_updates == first.updater.num_updates + 2


def test_algo_names() -> None:
    from sb3_contrib import QRDQN, TQC, CrossQ, MaskablePPO, RecurrentPPO

    assert set(CONTRIB) <= set(ALGOS)
    assert [algo_class(name) for name in CONTRIB] == [TQC, QRDQN, CrossQ, RecurrentPPO, MaskablePPO]


@pytest.mark.parametrize("algo, env", [("tqc", "Pendulum-v1"), ("qrdqn", "CartPole-v1"), ("qrdqn", "Acrobot-v1"),
                                       ("crossq", "Pendulum-v1"), ("ppo_lstm", "CartPole-v1"),
                                       ("ppo_mask", "CartPole-v1"), ("ppo_mask", "Acrobot-v1")])
def test_packaged_configs_resolve_sparse_and_dense(algo: str, env: str) -> None:
    sparse = resolve(RunSpec(algo=algo, env=env))
    assert sparse.sparse and sparse.sparsity == 0.9 and sparse.method == "rigl"
    cls = algo_class(algo).policy_aliases[sparse.hyperparams["policy"]]
    assert issubclass(cls, SparsePolicyMixin)
    dense = resolve(RunSpec(algo=algo, env=env, sparsity=0.0))
    assert not dense.sparse and "sparsity" not in dense.hyperparams["policy_kwargs"]
    dense_cls = algo_class(algo).policy_aliases[dense.hyperparams["policy"]]  # RecurrentPPO: MlpLstmPolicy
    assert not issubclass(dense_cls, SparsePolicyMixin) and dense_cls.__module__.startswith("sb3_contrib")


@pytest.mark.parametrize("algo, env, params", [
    ("tqc", "Pendulum-v1", ["learning_starts:50", "buffer_size:1000", "batch_size:32",
                            "policy_kwargs:dict(net_arch=[32, 32])"]),
    ("qrdqn", "CartPole-v1", ["learning_starts:50", "train_freq:4", "gradient_steps:1", "buffer_size:1000"]),
    ("crossq", "Pendulum-v1", ["learning_starts:50", "buffer_size:1000", "batch_size:32",
                               "policy_kwargs:dict(net_arch=[32, 32])"]),
    ("ppo_lstm", "CartPole-v1", ["n_envs:2", "n_steps:64"]),
    ("ppo_mask", "CartPole-v1", ["n_envs:2", "n_steps:64"]),
])
def test_train_command(tmp_path: Path, algo: str, env: str, params: list[str]) -> None:
    """A short sparse run with two topology updates, evaluations and dormant-neuron measurements, then its dense
    baseline: RL Zoo's run folder, a model that loads back with its sparse policy class."""
    update = "callback:[{sparse_rl.sb3.TopologyCallback: {method: rigl, update_every: 128, end: 1.0}}]"
    common = ["--algo", algo, "--env", env, "-n", "384", "--eval-freq", "192", "--eval-episodes", "1", "-v", "0",
              "-f", str(tmp_path)]
    assert train_main([*common, "-params", *params, update]) == 0
    assert train_main([*common, "--sparsity", "0", "-params", *params]) == 0
    sparse_dir, dense_dir = tmp_path / algo / f"{env}_1", tmp_path / algo / f"{env}_2"
    assert np.load(sparse_dir / "evaluations.npz")["timesteps"].tolist() == [192, 384]
    assert (sparse_dir / "dormant.csv").read_text().count("\n") > 1
    model = algo_class(algo).load(sparse_dir / f"{env}.zip")
    assert isinstance(model.policy, SparsePolicyMixin) and sparse_layers(model.policy)
    assert model.policy.topology_state["updater"]["num_updates"] >= 2
    dense_config = yaml.load((dense_dir / env / "config.yml").read_text(), Loader=yaml.UnsafeLoader)
    assert dense_config["policy"] == ("MlpLstmPolicy" if algo == "ppo_lstm" else "MlpPolicy")
    dense = algo_class(algo).load(dense_dir / f"{env}.zip")
    assert not isinstance(dense.policy, SparsePolicyMixin)


@pytest.mark.parametrize("algo", CONTRIB)
def test_packaged_contrib_configs_parse_and_are_sparse(algo: str) -> None:
    from sparse_rl.harness import hyperparams as hp

    entries = yaml.safe_load(hp.default_config_file(algo).read_text())
    assert "default" in entries
    for name, entry in entries.items():
        assert entry["policy"].startswith("Sparse"), name
        assert 0 < hp.policy_kwargs_dict(entry.get("policy_kwargs"))["sparsity"] < 1, name
        topology, _ = hp.topology_callback_kwargs(entry["callback"])
        assert topology["method"] == "rigl" and topology["update_every"] > 0, name


def test_rl_zoo_trains_tqc_from_our_config(tmp_path: Path) -> None:
    """RL Zoo runs configs/tqc.yml with --gym-packages sparse_rl.sb3 (the sparse TQC policy by its alias)."""
    from sb3_contrib import TQC

    from tests.integration.test_rl_zoo import CONFIGS, _run

    _run(["rl_zoo3.train", "--algo", "tqc", "--env", "Pendulum-v1", "--gym-packages", "sparse_rl.sb3", "-conf",
          str(CONFIGS / "tqc.yml"), "-n", "150", "-f", "zoo", "--eval-freq", "-1", "-params", "learning_starts:50",
          "buffer_size:500", "batch_size:16"], cwd=tmp_path)
    model = TQC.load(tmp_path / "zoo" / "tqc" / "Pendulum-v1_1" / "Pendulum-v1.zip")
    assert type(model.policy).__name__ == "SparseTQCPolicy" and model.policy.sparse_config.sparsity == 0.9


def test_maskable_ppo_is_evaluated_with_its_action_masks(tmp_path):
    """SB3's EvalCallback ignores action masks: MaskablePPO runs were evaluated acting without them."""
    from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback

    from sparse_rl.harness.resolve import RunSpec, resolve
    from sparse_rl.harness.runs import RunFolder
    from sparse_rl.harness.training import build_callbacks
    from sparse_rl.sb3.eval_callback import GridEvalCallback, TrainingClock

    spec = RunSpec(algo="ppo_mask", env="CartPole-v1", eval_freq=100)
    folder = RunFolder(tmp_path, "CartPole-v1")
    callbacks = build_callbacks(spec, resolve(spec), folder, 1, 0, TrainingClock())
    evaluation = next(c for c in callbacks if isinstance(c, GridEvalCallback))
    assert isinstance(evaluation, MaskableEvalCallback)
    ppo = RunSpec(algo="ppo", env="CartPole-v1", eval_freq=100)
    plain = build_callbacks(ppo, resolve(ppo), folder, 1, 0, TrainingClock())
    assert not any(isinstance(c, MaskableEvalCallback) for c in plain)
