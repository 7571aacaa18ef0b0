"""RL Zoo interoperability: RL Zoo trains from our config files, and its enjoy/plot scripts read our run folders."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from stable_baselines3 import SAC

from sparse_rl.train import main as train_main

pytest.importorskip("rl_zoo3", reason="rl_zoo3 is optional (pip install rl_zoo3)")
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _run(args, cwd):
    result = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd, timeout=600,
                            env={**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_rl_zoo_trains_from_our_config(tmp_path):
    _run(["rl_zoo3.train", "--algo", "sac", "--env", "Pendulum-v1", "--gym-packages", "sparse_rl.sb3.policies",
          "-conf", str(CONFIGS / "sac.yml"), "-n", "150", "-f", "zoo", "--eval-freq", "-1",
          "-params", "learning_starts:50", "buffer_size:500", "batch_size:16"], cwd=tmp_path)
    model = SAC.load(tmp_path / "zoo" / "sac" / "Pendulum-v1_1" / "Pendulum-v1.zip")
    assert type(model.policy).__name__ == "SparseSACPolicy" and model.policy.sparse_config.sparsity == 0.9


def test_rl_zoo_enjoy_and_plots_read_our_run_folders(tmp_path):
    assert train_main(["--algo", "sac", "--env", "Pendulum-v1", "--sparsity", "0.9", "-n", "250", "-f", str(tmp_path / "logs"),
                       "--eval-freq", "-1", "-v", "0", "-params", "learning_starts:50", "buffer_size:500"]) == 0
    out = _run(["rl_zoo3.enjoy", "--algo", "sac", "--env", "Pendulum-v1", "-f", "logs", "--exp-id", "1", "-n", "250",
                "--no-render", "--gym-packages", "sparse_rl.sb3.policies"], cwd=tmp_path)
    assert "Mean reward" in out
    _run(["rl_zoo3.plots.plot_train", "--algo", "sac", "--env", "Pendulum-v1", "-f", "logs"], cwd=tmp_path)
