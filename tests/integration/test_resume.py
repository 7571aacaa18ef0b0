"""Crash safety and determinism: SIGKILL mid-run and mid-checkpoint, then --resume; same seed, same masks and weights."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch as th
from stable_baselines3 import SAC

from sparse_rl.train import main as train_main

from .conftest import sac_pendulum_config

TOTAL = 800


def _conf(tmp_path):
    return sac_pendulum_config(tmp_path / "sac.yml", TOTAL, net_arch=[64, 64])


def _argv(tmp_path, *extra):
    return ["--algo", "sac", "--env", "Pendulum-v1", "-conf", str(_conf(tmp_path)), "--sparsity", "0.9", "--seed", "7",
            "-f", str(tmp_path / "logs"), "--eval-freq", "200", "--eval-episodes", "1", "-v", "0", *extra]


def _start(tmp_path, delay: float = 0.0):
    env = {**os.environ, "SPARSE_RL_CHECKPOINT_DELAY": str(delay), "SPARSE_RL_CHECKPOINT_DELAY_AFTER": "200",
           "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "sparse_rl.train", *_argv(tmp_path, "--save-freq", "200", "--save-replay-buffer")]
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for(condition, process, timeout=240):
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None, f"training exited early: {process.stderr.read().decode()[-2000:]}"
        assert time.time() < deadline, "timed out waiting for the training process"
        time.sleep(0.05)


def _latest_step(checkpoints):
    pointer = checkpoints / "latest.json"
    return json.loads(pointer.read_text())["step"] if pointer.is_file() else 0


@pytest.mark.parametrize("during_write", [False, True])
def test_sigkill_then_resume_finishes_at_the_requested_step(tmp_path, during_write):
    run_dir = tmp_path / "logs" / "sac" / "Pendulum-v1_1"
    checkpoints = run_dir / "checkpoints"
    process = _start(tmp_path, delay=60.0 if during_write else 0.0)
    if during_write:  # checkpoint 200 is committed; checkpoint 400 is written but not committed when the process dies
        _wait_for(lambda: any(checkpoints.glob(".tmp_step_400_*/replay_buffer.pkl")), process)
    else:
        _wait_for(lambda: _latest_step(checkpoints) >= 400, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    committed = _latest_step(checkpoints)
    assert committed == 200 if during_write else committed >= 400
    assert train_main(["--algo", "sac", "--resume", str(run_dir), "-v", "0"]) == 0
    summary = json.loads((run_dir / "run.json").read_text())
    assert summary["n_timesteps"] == TOTAL
    model = SAC.load(run_dir / "Pendulum-v1.zip")
    state = model.policy.topology_state
    assert state["updater"]["num_updates"] == 5 and state["updater"]["last_update_step"] == 600  # 200..600, no repeat
    for step_dir in checkpoints.glob("step_*"):
        SAC.load(step_dir / "model.zip")  # every committed checkpoint is complete
    assert not list(checkpoints.glob(".tmp_step_*"))
    import numpy as np

    assert np.load(run_dir / "evaluations.npz")["timesteps"].tolist() == [200, 400, 600, 800]
    # the Monitor CSV continues: episodes after the checkpoint were dropped and replayed, on one clock
    from stable_baselines3.common.monitor import load_results

    episodes = load_results(str(run_dir))
    assert episodes["l"].sum() == TOTAL and len(episodes) == TOTAL // 200
    assert episodes["t"].is_monotonic_increasing


def test_resume_errors(tmp_path, capsys):
    assert train_main(["--algo", "sac", "--resume", str(tmp_path / "nothing")]) == 2
    assert train_main(_argv(tmp_path, "-n", "150", "--save-freq", "100")) == 0
    run_dir = tmp_path / "logs" / "sac" / "Pendulum-v1_1"
    assert train_main(["--algo", "td3", "--resume", str(run_dir)]) == 2
    capsys.readouterr()
    # a flag typed with its default value was ignored without a word (--seed 0 on a seed-7 run)
    assert train_main(["--resume", str(run_dir), "--seed", "0", "--eval-freq", "10000", "-n", "300"]) == 2
    assert "these flags cannot change it: --seed, --eval-freq" in capsys.readouterr().err
    # -n below the last checkpoint of an interrupted run: it "finished" at the checkpoint's step
    (run_dir / "run.json").unlink()
    assert train_main(["--resume", str(run_dir), "-n", "50"]) == 2
    assert "-n 50: the last checkpoint of" in capsys.readouterr().err
    assert train_main(_argv(tmp_path, "-n", "150", "--save-replay-buffer")) == 2  # no checkpoint to hold it
    assert "--save-replay-buffer stores the replay buffer in checkpoints, but --save-freq -1" in capsys.readouterr().err


def test_a_resume_with_a_new_target_rewrites_the_saved_settings(tmp_path, capsys):
    """resolved.yml and config.yml kept the old n_timesteps and topology schedule (a second resume said '-n replaces
    1000' although the target was 2000)."""
    import yaml

    conf = sac_pendulum_config(tmp_path / "short.yml", 300, net_arch=[32, 32])  # the length from the config
    assert train_main(["--algo", "sac", "--env", "Pendulum-v1", "-conf", str(conf), "--save-freq", "100", "-f",
                       str(tmp_path / "logs"), "--eval-freq", "200", "--eval-episodes", "1", "-v", "0"]) == 0
    run_dir = tmp_path / "logs" / "sac" / "Pendulum-v1_1"
    (run_dir / "run.json").unlink()  # as a crash after the last checkpoint would leave it
    (run_dir / "Pendulum-v1.zip").unlink()
    capsys.readouterr()
    assert train_main(["--resume", str(run_dir), "-v", "0"]) == 0  # the same target: no note (args.yml held None)
    assert "now resolves against" not in capsys.readouterr().out
    (run_dir / "run.json").unlink()
    assert train_main(["--resume", str(run_dir), "-n", "600", "-v", "0"]) == 0
    out = capsys.readouterr().out
    assert "topology schedule:" in out and "the topology schedule now resolves against n_timesteps 600" in out
    resolved = yaml.safe_load((run_dir / "Pendulum-v1" / "resolved.yml").read_text())
    assert resolved["hyperparams"]["n_timesteps"] == 600 and resolved["topology_schedule"]["end"] == 480
    config = yaml.load((run_dir / "Pendulum-v1" / "config.yml").read_text(), Loader=yaml.UnsafeLoader)
    assert config["n_timesteps"] == 600


def test_same_seed_same_masks_and_weights(tmp_path):
    for _ in range(2):
        assert train_main(_argv(tmp_path, "-n", "400")) == 0
    a = SAC.load(tmp_path / "logs" / "sac" / "Pendulum-v1_1" / "Pendulum-v1.zip").policy.state_dict()
    b = SAC.load(tmp_path / "logs" / "sac" / "Pendulum-v1_2" / "Pendulum-v1.zip").policy.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], th.Tensor):
            assert th.equal(a[key], b[key]), key
    assert any(key.endswith("indices") for key in a)


def test_a_refused_resume_changes_nothing_and_a_resume_without_replay_buffer_says_so(tmp_path, capsys):
    """A --resume -n on a run without checkpoints rewrote args.yml before it failed; an off-policy run resumed
    without its replay buffer restarted from an empty buffer without a word."""
    assert train_main(_argv(tmp_path, "-n", "150")) == 0  # no --save-freq: no checkpoint
    args_file = tmp_path / "logs" / "sac" / "Pendulum-v1_1" / "Pendulum-v1" / "args.yml"
    before = args_file.read_text()
    assert train_main(["--resume", str(args_file.parent.parent), "-n", "300"]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err and args_file.read_text() == before
    assert train_main(_argv(tmp_path, "-n", "150", "--save-freq", "100")) == 0
    capsys.readouterr()
    assert train_main(["--resume", str(tmp_path / "logs" / "sac" / "Pendulum-v1_2"), "-n", "200"]) == 0
    assert "holds no replay buffer" in capsys.readouterr().out


def test_a_relative_tensorboard_folder_is_saved_absolute(tmp_path, monkeypatch):
    """-tb tb was saved as 'tb/...': a --resume from another directory would have logged somewhere else."""
    import yaml

    monkeypatch.chdir(tmp_path)
    assert train_main(["--algo", "sac", "--env", "Pendulum-v1", "-n", "100", "-f", "logs", "-tb", "tb", "--eval-freq", "-1",
                       "-v", "0", "-params", "learning_starts:50"]) == 0
    saved = yaml.safe_load((tmp_path / "logs" / "sac" / "Pendulum-v1_1" / "Pendulum-v1" / "resolved.yml").read_text())
    assert saved["tensorboard_dir"] == str(tmp_path.resolve() / "tb" / "sac_Pendulum-v1_rigl90_s0")


def test_a_checkpoint_holds_every_transition_and_update_up_to_its_step(tmp_path):
    """Checkpoints were written inside SB3's step, before the step's transition was stored and trained on (PPO: before
    the rollout was trained on), so every resume lost one transition and one gradient step (PPO: a rollout)."""
    from stable_baselines3 import PPO

    assert train_main(["--algo", "sac", "--env", "Pendulum-v1", "-n", "450", "-f", str(tmp_path / "sac"), "--eval-freq",
                       "-1", "-v", "0", "--save-freq", "200", "--save-replay-buffer", "-params", "learning_starts:100",
                       "policy_kwargs:dict(net_arch=[32, 32])"]) == 0
    checkpoints = tmp_path / "sac" / "sac" / "Pendulum-v1_1" / "checkpoints"
    for step in (200, 400):
        model = SAC.load(checkpoints / f"step_{step}" / "model.zip")
        model.load_replay_buffer(checkpoints / f"step_{step}" / "replay_buffer.pkl")
        assert model.num_timesteps == step and model.replay_buffer.size() == step
        assert model._n_updates == step - 100  # one gradient step per env step after learning_starts
    assert train_main(["--algo", "ppo", "--env", "CartPole-v1", "-n", "600", "-f", str(tmp_path / "ppo"), "--eval-freq",
                       "-1", "-v", "0", "--save-freq", "200", "--n-envs", "1", "-params", "n_steps:128", "batch_size:64",
                       "n_epochs:2"]) == 0
    checkpoints = tmp_path / "ppo" / "ppo" / "CartPole-v1_1" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step_*")) == ["step_256", "step_512"]  # the rollout starts after 200, 400
    for path in checkpoints.glob("step_*"):
        model = PPO.load(path / "model.zip")
        assert model._n_updates == model.num_timesteps // 128 * 2  # every rollout collected so far was trained on


def _resume_from(run_dir, copy_dir, step):
    """A copy of a finished run as a crash after checkpoint ``step`` would have left it."""
    import shutil

    shutil.copytree(run_dir, copy_dir)
    (copy_dir / "run.json").unlink()
    for model in copy_dir.glob("*.zip"):
        if model.stem != "best_model":  # the final model; best_model.zip is what the crash would have left
            model.unlink()
    record = (copy_dir / "checkpoints" / f"step_{step}" / "record.json").read_text()
    assert json.loads(record)["step"] == step
    (copy_dir / "checkpoints" / "latest.json").write_text(record)
    return copy_dir


def _assert_same_run(a, b, algo_class):
    import numpy as np
    from stable_baselines3.common.monitor import load_results

    for name in ("final", "best_model"):
        [za], [zb] = ([p for p in run.glob("*.zip") if (p.stem == "best_model") == (name == "best_model")] for run in (a, b))
        plain = {"replay_buffer_class": None, "replay_buffer_kwargs": {}}  # HER's buffer needs an env to load
        wa, wb = (algo_class.load(z, custom_objects=plain).policy.state_dict() for z in (za, zb))
        assert wa.keys() == wb.keys()
        for key in wa:
            if isinstance(wa[key], th.Tensor):
                assert th.equal(wa[key], wb[key]), (name, key)
    ea, eb = np.load(a / "evaluations.npz"), np.load(b / "evaluations.npz")
    for key in ("timesteps", "results", "ep_lengths"):
        assert np.array_equal(ea[key], eb[key]), key
    assert (a / "dormant.csv").read_text() == (b / "dormant.csv").read_text()
    ma, mb = load_results(str(a)), load_results(str(b))
    assert ma["r"].tolist() == mb["r"].tolist() and ma["l"].tolist() == mb["l"].tolist()


@pytest.mark.parametrize("case", ["sac", "ppo-normalize-2envs", "dqn-minatar", "td3-ou-noise", "sac-gsde-4envs",
                                  "ppo-gsde", "ppo-lstm", "sac-her"])
def test_a_resumed_run_equals_the_uninterrupted_one(tmp_path, case, capsys):
    """A resume started new episodes (the environments were not in the checkpoint) and re-seeded the evaluation env,
    so a run interrupted mid-episode ended with other weights, evaluations and curves than the same run uninterrupted.
    The checkpoint now stores each env's current episode (replayed at resume) and each evaluation is seeded alone."""
    from stable_baselines3 import DQN, PPO, SAC, TD3

    common = ["-f", str(tmp_path / "logs"), "--eval-freq", "200", "--eval-episodes", "2", "-v", "0",
              "--save-replay-buffer", "--seed", "3"]
    if case == "sac":  # checkpoints at 250, 500: Pendulum's 200-step episodes are under way at both
        algo, env_id, algo_class, step = "sac", "Pendulum-v1", SAC, 250
        argv = ["-n", "600", "--save-freq", "250", "-params", "learning_starts:100", "buffer_size:1000",
                "policy_kwargs:dict(net_arch=[32, 32])", "--method", "rigl"]
    elif case == "ppo-normalize-2envs":  # rollouts of 2 x 128 steps: checkpoints at 512, 768
        algo, env_id, algo_class, step = "ppo", "CartPole-v1", PPO, 512
        argv = ["-n", "1024", "--save-freq", "300", "--n-envs", "2", "-params", "n_steps:128", "batch_size:64",
                "n_epochs:2", "normalize:True", "policy_kwargs:dict(net_arch=[32, 32])"]
    elif case == "td3-ou-noise":  # SB3's learn() resets the Ornstein-Uhlenbeck noise: the checkpoint's is put back
        algo, env_id, algo_class, step = "td3", "Pendulum-v1", TD3, 250
        argv = ["-n", "600", "--save-freq", "250", "-params", "learning_starts:100", "buffer_size:1000",
                "noise_type:ornstein-uhlenbeck", "noise_std:0.5", "policy_kwargs:dict(net_arch=[32, 32])"]
    elif case == "sac-gsde-4envs":  # gSDE matrices redrawn at each collection; random actions (learning_starts) drawn
        # from the action space that, in a fresh run, is env 0's own object: checkpoint 400 is inside those episodes
        algo, env_id, algo_class, step = "sac", "Pendulum-v1", SAC, 400
        argv = ["-n", "700", "--save-freq", "200", "--n-envs", "4", "-params", "learning_starts:100", "buffer_size:1000",
                "use_sde:True", "policy_kwargs:dict(net_arch=[32, 32])"]
    elif case == "ppo-gsde":  # the packaged PPO Pendulum entry explores with gSDE
        algo, env_id, algo_class, step = "ppo", "Pendulum-v1", PPO, 512
        argv = ["-n", "1024", "--save-freq", "300", "--n-envs", "2", "-params", "n_steps:128", "batch_size:64",
                "n_epochs:2", "policy_kwargs:dict(net_arch=[32, 32])"]
    elif case == "ppo-lstm":  # sb3-contrib does not save RecurrentPPO's LSTM states
        pytest.importorskip("sb3_contrib")
        from sb3_contrib import RecurrentPPO as algo_class

        algo, env_id, step = "ppo_lstm", "CartPole-v1", 512
        argv = ["-n", "1024", "--n-envs", "2", "--save-freq", "256", "-params", "n_steps:64", "batch_size:64", "n_epochs:2",
                "policy_kwargs:dict(net_arch=[32, 32], lstm_hidden_size=16)"]
    elif case == "sac-her":  # HER: loading the replay buffer closed the episode under way
        import gymnasium as gym
        from stable_baselines3.common.envs import BitFlippingEnv

        if "BitFlipCont-v0" not in gym.registry:
            gym.register("BitFlipCont-v0", entry_point=lambda **kw: BitFlippingEnv(n_bits=6, continuous=True, max_steps=6))
        algo, env_id, algo_class, step = "sac", "BitFlipCont-v0", SAC, 300
        argv = ["-n", "600", "--save-freq", "150", "-params", "learning_starts:100", "buffer_size:2000",
                "replay_buffer_class:HerReplayBuffer", "replay_buffer_kwargs:dict(n_sampled_goal=4, "
                "goal_selection_strategy='future')", "policy:SparseMultiInputPolicy", "policy_kwargs:dict(net_arch=[32, 32])"]
    else:  # MinAtar draws from the game's own RandomState (sticky actions, spawns)
        algo, env_id, algo_class, step = "dqn", "MinAtar/Breakout-v1", DQN, 250
        argv = ["-n", "600", "--save-freq", "250", "-params", "learning_starts:100", "buffer_size:1000"]
    assert train_main(["--algo", algo, "--env", env_id, *common, *argv]) == 0
    run_dir = next((tmp_path / "logs" / algo).iterdir())
    copy = _resume_from(run_dir, tmp_path / "resumed", step)
    capsys.readouterr()
    assert train_main(["--algo", algo, "--resume", str(copy), "-v", "0"]) == 0
    out = capsys.readouterr().out
    assert f"the episodes under way at step {step} replayed" in out, out
    _assert_same_run(run_dir, copy, algo_class)
    [resume] = json.loads((copy / "run.json").read_text())["resumes"]  # the run's record says it was resumed, and how
    assert resume["step"] == step and resume["environments"] == "replayed"
    assert json.loads((run_dir / "run.json").read_text())["resumes"] == []


def test_a_checkpoint_that_cannot_restore_the_environments_says_so(tmp_path, capsys):
    from sparse_rl.sb3.env_state import restore_env_state

    assert train_main(["--algo", "sac", "--env", "Pendulum-v1", "-n", "300", "-f", str(tmp_path / "logs"), "--eval-freq",
                       "-1", "-v", "0", "--save-freq", "250", "--save-replay-buffer", "-params", "learning_starts:100",
                       "buffer_size:1000"]) == 0
    run_dir = next((tmp_path / "logs" / "sac").iterdir())
    copy = _resume_from(run_dir, tmp_path / "resumed", 250)
    (copy / "checkpoints" / "step_250" / "env_state.pt").unlink()  # written by a version that did not store them
    capsys.readouterr()
    assert train_main(["--algo", "sac", "--resume", str(copy), "-n", "300", "-v", "0"]) == 0
    assert "note: the environments start new episodes (the checkpoint was written by a version" in capsys.readouterr().out
    [resume] = json.loads((copy / "run.json").read_text())["resumes"]
    assert resume["step"] == 250 and resume["environments"].startswith("new episodes: the checkpoint was written by")
    state = th.load(run_dir / "checkpoints" / "step_250" / "env_state.pt", weights_only=False)
    assert state["exact"] and len(state["episodes"]) == 1 and len(state["episodes"][0]["actions"]) == 50
    tampered = {**state, "episodes": [{**state["episodes"][0], "actions": state["episodes"][0]["actions"][:-1]}]}
    from sparse_rl.harness.envs import training_env

    env = training_env("Pendulum-v1", {"n_envs": 1}, seed=0)
    assert restore_env_state(env, tampered) == "the replayed episode did not reach the recorded observation"
    assert restore_env_state(env, {"exact": False, "reason": "x"}) == "x"


def test_a_replay_checks_the_generators_too():
    """A fresh MinAtar env holds two RandomStates (game.random, game.env.random) that a seeded reset makes one: restoring
    one of them let the replay reach the recorded observation and diverge later. The replay now restores shared
    generators as shared and compares every generator's state at the end."""
    from sparse_rl.harness.envs import training_env
    from sparse_rl.sb3.env_state import capture_env_state, restore_env_state

    env = training_env("MinAtar/Breakout-v1", {"n_envs": 1}, seed=5)
    env.reset()
    for _ in range(30):
        env.step([1])
    state = capture_env_state(env)
    [(paths, kind, _)] = [g for g in state["episodes"][0]["generators_now"] if "game.env.random" in g[0]]
    assert kind == "RandomState" and paths == ["game.env.random", "game.random"]
    fresh = training_env("MinAtar/Breakout-v1", {"n_envs": 1}, seed=5)
    assert restore_env_state(fresh, state) is None
    game = fresh.envs[0].unwrapped.game
    assert game.random is game.env.random
    for _ in range(200):
        assert fresh.step([2])[0].tolist() == env.step([2])[0].tolist()
    other = [(["game.random"], "RandomState", np.random.RandomState(1).get_state())]
    broken = {**state, "episodes": [{**state["episodes"][0], "generators_now": other}]}
    assert "random generators" in restore_env_state(training_env("MinAtar/Breakout-v1", {"n_envs": 1}, seed=5), broken)


def test_a_replay_restores_what_a_reset_carries_over_from_the_episode_before():
    """MinAtar's reset keeps ``game.last_action``, so a sticky first action repeats the previous episode's last one; a
    fresh env has 0 there, and the replay of such an episode missed the recorded observation (a DQN SpaceInvaders resume
    started new episodes). The recorder now keeps the env's plain values at reset."""
    from sparse_rl.harness.envs import training_env
    from sparse_rl.sb3.env_state import capture_env_state, restore_env_state

    def env():  # every action sticky, so the episode is played by the action the episode before ended on
        return training_env("MinAtar/SpaceInvaders-v1", {"n_envs": 1}, seed=5, env_kwargs={"sticky_action_prob": 1.0})

    played = env()
    played.envs[0].unwrapped.game.last_action = 3  # "r": the episode before ended moving right
    played.reset()
    for _ in range(3):
        played.step([0])
    state = capture_env_state(played)
    assert state["episodes"][0]["scalars"]["game.last_action"] == 3
    fresh = env()
    assert restore_env_state(fresh, state) is None
    for _ in range(20):
        assert fresh.step([0])[0].tolist() == played.step([0])[0].tolist()
    old = {**state, "episodes": [{k: v for k, v in state["episodes"][0].items() if k != "scalars"}]}
    assert restore_env_state(env(), old) == "the replayed episode did not reach the recorded observation"


def test_a_replay_that_fails_starts_new_episodes_instead_of_a_crash():
    """An env this replay does not know (here: an action it refuses) made the restore raise: --resume crashed."""
    from sparse_rl.harness.envs import training_env
    from sparse_rl.sb3.env_state import capture_env_state, restore_env_state

    env = training_env("CartPole-v1", {"n_envs": 1}, seed=0)
    env.reset()
    env.step([1])
    state = capture_env_state(env)
    broken = {**state, "episodes": [{**state["episodes"][0], "actions": ["left"]}]}
    reason = restore_env_state(training_env("CartPole-v1", {"n_envs": 1}, seed=0), broken)
    assert reason.startswith("the replay failed (")


def test_an_evaluation_interrupted_while_writing_leaves_the_last_complete_files(tmp_path, monkeypatch):
    """evaluations.npz and best_model.zip were written in place (SB3's EvalCallback): a process killed mid-write left
    a truncated file, and --resume then failed on it (EOFError) or reported success with an unloadable best model."""
    import numpy as np
    from stable_baselines3.common.base_class import BaseAlgorithm

    real_savez, real_save = np.savez, BaseAlgorithm.save

    def truncated(path):
        with open(path if str(path).endswith((".npz", ".zip")) else f"{path}.npz", "wb") as f:
            f.write(b"PK\x03\x04 truncated")
        raise KeyboardInterrupt

    def savez(path, *args, **kwargs):  # the second evaluation dies half-way through writing its file...
        return truncated(path) if len(kwargs.get("timesteps", ())) >= 2 else real_savez(path, *args, **kwargs)

    def save(self, path, *args, **kwargs):  # ... or through writing the best model
        if self.num_timesteps >= 200 and "best_model" in str(path):
            truncated(path if str(path).endswith(".zip") else f"{path}.zip")
        return real_save(self, path, *args, **kwargs)

    monkeypatch.setattr(np, "savez", savez)
    monkeypatch.setattr(BaseAlgorithm, "save", save)
    with pytest.raises(KeyboardInterrupt):
        train_main(["--algo", "sac", "--env", "Pendulum-v1", "-n", "400", "-f", str(tmp_path), "--eval-freq", "100",
                    "--eval-episodes", "1", "-v", "0", "-params", "learning_starts:50", "policy_kwargs:dict(net_arch=[16])"])
    monkeypatch.undo()
    run_dir = next((tmp_path / "sac").iterdir())
    assert np.load(run_dir / "evaluations.npz")["timesteps"].tolist() == [100]  # the last complete write
    SAC.load(run_dir / "best_model.zip")


def test_extending_a_finished_run_says_it_continues_from_the_last_checkpoint(tmp_path, capsys):
    """--resume -n LONGER on a finished run restarted from its last checkpoint, before the finish, without a word."""
    assert train_main(["--algo", "sac", "--env", "Pendulum-v1", "-n", "300", "-f", str(tmp_path), "--eval-freq", "-1",
                       "-v", "0", "--save-freq", "200", "--save-replay-buffer", "-params", "learning_starts:100",
                       "policy_kwargs:dict(net_arch=[16])"]) == 0
    run_dir = next((tmp_path / "sac").iterdir())
    capsys.readouterr()
    assert train_main(["--resume", str(run_dir), "-n", "400", "-v", "0"]) == 0
    assert "finished at step 300, but its last checkpoint is at step 200" in capsys.readouterr().out


def test_a_resumed_runs_tensorboard_curves_do_not_double_back(tmp_path):
    """After --resume, TensorBoard showed both the old and the new events after the checkpoint: curves looped back."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert train_main(["--algo", "sac", "--env", "Pendulum-v1", "-n", "600", "-f", str(tmp_path / "logs"), "-tb",
                       str(tmp_path / "tb"), "--eval-freq", "200", "--eval-episodes", "1", "-v", "0", "--save-freq", "250",
                       "--save-replay-buffer", "-params", "learning_starts:100", "policy_kwargs:dict(net_arch=[16])"]) == 0
    run_dir = next((tmp_path / "logs" / "sac").iterdir())
    (run_dir / "run.json").unlink()  # a crash after checkpoint 250
    (run_dir / "Pendulum-v1.zip").unlink()
    (run_dir / "checkpoints" / "latest.json").write_text((run_dir / "checkpoints" / "step_250" / "record.json").read_text())
    assert train_main(["--resume", str(run_dir), "-v", "0"]) == 0
    [tb_run] = (tmp_path / "tb").iterdir()
    events = EventAccumulator(str(tb_run))
    events.Reload()
    steps = [event.step for event in events.Scalars("eval/mean_reward")]
    assert steps == [200, 400, 600]
