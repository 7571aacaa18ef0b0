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


def test_importing_sparse_rl_sb3_registers_every_alias(tmp_path):
    """The documented --gym-packages sparse_rl.sb3 registered nothing (only sparse_rl.sb3.policies did)."""
    code = ("import sparse_rl.sb3\n"
            "from stable_baselines3 import A2C, DQN, PPO, SAC, TD3\n"
            "for algo, names in ((SAC, 'MI'), (TD3, 'MI'), (DQN, 'MCI'), (PPO, 'MCI'), (A2C, 'MCI')):\n"
            "    for short, alias in (('M', 'SparseMlpPolicy'), ('C', 'SparseCnnPolicy'), ('I', 'SparseMultiInputPolicy')):\n"
            "        assert (alias in algo.policy_aliases) == (short in names), (algo.__name__, alias)\n"
            "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_rl_zoo_trains_from_our_config(tmp_path):
    _run(["rl_zoo3.train", "--algo", "sac", "--env", "Pendulum-v1", "--gym-packages", "sparse_rl.sb3",
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


def test_rl_zoo_optimize_keeps_the_sparsity(tmp_path):
    """RL Zoo's sampler replaced policy_kwargs, so every trial lost its sparsity and was pruned."""
    import pandas as pd
    import yaml

    conf = tmp_path / "sac.yml"  # not the sparse policies' defaults (0.9, erk): the trials must keep these
    conf.write_text(yaml.safe_dump({"Pendulum-v1": {
        "n_timesteps": 300, "policy": "SparseMlpPolicy", "learning_starts": 100,
        "policy_kwargs": "dict(sparsity=0.8, distribution='er')",
        "callback": [{"sparse_rl.sb3.TopologyCallback": {"method": "rigl", "update_every": 100, "end": 0.8}}]}}))
    _run(["rl_zoo3.train", "--algo", "sac", "--env", "Pendulum-v1", "--gym-packages", "sparse_rl.sb3", "-conf", str(conf),
          "-f", "zoo", "-optimize", "--n-trials", "2", "--n-jobs", "1", "--sampler", "random", "--pruner", "none",
          "--n-evaluations", "1", "--eval-episodes", "1", "--optimization-log-path", "trials", "--seed", "3"], cwd=tmp_path)
    reports = list((tmp_path / "zoo" / "sac").glob("report_Pendulum-v1_*.csv"))
    assert len(reports) == 1
    trials = pd.read_csv(reports[0])
    assert len(trials) == 2 and (trials["state"] == "COMPLETE").all()
    width = {"small": 64, "medium": 256, "big": 400, "large": 256, "verybig": 512}
    for number, net_arch in zip(trials["number"], trials["params_net_arch"]):
        model = SAC.load(tmp_path / "trials" / f"trial_{number}" / "best_model.zip")
        config = model.policy.sparse_config
        assert type(model.policy).__name__ == "SparseSACPolicy"
        assert (config.sparsity, config.distribution) == (0.8, "er")
        assert model.policy.actor.latent_pi[0].out_features == width[net_arch]  # the sampled net_arch applies too


def test_the_sampler_table_is_wrapped_whatever_the_import_order():
    """A script that used sparse_rl (which imports sparse_rl.sb3) before RL Zoo left the samplers unwrapped:
    --gym-packages sparse_rl.sb3 then imported nothing new, and -optimize trials silently trained at 0.9 ERK."""
    check = ("import rl_zoo3.hyperparams_opt as h; "
             "print(all(getattr(s, '_sparse_rl_keeps_policy_kwargs', False) for s in h.HYPERPARAMS_SAMPLER.values()))")
    for first in ("from sparse_rl import sparsity_report; sparsity_report", "import sparse_rl.sb3", "import rl_zoo3",
                  # a probe before the import removed the hook (found by a review)
                  "import sparse_rl.sb3, importlib.util; importlib.util.find_spec('rl_zoo3.hyperparams_opt')"):
        out = subprocess.run([sys.executable, "-c", f"{first}; import sparse_rl.sb3; {check}"], capture_output=True,
                             text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "True", (first, out.stderr[-500:])
