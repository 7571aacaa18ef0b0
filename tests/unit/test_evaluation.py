"""Suites and normalisation against hand-computed values, dense counterparts, latency timing and rliable aggregates."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from torch import nn

from sparse_rl.analysis.aggregate import (
    aggregate,
    dense_pairs,
    improvement_over_dense,
    interval_estimates,
    markdown_table,
    performance_profiles,
    probability_of_improvement,
    score_kind,
    score_matrices,
)
from sparse_rl.harness.envs import register_optional_envs
from sparse_rl.harness.evaluation import acting_latency, dense_module
from sparse_rl.harness.suites import SUITE_DIR, load_suite
from sparse_rl.nn import SparseConv2d, SparseLinear


def test_suite_files_resolve_from_the_repository():
    assert (SUITE_DIR / "mujoco.yml").is_file() and (SUITE_DIR / "atari.yml").is_file()


def test_mujoco_suite():
    suite = load_suite("mujoco")
    assert len(suite.tasks) == 10 and {"HalfCheetah-v4", "Humanoid-v5", "Ant-v4"} <= set(suite.tasks)
    assert all(task in gym.registry for task in suite.tasks)
    assert suite.protocol["deterministic"] is True and suite.protocol["episodes"] > 0
    # (score - random) / (reference - random), random from D4RL and the reference from the RL Zoo benchmark
    assert suite.normalize("HalfCheetah-v4", (-280.178953 + 9535.451) / 2, "sac") == pytest.approx(0.5)
    assert suite.normalize("Hopper-v4", 2410.435, "ppo") == pytest.approx(1.0)
    assert suite.normalize("Hopper-v4", -20.272305, "ppo") == pytest.approx(0.0)
    # an algorithm without its own reference falls back to the suite's (SAC)
    assert suite.normalize("Walker2d-v5", 1.629008 + (3863.203 - 1.629008) / 4, "dqn") == pytest.approx(0.25)
    assert suite.reference("Ant-v4", "td3") == (-325.6, 5813.274, "td3")
    assert math.isnan(suite.normalize("Humanoid-v4", 1000.0, "sac"))  # no published random score: null


def test_atari_suites():
    register_optional_envs()
    atari5 = load_suite("atari")
    assert atari5.tasks == ["BattleZone", "DoubleDunk", "NameThisGame", "Phoenix", "Qbert"]
    assert atari5.protocol["max_episode_steps"] == 27_000 and atari5.protocol["epsilon"] == pytest.approx(0.001)
    assert len(load_suite("atari26").tasks) == 26 and len(load_suite("atari57").tasks) == 57
    assert all(f"{game}NoFrameskip-v4" in gym.registry for game in load_suite("atari26").tasks)
    assert atari5.task_of("ALE/Qbert-v5") == atari5.task_of("QbertNoFrameskip-v4") == "Qbert"
    assert atari5.task_of("PongNoFrameskip-v4") is None
    # human-normalised score: Qbert random 163.9, human 13455.0; DoubleDunk random -18.6, human -16.4
    assert atari5.normalize("Qbert", 163.9 + 0.5 * (13455.0 - 163.9)) == pytest.approx(0.5)
    assert atari5.normalize("DoubleDunk", -16.4 + 2.2) == pytest.approx(2.0)
    pong = load_suite("ALE/Pong-v5")
    assert pong.tasks == ["Pong"] and pong.normalize("Pong", 14.6) == pytest.approx(1.0)


def test_one_env_suite_without_references():
    suite = load_suite("Pendulum-v1")
    assert suite.tasks == ["Pendulum-v1"] and math.isnan(suite.normalize("Pendulum-v1", -200.0, "sac"))


@pytest.mark.parametrize("name,message", [
    ("mujocoo", "unknown suite or env 'mujocoo'"), ("Hoper-v4", "Did you mean Hopper-v4"),
])
def test_unknown_suite(name, message):
    with pytest.raises(ValueError, match=message):
        load_suite(name)


def test_dense_module_matches_sparse_layer():
    linear = SparseLinear(12, 7, sparsity=0.8)
    x = th.randn(3, 12)
    dense = dense_module(linear)
    assert isinstance(dense, nn.Linear) and th.allclose(dense(x), linear(x), atol=1e-5)
    conv = SparseConv2d(4, 6, 3, stride=2, sparsity=0.7)
    images = th.randn(2, 4, 9, 9)
    dense_conv = dense_module(conv)
    assert isinstance(dense_conv, nn.Conv2d) and th.allclose(dense_conv(images), conv(images), atol=1e-5)


def test_acting_latency_restores_the_sparse_layers():
    from stable_baselines3 import SAC

    from sparse_rl.sb3 import SparseSACPolicy

    model = SAC(SparseSACPolicy, "Pendulum-v1", policy_kwargs=dict(sparsity=0.9, net_arch=[32, 32]), learning_starts=0)
    layers = [m for m in model.policy.modules() if isinstance(m, SparseLinear)]
    obs = np.zeros(3, dtype=np.float32)
    before = model.predict(obs, deterministic=True)[0]
    timing = acting_latency(model.policy, obs, steps=5, rounds=2)
    assert timing["latency_ms"] > 0 and timing["dense_latency_ms"] > 0
    assert timing["latency_vs_dense"] == pytest.approx(timing["latency_ms"] / timing["dense_latency_ms"])
    assert [m for m in model.policy.modules() if isinstance(m, SparseLinear)] == layers
    np.testing.assert_allclose(model.predict(obs, deterministic=True)[0], before)


def _row(group, task, seed, score, normalized=None):
    return {"group": group, "task": task, "seed": seed, "return_mean": score, "normalized": normalized, "density": 1.0,
            "nnz": 10, "inference_flops_vs_dense": 1.0, "latency_ms": 1.0, "latency_vs_dense": 1.0}


def test_score_matrices_common_tasks_and_seeds():
    rows = [_row("dense", "A", s, float(s)) for s in (2, 0, 1)] + [_row("dense", "B", s, 10.0 + s) for s in (0, 1)]
    rows += [_row("rigl 90%", "A", 0, 5.0), _row("rigl 90%", "B", 0, 6.0), _row("rigl 90%", "C", 0, 7.0)]
    matrices, tasks = score_matrices(rows, "return_mean")
    assert tasks == ["A", "B"] and list(matrices) == ["dense", "rigl 90%"]
    np.testing.assert_array_equal(matrices["dense"], [[0.0, 10.0], [1.0, 11.0]])  # two seeds cover both tasks
    np.testing.assert_array_equal(matrices["rigl 90%"], [[5.0, 6.0]])
    assert score_kind(rows) == ("return_mean", [])  # no references anywhere: raw returns
    for row in rows:
        if row["task"] == "A":
            row["normalized"] = 0.5
    assert score_kind(rows) == ("normalized", ["B", "C"])  # tasks without references are left out


def test_rliable_estimates_by_hand():
    matrices = {"dense": np.array([[0.0, 0.2], [0.4, 0.6]]), "set 90%": np.array([[1.0, 1.0], [1.0, 1.0]])}
    estimates = interval_estimates(matrices, reps=50)
    dense = estimates["dense"]
    assert dense["mean"][0] == pytest.approx(0.3) and dense["median"][0] == pytest.approx(0.3)
    assert dense["iqm"][0] == pytest.approx(0.3)  # IQM of 4 values: mean of the middle two (0.2, 0.4)
    assert dense["optimality_gap"][0] == pytest.approx(0.7)  # mean of (1 - min(score, 1))
    assert dense["mean"][1] <= 0.3 <= dense["mean"][2]
    assert estimates["set 90%"]["iqm"] == pytest.approx([1.0, 1.0, 1.0])
    assert estimates["set 90%"]["optimality_gap"][0] == pytest.approx(0.0)
    improvement = improvement_over_dense(matrices, reps=50)
    assert improvement["set 90%"][0] == pytest.approx(1.0)
    summary = {"groups": {g: {**estimates[g], "runs": 2, "tasks": 2, "probability_of_improvement": improvement.get(g),
                              "density": 1.0, "nnz": 10.0, "inference_flops_vs_dense": 1.0, "latency_ms": 1.0,
                              "latency_vs_dense": 1.0} for g in matrices}}
    assert "| set 90% | 2 | 2 | 1.000 [1.000, 1.000]" in markdown_table(summary)


def test_dense_pairs_per_algorithm():
    groups = ["SAC dense", "SAC rigl 90%", "PPO dense", "PPO set 80%", "TD3 rigl 90%"]
    assert dense_pairs(groups) == [("SAC rigl 90%", "SAC dense"), ("PPO set 80%", "PPO dense")]
    assert dense_pairs(["dense", "rigl 90%"]) == [("rigl 90%", "dense")]
    # ablation labels that end in "dense" are sparse configurations, compared with dense like the others
    assert dense_pairs(["dense", "rigl90-input-dense", "rigl90-init-dense"]) == [
        ("rigl90-input-dense", "dense"), ("rigl90-init-dense", "dense")]


def test_raw_returns_have_no_optimality_gap(tmp_path):
    """MinAtar (no reference scores) reported an 'optimality gap' of raw returns below 1, which means nothing."""
    rows = [_row("dense", "A", s, 10.0 + s) for s in range(3)] + [_row("rigl 90%", "A", s, 9.0 + s) for s in range(3)]
    summary = aggregate(rows, tmp_path, reps=20)
    assert summary["score"] == "return_mean" and summary["groups"]["dense"]["optimality_gap"] is None
    assert summary["groups"]["dense"]["iqm"][0] == pytest.approx(11.0)
    assert "| n/a |" in markdown_table(summary) and (tmp_path / "aggregates.png").is_file()
    normalized = [{**row, "normalized": row["return_mean"] / 20} for row in rows]
    assert aggregate(normalized, tmp_path, reps=20, plots=False)["groups"]["dense"]["optimality_gap"] is not None


def test_configuration_names_with_commas_plot(tmp_path):
    """evaluate crashed at the probability-of-improvement plot ('too many values to unpack') when a configuration's
    name listed its settings, which holds commas; the whole evaluation was lost."""
    sparse = "rigl 90% (topology.end=0.8, topology.update_every=400)"
    rows = [_row("dense", "A", s, 10.0 + s) for s in range(3)] + [_row(sparse, "A", s, 9.0 + s) for s in range(3)]
    summary = aggregate(rows, tmp_path, reps=20)
    assert summary["groups"][sparse]["probability_of_improvement"] is not None
    assert (tmp_path / "probability_of_improvement.png").is_file()


def test_interval_estimates_are_reproducible():
    """rliable draws its resampling indices from numpy's global generator whatever random_state says: the same report
    gave other CIs each time it was written (SAC HalfCheetah dense IQM CI [6037, 6718] then [6057, 6724])."""
    matrices = {"dense": np.array([[1.0], [2.0], [3.0], [5.0], [8.0]]), "rigl": np.array([[2.0], [2.5], [3.0], [4.0], [9.0]])}
    first = interval_estimates(matrices, reps=200)
    np.random.rand(7)  # whatever the global generator did in between
    assert interval_estimates(matrices, reps=200) == first
    assert improvement_over_dense(matrices, reps=200) == improvement_over_dense(matrices, reps=200)


def test_a_groups_interval_does_not_depend_on_the_other_groups():
    """rliable bootstraps the keys one after the other from one generator: the same comparison (dense-wd1e-4 vs dense)
    showed P(better) [0.24, 0.96] in one table of a report and [0.24, 0.92] in the next, computed with other pairs."""
    dense = np.array([[1.0], [2.0], [3.0], [5.0], [8.0]])
    rigl = np.array([[2.0], [2.5], [3.0], [4.0], [9.0]])
    wide = np.array([[0.5], [6.0], [3.5], [4.0], [7.0]])
    alone = interval_estimates({"dense": dense, "rigl": rigl}, reps=200)
    with_more = interval_estimates({"wide": wide, "dense": dense, "rigl": rigl}, reps=200)
    assert with_more["rigl"] == alone["rigl"] and with_more["dense"] == alone["dense"]
    pair = probability_of_improvement({"rigl": rigl, "dense": dense, "wide": wide}, [("rigl", "dense")], reps=200)
    pairs = probability_of_improvement({"rigl": rigl, "dense": dense, "wide": wide}, [("wide", "dense"), ("rigl", "dense")],
                                       reps=200)
    assert pairs["rigl"] == pair["rigl"]
    inside = np.array([[1.5], [6.0], [3.5], [4.0], [7.0]])  # within the others' range: the same taus
    taus, _, alone_cis = performance_profiles({"dense": dense, "rigl": rigl}, reps=100)
    taus_more, _, more_cis = performance_profiles({"inside": inside, "dense": dense, "rigl": rigl}, reps=100)
    np.testing.assert_array_equal(taus, taus_more)
    np.testing.assert_array_equal(alone_cis["rigl"], more_cis["rigl"])
