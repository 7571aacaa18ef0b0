"""``python -m sparse_rl.evaluate`` on tiny trained agents (SAC on HalfCheetah-v4, DQN on Pong), and its bad-input errors."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from sparse_rl.evaluate import main as evaluate_main
from sparse_rl.train import main as train_main

FAST = ["--episodes", "1", "--max-episode-steps", "40", "--reps", "50", "--latency-steps", "5"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("logs")
    for sparsity in ("0", "0.9"):
        assert train_main(["--algo", "sac", "--env", "HalfCheetah-v4", "--sparsity", sparsity, "-f", str(root), "-n", "60",
                           "--eval-freq", "-1", "-v", "0", "-params", "learning_starts:50", "buffer_size:200",
                           "batch_size:16"]) == 0
        assert train_main(["--algo", "dqn", "--env", "PongNoFrameskip-v4", "--sparsity", sparsity, "-f", str(root), "-n",
                           "60", "--eval-freq", "-1", "-v", "0", "-params", "learning_starts:50", "buffer_size:100",
                           "train_freq:4", "batch_size:8"]) == 0
    return root


def test_mujoco_suite(runs, tmp_path, capsys):
    out = tmp_path / "mujoco"
    assert evaluate_main(["--suite", "mujoco", "--runs", str(runs), "-o", str(out), *FAST]) == 0
    table = capsys.readouterr().out
    assert "| HalfCheetah-v4 | dense | 0 | 1 |" in table and "| rigl 90% | 1 | 1 |" in table
    # the protocol was only in results.json: now said at start
    assert "protocol (mujoco's, with --episodes --max-episode-steps): 1 episodes per run, deterministic actions" in table
    # a sparse-wide agent's 0.96 read as faster than the dense [256, 256] agent it was 1.2x slower than
    assert "latency vs dense and inference FLOPs vs dense: each run against its own network" in table
    results = pd.read_csv(out / "results.csv")
    assert sorted(results["label"]) == ["dense", "rigl 90%"] and set(results["env"]) == {"HalfCheetah-v4"}  # no Pong
    # normalised by hand: (return - D4RL random) / (RL Zoo SAC at 1M - random)
    expected = (results["return_mean"] + 280.178953) / (9535.451 + 280.178953)
    np.testing.assert_allclose(results["normalized"], expected)
    sparse = results.set_index("label").loc["rigl 90%"]
    assert 0.05 < sparse["density"] < 0.2 and sparse["nnz"] < sparse["numel"] and sparse["inference_flops_vs_dense"] < 0.3
    assert sparse["latency_ms"] > 0
    assert sparse["latency_vs_dense"] == pytest.approx(sparse["latency_ms"] / sparse["dense_latency_ms"])
    assert results.set_index("label").loc["dense", "latency_vs_dense"] == 1.0
    summary = json.loads((out / "results.json").read_text())
    assert summary["suite"] == "mujoco" and summary["aggregate"]["score"] == "normalized"
    assert isinstance(summary["notes"], list)  # what the run search said is kept with the results
    # one run per configuration: CIs collapse to a point, which used to pass without a word
    assert any(note.startswith("fewer than 3 runs in dense, rigl 90%") for note in summary["notes"])
    groups = summary["aggregate"]["groups"]
    assert groups["dense"]["probability_of_improvement"] is None
    low, point, high = groups["rigl 90%"]["iqm"][1], groups["rigl 90%"]["iqm"][0], groups["rigl 90%"]["iqm"][2]
    assert low <= point <= high and point == pytest.approx(sparse["normalized"])
    assert 0.0 <= groups["rigl 90%"]["probability_of_improvement"][0] <= 1.0
    assert len(summary["runs"][0]["returns"]) == 1
    for name in ("aggregates", "performance_profiles", "probability_of_improvement"):
        assert (out / f"{name}.png").stat().st_size > 5_000


def test_atari_env(runs, tmp_path):
    out = tmp_path / "pong"
    assert evaluate_main(["--suite", "PongNoFrameskip-v4", "--runs", str(runs), "-o", str(out), "--no-plots", *FAST]) == 0
    results = pd.read_csv(out / "results.csv")
    assert set(results["task"]) == {"Pong"} and set(results["algo"]) == {"dqn"} and len(results) == 2
    np.testing.assert_allclose(results["normalized"], (results["return_mean"] + 20.7) / (14.6 + 20.7))  # human-normalised
    assert (results["reference_name"] == "human").all()
    protocol = json.loads((out / "results.json").read_text())["protocol"]
    assert protocol["epsilon"] == pytest.approx(0.001) and protocol["max_episode_steps"] == 40
    assert results.set_index("label").loc["rigl 90%", "density"] < 0.2


def _run_dir(runs, algo):
    return sorted((runs / algo).iterdir())[0]


@pytest.mark.parametrize("case,message", [
    (["--suite", "mujocoo"], "unknown suite or env 'mujocoo'"),
    (["--suite", "HalfCheeta-v4"], "Did you mean HalfCheetah-v4"),
    (["--suite", "atari"], "belongs to suite 'atari5'"),
    (["--suite", "mujoco", "--best"], "best_model.zip not found"),
    (["--suite", "mujoco", "--backend", "gpu9000"], "unknown backend"),
    (["--suite", "mujoco", "--env", "Hopper-v4"], "does not fit Hopper-v4: Observation spaces do not match"),
    ("no model", "HalfCheetah-v4.zip not found"),
])
def test_bad_input(runs, tmp_path, capsys, case, message):
    root = runs
    if case == "no model":
        root = tmp_path / "broken"
        shutil.copytree(_run_dir(runs, "sac"), root / "sac" / "HalfCheetah-v4_1")
        (root / "sac" / "HalfCheetah-v4_1" / "HalfCheetah-v4.zip").unlink()
        case = ["--suite", "HalfCheetah-v4"]
    assert evaluate_main([*case, "--runs", str(root), "-o", str(tmp_path / "out"), *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
