"""``python -m sparse_rl.train`` and ``python -m sparse_rl.compare`` on real short runs, and their bad-input errors."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch as th
import yaml
from stable_baselines3 import SAC

import sparse_rl
from sparse_rl.compare import main as compare_main
from sparse_rl.train import main as train_main

SHORT = ["-n", "300", "--eval-freq", "150", "--eval-episodes", "1", "-v", "0",
         "-params", "learning_starts:50", "buffer_size:1000", "batch_size:32"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("logs")
    for sparsity in ("0", "0.9"):
        assert train_main(["--algo", "sac", "--env", "Pendulum-v1", "--sparsity", sparsity, "-f", str(root),
                           "-tb", str(root / "tb"), *SHORT]) == 0
    return root


def test_rl_zoo_layout(runs):
    dense_dir, sparse_dir = runs / "sac" / "Pendulum-v1_1", runs / "sac" / "Pendulum-v1_2"
    for run_dir in (dense_dir, sparse_dir):
        for name in ("Pendulum-v1.zip", "best_model.zip", "evaluations.npz", "command.txt", "run.json",
                     "Pendulum-v1/config.yml", "Pendulum-v1/args.yml"):
            assert (run_dir / name).is_file(), name
        assert np.load(run_dir / "evaluations.npz")["timesteps"].tolist() == [150, 300]
    config = yaml.load((sparse_dir / "Pendulum-v1" / "config.yml").read_text(), Loader=yaml.UnsafeLoader)
    assert config["policy"] == "SparseMlpPolicy" and "sparsity" in config["policy_kwargs"]
    assert yaml.load((dense_dir / "Pendulum-v1" / "config.yml").read_text(), Loader=yaml.UnsafeLoader)["policy"] == "MlpPolicy"
    args = yaml.load((sparse_dir / "Pendulum-v1" / "args.yml").read_text(), Loader=yaml.UnsafeLoader)
    assert "env_kwargs" in args and args["algo"] == "sac"
    summary = json.loads((sparse_dir / "run.json").read_text())  # what happened: 250 gradient steps, no update
    assert (summary["n_updates"], summary["topology_updates"]) == (250, 0)  # (every 1000 steps: none fits 300)
    assert json.loads((dense_dir / "run.json").read_text())["topology_updates"] is None
    code = summary["code"]  # which code trained it (the agents' provenance)
    command = shlex.split((sparse_dir / "command.txt").read_text())  # the arguments given (it held pytest's own)
    assert command[1:7] == ["-m", "sparse_rl.train", "--algo", "sac", "--env", "Pendulum-v1"] and "-params" in command
    assert code["sparse_rl"] == sparse_rl.__version__
    if (Path(sparse_rl.__file__).resolve().parents[1] / ".git").exists():
        assert len(code["git_commit"]) == 40 and isinstance(code["git_dirty"], bool)
    model = SAC.load(sparse_dir / "Pendulum-v1.zip")
    assert type(model.policy).__name__ == "SparseSACPolicy"
    action, _ = model.predict(np.zeros(3, dtype=np.float32), deterministic=True)
    assert action.shape == (1,)


def test_compare_report(runs, tmp_path, capsys):
    assert compare_main([str(runs), "-o", str(tmp_path)]) == 0
    table = (tmp_path / "report.md").read_text()
    assert "| sac | Pendulum-v1 | dense | 1 |" in table and "| sac | Pendulum-v1 | rigl 90% | 1 |" in table
    assert (tmp_path / "report.html").read_text().count("<tr>") == 3
    assert (tmp_path / "curves_sac_Pendulum-v1.png").stat().st_size > 10_000
    notes = table.split("## Notes", 1)[1]  # one seed each: the "95 % CI" is a point, and the sparse run never rewired
    assert "fewer than 3 seeds in dense (1), rigl 90% (1)" in notes and "ran no rigl update" in notes


@pytest.mark.parametrize("argv,message", [
    (["--algo", "trpo"], "unknown algo 'trpo'"),
    (["--env", "Pendulm-v1"], "Did you mean Pendulum-v1"),
    (["--sparsity", "1.0"], "sparsity must be a number in [0, 1)"),
    (["--sparsity", "abc"], "--sparsity must be a number"),
    (["--method", "magic"], "unknown method 'magic'"),
    (["--backend", "gpu9000"], "unknown backend"),
    (["--distribution", "normal"], "unknown distribution"),
    (["--algo", "dqn", "--env", "Pendulum-v1"], "--algo dqn needs a discrete action space"),
    (["--algo", "sac", "--env", "CartPole-v1"], "--algo sac needs a continuous"),
    (["--algo", "tqc", "--env", "CartPole-v1"], "use --algo dqn, qrdqn, ppo or ppo_mask"),
    (["--algo", "qrdqn", "--env", "Pendulum-v1"], "--algo qrdqn needs a discrete action space"),
    (["-conf", "/nonexistent.yml"], "not found"),
    (["-params", "oops"], "KEY:VALUE"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["-params", "learning_rate:fast"], "learning_rate must be a positive number or 'lin_"),
    (["-params", "n_envs:0"], "n_envs must be an integer >= 1"),
    (["-params", "buffer_size:0"], "buffer_size must be an integer >= 1"),
    (["-params", "policy_kwargs:dict(net_arch=[8], distribution='gauss')"], "unknown distribution 'gauss'"),
    (["--method", "dense", "--sparsity", "0.9"], "--method dense trains the dense baseline"),
    (["-params", "policy:MlpPolicy"], "-params policy:MlpPolicy asks for SB3's dense policy, but"),
    (["--device", "foo"], "--device 'foo' is not a torch device"),  # was a traceback
    (["--seed", "-1"], "--seed must be 0 or more"),  # was a traceback
    (["--eval-episodes", "3", "--eval-freq", "-1"], "--eval-episodes 3 has no effect: --eval-freq -1"),  # ignored
    (["-params", "batch_size:64", "-params", "batch_size:32"], "-params sets 'batch_size' twice"),  # the last won
    (["-params", "policy_kwargs:dict(net_arch=dict(foo=3))"], "net_arch must be a list of layer widths"),  # traceback
    (["--resume", "logs/x", "--dry-run"], "these flags cannot change it: --dry-run"),
    *([(["--device", "cuda"], "this machine has no CUDA device")] if not th.cuda.is_available() else []),  # was CPU
])
def test_bad_input_gives_one_clear_line(argv, message, tmp_path, capsys):
    assert train_main([*argv, "-f", str(tmp_path), "-n", "10"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not any(tmp_path.rglob("*.yml")) and not any(tmp_path.rglob("command.txt")), "nothing is written"


def test_a_dry_run_prints_the_settings_builds_the_model_and_writes_nothing(tmp_path, capsys):
    argv = ["--algo", "sac", "--env", "Pendulum-v1", "-f", str(tmp_path / "logs"), "-n", "300", "-tb", str(tmp_path / "tb")]
    assert train_main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "sac on Pendulum-v1, seed 0: rigl at sparsity 0.9" in out and out.endswith("nothing was written\n")
    assert not (tmp_path / "logs").exists() and not (tmp_path / "tb").exists()
    # SB3's own refusal (here: an optimizer argument it does not take) is found without training
    assert train_main([*argv, "--dry-run", "-params", "policy_kwargs:dict(optimizer_kwargs=dict(bogus=1))"]) == 2
    assert "SB3 cannot build SAC with these settings" in capsys.readouterr().err


def test_env_kwargs_the_env_rejects_are_one_line_before_any_file(tmp_path, capsys):
    assert train_main(["--algo", "sac", "--env", "Pendulum-v1", "-f", str(tmp_path), "-n", "10",
                       "-params", "env_kwargs:dict(no_such_argument=1)"]) == 2
    err = capsys.readouterr().err
    assert "env_kwargs" in err and "no_such_argument" in err and err.count("\n") == 1
    assert not list(tmp_path.rglob("Pendulum-v1_*"))


def test_a_run_that_fails_while_being_set_up_removes_its_folder(tmp_path, monkeypatch):
    import sparse_rl.harness.training as training

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure while building the env")

    monkeypatch.setattr(training, "training_env", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        train_main(["--algo", "sac", "--env", "Pendulum-v1", "-f", str(tmp_path), "-n", "10"])
    assert not (tmp_path / "sac").exists(), "the folders the run created are gone"


def test_normalize_true_without_gamma_trains_with_vecnormalize(tmp_path):
    """RL Zoo normalises with ``normalize: true``; an entry without ``gamma`` used to train without VecNormalize."""
    conf = tmp_path / "norm.yml"
    conf.write_text("Pendulum-v1:\n  policy: SparseMlpPolicy\n  learning_starts: 50\n  normalize: true\n")
    assert train_main(["-n", "100", "-f", str(tmp_path / "logs"), "-conf", str(conf), "--eval-freq", "-1"]) == 0
    params = tmp_path / "logs" / "sac" / "Pendulum-v1_1" / "Pendulum-v1"
    assert (params / "vecnormalize.pkl").is_file()
    assert yaml.safe_load((params / "resolved.yml").read_text())["hyperparams"]["normalize"] == {}
    config = dict(yaml.unsafe_load((params / "config.yml").read_text()))
    assert config["normalize"] == "dict()"


def test_the_best_model_keeps_the_statistics_it_was_evaluated_with(tmp_path, capsys):
    """export/enjoy/evaluate --best paired best_model.zip with the final model's VecNormalize statistics."""
    import pickle

    from sparse_rl.harness.runs import RunFolder

    conf = tmp_path / "norm.yml"
    conf.write_text("Pendulum-v1:\n  policy: SparseMlpPolicy\n  learning_starts: 50\n  normalize: true\n"
                    "  policy_kwargs: dict(net_arch=[16, 16])\n")
    assert train_main(["-n", "300", "-f", str(tmp_path / "logs"), "-conf", str(conf), "--eval-freq", "100",
                       "--eval-episodes", "1", "-v", "0", "--seed", "2"]) == 0  # seed 2: the best model is step 100's
    folder = RunFolder(tmp_path / "logs" / "sac" / "Pendulum-v1_1", "Pendulum-v1")
    best = folder.statistics_path(best=True)
    assert best.name == "best_vecnormalize.pkl" and folder.statistics_path() == folder.vecnormalize_path
    evaluations = np.load(folder.path / "evaluations.npz")
    best_step = int(evaluations["timesteps"][np.argmax(evaluations["results"].mean(axis=1))])
    with open(best, "rb") as f, open(folder.vecnormalize_path, "rb") as g:  # one observation per step, plus the reset
        assert (round(pickle.load(f).obs_rms.count), round(pickle.load(g).obs_rms.count)) == (best_step + 1, 301)
    best.unlink()  # a run written before they were saved: said
    capsys.readouterr()
    assert folder.statistics_path(best=True) == folder.vecnormalize_path
    assert "best_model.zip is paired with the final model's VecNormalize statistics" in capsys.readouterr().out


def test_updates_sharing_a_rollout_are_said_once(tmp_path, capsys):
    """The harness's schedule line and the TopologyCallback's own note both said it (two lines, the same news)."""
    assert train_main(["--algo", "ppo", "--env", "CartPole-v1", "--sparsity", "0.9", "-n", "8192", "-params",
                       "n_steps:512", "-f", str(tmp_path), "--eval-freq", "-1", "-v", "0"]) == 0
    out = capsys.readouterr().out
    assert out.count("1 scheduled steps fall between two checks of the clock") == 1
    assert "checks the schedule at rollout ends" not in out


def test_cli_exit_code_in_a_subprocess(tmp_path):
    result = subprocess.run([sys.executable, "-m", "sparse_rl.train", "--algo", "nope"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and result.stderr.strip().startswith("error: unknown algo 'nope'")


def test_enjoy_replays_a_run(runs, capsys):
    from sparse_rl.enjoy import main as enjoy_main

    assert enjoy_main([str(runs / "sac" / "Pendulum-v1_2"), "--episodes", "1"]) == 0
    assert "returns over 1 episodes" in capsys.readouterr().out
    assert enjoy_main([str(runs / "sac" / "Pendulum-v1_2"), "--best", "--episodes", "1"]) == 0
    assert enjoy_main([str(runs / "sac"), "--episodes", "1"]) == 2


def test_enjoy_writes_a_classic_control_video(runs, tmp_path):
    """Pendulum videos failed: pygame was not installed with the package."""
    import cv2

    from sparse_rl.enjoy import main as enjoy_main

    video = tmp_path / "pendulum.mp4"
    assert enjoy_main([str(runs / "sac" / "Pendulum-v1_2"), "--episodes", "1", "--video", str(video)]) == 0
    capture = cv2.VideoCapture(str(video))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) >= 200 and capture.get(cv2.CAP_PROP_FRAME_WIDTH) > 0


def test_enjoy_writes_a_mujoco_video(tmp_path):
    import cv2

    from sparse_rl.enjoy import main as enjoy_main

    assert train_main(["--algo", "sac", "--env", "HalfCheetah-v4", "--sparsity", "0.9", "-f", str(tmp_path), "-n", "64",
                       "--eval-freq", "-1", "-v", "0", "-params", "learning_starts:32", "buffer_size:100",
                       "batch_size:16"]) == 0
    video = tmp_path / "cheetah.mp4"
    assert enjoy_main([str(tmp_path / "sac" / "HalfCheetah-v4_1"), "--episodes", "1", "-n", "60", "--video", str(video),
                       "--video-size", "96"]) == 0
    capture = cv2.VideoCapture(str(video))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 60
    assert capture.get(cv2.CAP_PROP_FRAME_WIDTH) == 96
    ok, frame = capture.read()
    assert ok and frame.std() > 10, "frames are real images"


def test_atari_evaluation_env_has_the_training_envs_type(tmp_path):
    """SB3 warned 'Training and eval env are not of the same type' on every Atari run (RL Zoo transposes both)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert train_main(["--algo", "dqn", "--env", "PongNoFrameskip-v4", "-f", str(tmp_path), "-n", "40", "--eval-freq",
                           "20", "--eval-episodes", "1", "-v", "0", "-params", "learning_starts:20", "buffer_size:100",
                           "train_freq:4", "batch_size:8", "env_kwargs:dict(max_episode_steps=30)"]) == 0
    assert not [w for w in caught if "not of the same type" in str(w.message)]
