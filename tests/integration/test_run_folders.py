"""Run folders: claimed atomically by runs started at once, locked while in use; resume edge cases."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import yaml

from sparse_rl.harness.runs import RunFolder
from sparse_rl.train import main as train_main

from .conftest import sac_pendulum_config


def _launch(tmp_path, sparsity: str, extra=()):
    argv = [sys.executable, "-m", "sparse_rl.train", "--algo", "sac", "--env", "Pendulum-v1", "--sparsity", sparsity,
            "-f", str(tmp_path / "logs"), "-n", "150", "--eval-freq", "-1", "-v", "0",
            "-params", "learning_starts:50", "buffer_size:500", "batch_size:16", "policy_kwargs:dict(net_arch=[16])",
            *extra]
    return subprocess.Popen(argv, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def test_runs_started_at_once_get_their_own_folders(tmp_path):
    """Two runs started together used to pick the same <Env>_1 and mix their files."""
    sparsities = ["0", "0.9", "0.8", "0"]
    processes = [_launch(tmp_path, s) for s in sparsities]
    for process in processes:
        assert process.wait(timeout=600) == 0, process.stderr.read().decode()[-2000:]
    folders = sorted((tmp_path / "logs" / "sac").iterdir())
    assert [f.name for f in folders] == [f"Pendulum-v1_{n}" for n in range(1, 5)]
    seen = []
    for folder in folders:
        summary = json.loads((folder / "run.json").read_text())
        command = (folder / "command.txt").read_text()
        asked = command.split("--sparsity ")[1].split()[0]
        assert summary["sparsity"] == float(asked), f"{folder.name}: run.json and command.txt disagree"
        config = yaml.load((folder / "Pendulum-v1" / "config.yml").read_text(), Loader=yaml.UnsafeLoader)
        assert config["policy"] == ("MlpPolicy" if asked == "0" else "SparseMlpPolicy")
        seen.append(asked)
    assert sorted(seen) == sorted(sparsities)


def test_a_folder_in_use_cannot_be_resumed_or_claimed_twice(tmp_path, capsys):
    first = RunFolder.claim(tmp_path, "sac", "Pendulum-v1")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from sparse_rl.harness.runs import RunFolder; "
        f"f = RunFolder({str(first.path)!r}, 'Pendulum-v1'); f.unlock(); f.lock(); print('locked', flush=True); "
        "time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    first.unlock()
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert first.is_locked()
        (first.path / "Pendulum-v1").mkdir()
        (first.path / "Pendulum-v1" / "args.yml").write_text(yaml.safe_dump({"algo": "sac", "env": "Pendulum-v1"}))
        assert train_main(["--algo", "sac", "--resume", str(first.path)]) == 2
        assert "in use by another process" in capsys.readouterr().err
        second = RunFolder.claim(tmp_path, "sac", "Pendulum-v1")
        assert second.path.name == "Pendulum-v1_2"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert not first.is_locked(), "a killed process releases its folder"


def _resume_conf(tmp_path):
    return sac_pendulum_config(tmp_path / "sac.yml", 800, net_arch=[32, 32])


def test_evaluations_stay_on_the_grid_after_resuming_from_an_off_grid_checkpoint(tmp_path):
    """eval-freq 200, checkpoint at 300, total 800: evaluations were at 500 and 700 after resuming (none at 400,
    600, 800); now the grid and the final evaluation are kept, and wall time continues."""
    argv = [sys.executable, "-m", "sparse_rl.train", "--algo", "sac", "--env", "Pendulum-v1", "-conf",
            str(_resume_conf(tmp_path)), "-f", str(tmp_path / "logs"), "--eval-freq", "200", "--eval-episodes", "1",
            "--save-freq", "300", "--save-replay-buffer", "-v", "0"]
    env = {**os.environ, "SPARSE_RL_CHECKPOINT_DELAY": "120", "SPARSE_RL_CHECKPOINT_DELAY_AFTER": "300",
           "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run_dir = tmp_path / "logs" / "sac" / "Pendulum-v1_1"
    deadline = time.time() + 300
    while not any((run_dir / "checkpoints").glob(".tmp_step_600_*/model.zip")):  # checkpoint 600 hangs uncommitted
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert json.loads((run_dir / "checkpoints" / "latest.json").read_text())["step"] == 300
    assert train_main(["--algo", "sac", "--resume", str(run_dir), "-v", "0"]) == 0
    data = np.load(run_dir / "evaluations.npz")
    assert data["timesteps"].tolist() == [200, 400, 600, 800]
    assert (np.diff(data["walltime_s"]) > 0).all()
    assert json.loads((run_dir / "run.json").read_text())["wall_time_s"] >= data["walltime_s"][-1]


def test_a_final_evaluation_when_training_ends_off_the_grid(tmp_path):
    assert train_main(["--algo", "sac", "--env", "Pendulum-v1", "-conf", str(_resume_conf(tmp_path)), "-n", "500",
                       "-f", str(tmp_path / "logs"), "--eval-freq", "200", "--eval-episodes", "1", "-v", "0"]) == 0
    data = np.load(tmp_path / "logs" / "sac" / "Pendulum-v1_1" / "evaluations.npz")
    assert data["timesteps"].tolist() == [200, 400, 500]


def test_resuming_a_finished_run_says_there_is_nothing_to_do(tmp_path, capsys):
    """It ended in a traceback ('SAC' object has no attribute '_logger')."""
    assert train_main(["--algo", "sac", "--env", "Pendulum-v1", "-conf", str(_resume_conf(tmp_path)), "-n", "200",
                       "-f", str(tmp_path / "logs"), "--eval-freq", "-1", "--save-freq", "100", "-v", "0"]) == 0
    capsys.readouterr()
    run_dir = tmp_path / "logs" / "sac" / "Pendulum-v1_1"
    assert train_main(["--algo", "sac", "--resume", str(run_dir)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"nothing to do: {run_dir} already reached 200 of 200 env steps"]
    assert train_main(["--algo", "sac", "--resume", str(run_dir), "--sparsity", "0.5"]) == 2
    assert "these flags cannot change it: --sparsity" in capsys.readouterr().err


def test_resume_needs_no_algo_and_reads_classes_in_policy_kwargs(tmp_path, capsys):
    """--resume without --algo failed for non-SAC runs (the default 'sac' counted as given), and a config with a class
    in policy_kwargs (configs/ppo.yml: activation_fn=nn.ReLU) could not be read back."""
    assert train_main(["--algo", "ppo", "--env", "CartPole-v1", "-n", "256", "--n-envs", "1", "-f", str(tmp_path),
                       "--eval-freq", "-1",
                       "--save-freq", "128", "-v", "0", "-params", "n_steps:64", "batch_size:32",
                       "policy_kwargs:dict(activation_fn=nn.Tanh, net_arch=[16])"]) == 0
    run_dir = tmp_path / "ppo" / "CartPole-v1_1"
    config = yaml.load((run_dir / "CartPole-v1" / "config.yml").read_text(), Loader=yaml.UnsafeLoader)
    assert "activation_fn=nn.Tanh" in config["policy_kwargs"]
    capsys.readouterr()
    assert train_main(["--resume", str(run_dir), "-n", "384", "-v", "0"]) == 0
    assert json.loads((run_dir / "run.json").read_text())["n_timesteps"] == 384
    capsys.readouterr()
    assert train_main(["--resume", str(run_dir)]) == 0  # the new -n is the run's target now
    assert "nothing to do" in capsys.readouterr().out
    assert train_main(["--resume", str(run_dir), "--algo", "sac"]) == 2
    assert "drop --algo" in capsys.readouterr().err


def test_settings_sb3_rejects_are_one_line_and_leave_nothing(tmp_path, capsys):
    for params in ('policy_kwargs:dict(net_arch="big")', "policy_kwargs:dict(activation_fn='relu')",
                   "replay_buffer_kwargs:dict(foo=1)"):
        assert train_main(["--algo", "sac", "--env", "Pendulum-v1", "-n", "50", "-f", str(tmp_path / "logs"),
                           "-params", params]) == 2, params
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert not (tmp_path / "logs").exists(), f"{params}: a folder was left behind"
