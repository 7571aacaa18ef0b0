"""The trained agents shipped in agents/: each loads three ways and replays its stored evaluation episode exactly."""

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sparse_rl import load_exported
from sparse_rl.enjoy import main as enjoy_main
from sparse_rl.harness.agents import RESULTS, complete_resolved, replay_first_episode, requote_command, table
from sparse_rl.harness.resolve import yaml_plain
from sparse_rl.harness.runs import RunFolder, load_agent, saved_hyperparams

AGENTS = Path(__file__).resolve().parents[2] / "agents"
SHIPPED = sorted(p.parent for p in AGENTS.rglob(RESULTS)) if AGENTS.exists() else []


@pytest.mark.parametrize("agent", SHIPPED, ids=lambda p: str(p.relative_to(AGENTS)))
def test_agent_replays_its_stored_episode(agent):
    """MuJoCo and MinAtar are deterministic given the seed and the policy acts deterministically: exact."""
    expected, replayed = replay_first_episode(agent)
    assert replayed == pytest.approx(expected, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("agent", SHIPPED, ids=lambda p: str(p.relative_to(AGENTS)))
def test_agent_loads_three_ways(agent, capsys):
    results = json.loads((agent / RESULTS).read_text())
    exported = load_exported(agent / "export")
    model, run, _ = load_agent(agent)  # SB3's Algo.load on the shipped zip
    assert run.name == results["name"]
    observation = model.observation_space.sample()
    if "obs_normalization" not in exported.config:  # with VecNormalize the SB3 model reads normalised observations
        np.testing.assert_allclose(exported.predict(observation)[0], model.predict(observation, deterministic=True)[0],
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="deterministic=False"):  # it acted deterministically without a word
        exported.predict(observation, deterministic=False)
    assert enjoy_main([str(agent), "--episodes", "1", "-n", "50"]) == 0  # the replay command on the agent folder
    assert "-n 50: stopped after 50 steps with 0 of 1 episodes finished" in capsys.readouterr().out  # said "0" only


@pytest.mark.parametrize("agent", [a for a in SHIPPED if json.loads((a / RESULTS).read_text())["sb3_zip"]],
                         ids=lambda p: str(p.relative_to(AGENTS)))
def test_rl_zoo_enjoy_replays_the_agent(agent):
    """The third way: RL Zoo's own enjoy, through the agent's ``<algo>`` link, reproduces the stored first episode."""
    import gymnasium as gym

    results = json.loads((agent / RESULTS).read_text())
    steps = gym.spec(results["env"]).max_episode_steps or 10_000  # enough for the first episode
    command = [sys.executable, "-m", "rl_zoo3.enjoy", "--algo", results["algo"], "--env", results["env"], "-f", str(agent),
               "--exp-id", "-1", "--gym-packages", "sparse_rl.sb3", "--no-render", "--deterministic",
               "--seed", str(results["evaluation"]["seed"]), "-n", str(steps)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    first = next(line for line in out.stdout.splitlines() if line.startswith("Episode Reward:"))
    assert float(first.split(":")[1]) == pytest.approx(results["evaluation"]["episode_returns"][0], abs=0.01)


@pytest.mark.skipif(not (AGENTS / "dqn/MinAtar-Breakout-v1/rigl90").is_dir(), reason="agent not shipped")
def test_enjoy_on_an_agent_folder_reproduces_its_stored_returns_by_default(capsys):
    """enjoy seeded the env with 0 whatever the agent stored, so a user's replay never matched results.json."""
    agent = AGENTS / "dqn/MinAtar-Breakout-v1/rigl90"
    assert enjoy_main([str(agent), "--episodes", "2"]) == 0
    out = capsys.readouterr().out
    seed = json.loads((agent / RESULTS).read_text())["evaluation"]["seed"]
    assert f"seed: {seed} (the agent's stored evaluation seed)" in out and "first 2 episodes" in out
    assert "(reproduced)" in out
    # more episodes than stored: the stored ones are compared (this crashed after the replay)
    assert enjoy_main([str(agent), "--episodes", "11"]) == 0
    assert "first 10 episodes" in capsys.readouterr().out


@pytest.mark.skipif(not (AGENTS / "dqn/MinAtar-Breakout-v1/rigl90").is_dir(), reason="agent not shipped")
def test_enjoy_says_when_it_does_not_compare_and_fails_when_returns_differ(tmp_path, capsys):
    """--seed 1 and --stochastic skipped the comparison without a word; a mismatch printed NOT reproduced and exited 0;
    --episodes 0 and --video-size without --video were accepted."""
    agent = AGENTS / "dqn/MinAtar-Breakout-v1/rigl90"
    for argv, message in ((["--episodes", "0"], "error: --episodes 0: give 1 or more"),
                          (["--video-size", "64"], "error: --video-size 64: it sizes a video: add --video PATH")):
        assert enjoy_main([str(agent), *argv]) == 2
        assert capsys.readouterr().err == message + "\n"
    assert enjoy_main([str(agent), "--episodes", "1", "--seed", "1"]) == 0
    assert "results.json not compared: --seed 1, stored seed 20000" in capsys.readouterr().out
    assert enjoy_main([str(agent), "--episodes", "1", "--stochastic"]) == 0
    assert "results.json not compared: --stochastic" in capsys.readouterr().out
    copy = shutil.copytree(agent, tmp_path / "agent", symlinks=True)
    results = json.loads((copy / RESULTS).read_text())
    results["evaluation"]["episode_returns"][0] += 1
    (copy / RESULTS).write_text(json.dumps(results))
    assert enjoy_main([str(copy), "--episodes", "1"]) == 1
    assert "(NOT reproduced)" in capsys.readouterr().out


@pytest.mark.skipif(not (AGENTS / "dqn/MinAtar-Breakout-v1/rigl90").is_dir(), reason="agent not shipped")
def test_a_video_replay_plays_the_same_episodes(tmp_path, capsys):
    """The video writer's first frame used up the seeded reset: episodes with --video differed from those without."""
    agent = AGENTS / "dqn/MinAtar-Breakout-v1/rigl90"
    assert enjoy_main([str(agent), "--episodes", "3", "--video", str(tmp_path / "a.mp4")]) == 0
    out = capsys.readouterr().out
    assert "(reproduced)" in out and (tmp_path / "a.mp4").stat().st_size > 0


@pytest.mark.parametrize("agent", SHIPPED, ids=lambda p: str(p.relative_to(AGENTS)))
def test_agent_ships_its_resolved_settings_and_command(agent):
    """The SAC dense agent predated resolved.yml and shipped without it (the issue asks for the resolved config)."""
    results = json.loads((agent / RESULTS).read_text())
    folder = RunFolder(agent, results["env"])
    resolved = folder.read_resolved()
    assert resolved, f"{folder.params_dir / 'resolved.yml'} missing"
    assert yaml_plain(saved_hyperparams(folder.read_config())) == resolved["hyperparams"]  # the same settings
    command = (agent / "command.txt").read_text().strip()
    assert f"--seed {results['seed']}" in command
    assert shlex.join(shlex.split(command)) == command, "command.txt does not run as written"


def test_an_unquoted_command_is_requoted_from_args_yml(tmp_path):
    """The sparse-wide agent's command.txt (written before commands were quoted) ended in an unquoted
    ``-params policy_kwargs:dict(net_arch=[816, 816])``: bash refused it ("syntax error near unexpected token")."""
    source = AGENTS / "sac/HalfCheetah-v4/rigl90-wide816"
    if not source.is_dir():
        pytest.skip("the sparse-wide agent is not in this checkout")
    agent = tmp_path / "agent"
    shutil.copytree(source, agent, symlinks=True)
    tokens = shlex.split((agent / "command.txt").read_text())
    old = " ".join(tokens)  # how the code of that time wrote it
    (agent / "command.txt").write_text(old + "\n")
    assert "re-quoted" in requote_command(RunFolder(agent, "HalfCheetah-v4"))
    assert shlex.split((agent / "command.txt").read_text()) == tokens
    assert tokens[-2:] == ["-params", "policy_kwargs:dict(net_arch=[816, 816])"]
    assert requote_command(RunFolder(agent, "HalfCheetah-v4")) is None  # runs as written now: left alone
    (agent / "command.txt").write_text(old.replace("816, 816", "816,  816") + "\n")  # not args.yml's items
    assert "not re-quoted" in requote_command(RunFolder(agent, "HalfCheetah-v4"))
    (agent / "command.txt").write_text(old.replace("--seed 0", "--seed 0 -f /tmp/a(1)") + "\n")  # not a key:value item
    assert "not re-quoted" in requote_command(RunFolder(agent, "HalfCheetah-v4"))


def test_resolved_settings_are_reconstructed_only_when_they_match_the_run(tmp_path):
    source = AGENTS / "sac/HalfCheetah-v4/dense/HalfCheetah-v4"
    if not source.is_dir():
        pytest.skip("agent not shipped")
    params = tmp_path / "HalfCheetah-v4"
    params.mkdir()
    for name in ("args.yml", "config.yml"):
        shutil.copy2(source / name, params / name)
    folder = RunFolder(tmp_path, "HalfCheetah-v4")
    config = (params / "config.yml").read_text()
    (params / "config.yml").write_text(config.replace("10000", "20000"))  # learning_starts the run did not train with
    assert "not reconstructed" in complete_resolved(folder) and "learning_starts" in complete_resolved(folder)
    assert not (params / "resolved.yml").exists()
    (params / "config.yml").write_text(config)
    assert "reconstructed" in complete_resolved(folder)
    assert folder.read_resolved()["hyperparams"]["learning_starts"] == 10000
    assert "reconstructed when packaged" in folder.read_resolved()["notes"][-1]
    assert complete_resolved(folder) is None  # a folder with the file is left alone


@pytest.mark.parametrize("agent", SHIPPED, ids=lambda p: str(p.relative_to(AGENTS)))
def test_an_agent_copies_with_plain_copytree(agent, tmp_path):
    """The RL Zoo link was ``<algo> -> .``: the folder contained itself, and shutil.copytree (following links, its
    default) copied dqn/dqn/dqn/... until it failed."""
    copy = shutil.copytree(agent, tmp_path / "copy")
    assert sum(1 for _ in copy.rglob("*.zip")) <= 2  # the zip and, in <algo>/, RL Zoo's copy of it
    assert load_agent(copy)[1].name == json.loads((agent / RESULTS).read_text())["name"]


def test_a_damaged_agent_gives_one_clear_line(tmp_path, capsys):
    if not SHIPPED:
        pytest.skip("no agent shipped yet")
    agent = tmp_path / "agent"
    shutil.copytree(SHIPPED[0], agent, symlinks=True)
    model = next(agent.glob("*.zip"))
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # truncated
    assert enjoy_main([str(agent), "--episodes", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "cannot be loaded" in err and err.count("\n") == 1
    tensors = agent / "export" / "policy.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:100])
    with pytest.raises(ValueError, match="cannot be read") as error:
        load_exported(agent / "export")
    assert "\n" not in str(error.value)
    (agent / RESULTS).write_text("{not json")
    with pytest.raises(ValueError, match="unreadable"):
        replay_first_episode(agent)
    assert enjoy_main([str(agent / "missing"), "--episodes", "1"]) == 2  # said it was not written by train
    err = capsys.readouterr().err
    assert err.startswith("error: run_dir") and "no such folder" in err and err.count("\n") == 1
    assert enjoy_main([str(agent), "--episodes", "1"]) == 2  # not a silent fallback to seed 0
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "unreadable" in err and err.count("\n") == 1
    model.unlink()  # an agent has no best_model.zip: the hint sent users to --best, then to "train first"
    with pytest.raises(ValueError, match="not found: the agent folder is incomplete: check it out again; its export "
                                         "loads without SB3") as error:
        load_agent(agent)
    assert "--best" not in str(error.value)
    shutil.copy2(SHIPPED[0] / RESULTS, agent / RESULTS)
    (agent / "run.json").write_text("{")  # the error named neither the file nor the problem
    assert enjoy_main([str(agent), "--episodes", "1", "--seed", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {agent / 'run.json'} is unreadable") and err.count("\n") == 1
    # train's -f folder given instead of the run folder inside it: "not written by train" was wrong
    logs = tmp_path / "logs"
    shutil.copytree(agent, logs / "sac" / "HalfCheetah-v4_1", symlinks=True)
    (logs / "sac" / "HalfCheetah-v4_1" / "run.json").write_text("{}")
    assert enjoy_main([str(logs), "--episodes", "1", "--seed", "0"]) == 2
    assert f"is a log folder, not a run folder: its runs are {logs / 'sac' / 'HalfCheetah-v4_1'}" in capsys.readouterr().err


@pytest.mark.skipif(not (AGENTS / "sac/HalfCheetah-v4/rigl90").is_dir(), reason="agent not shipped")
def test_the_acting_profile_times_every_layer_acting_runs(tmp_path):
    """scripts/profile_acting.py: each weight layer the actor runs is timed on its own input, dense and sparse."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "profile_acting.py"
    out = tmp_path / "profile"
    done = subprocess.run([sys.executable, str(script), "--pairs", "sac/HalfCheetah-v4/dense:sac/HalfCheetah-v4/rigl90",
                           "--rounds", "1", "--calls", "3", "--out", str(out)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(Path(f"{out}.json").read_text())["results"][0]["rows"]
    assert [r["part"] for r in rows] == ["predict", "policy forward", "actor.latent_pi.0", "actor.latent_pi.2",
                                         "actor.mu", "actor.log_std", "policy forward, dense layer stacks",
                                         "policy forward, dense layers in the fused container"]
    assert "SparseLinear 256x256" in rows[3]["sparse"] and rows[3]["dense"] == "Linear 256x256"
    assert all(r["dense_us"] > 0 and r["sparse_us"] > 0 for r in rows)


@pytest.mark.skipif(not (AGENTS / "sac/HalfCheetah-v4/rigl90").is_dir(), reason="agent not shipped")
def test_a_mujoco_video_follows_the_agent_at_the_envs_frame_rate(tmp_path, capsys):
    """The default camera stayed put: the cheetah left the frame after ~1 s and 97 % of the video was an empty floor;
    and the video played at 30 fps where HalfCheetah renders at 20."""
    import cv2

    video = tmp_path / "cheetah.mp4"
    assert enjoy_main([str(AGENTS / "sac/HalfCheetah-v4/rigl90"), "--episodes", "1", "-n", "300", "--video", str(video),
                       "--video-size", "64"]) == 0
    capsys.readouterr()
    capture = cv2.VideoCapture(str(video))
    assert capture.get(cv2.CAP_PROP_FPS) == 20
    frames = []
    ok, frame = capture.read()
    while ok:
        frames.append(frame.astype(np.int16))
        ok, frame = capture.read()
    assert len(frames) == 300
    still = sum(int(np.abs(b - a).max() == 0) for a, b in zip(frames[200:], frames[201:]))
    assert still < 10, f"{still} of the last 99 frames are identical to the one before: the agent left the frame"


@pytest.mark.skipif(not (AGENTS / "ppo/HalfCheetah-v4/dense").is_dir() or not (AGENTS / "sac/HalfCheetah-v4").is_dir(),
                    reason="agents not shipped")
def test_evaluate_on_the_agents_says_the_algorithms_have_different_references(tmp_path, capsys):
    """PPO (reference 5819) and SAC (9535) HalfCheetah agents were normalised side by side without a word."""
    from sparse_rl.evaluate import main as evaluate_main

    assert evaluate_main(["--suite", "mujoco", "--runs", str(AGENTS), "-o", str(tmp_path / "eval"), "--episodes", "1",
                          "--max-episode-steps", "20", "--latency-steps", "0", "--no-plots"]) == 0
    notes = json.loads((tmp_path / "eval" / "results.json").read_text())["notes"]
    assert any("each algorithm is normalised against its own reference" in note and "ppo" in note and "sac" in note
               for note in notes)
    capsys.readouterr()


@pytest.mark.skipif(not (AGENTS / "dqn/MinAtar-Breakout-v1").is_dir(), reason="agents not shipped")
def test_evaluate_on_the_agents_uses_their_seed_and_compares_their_returns(tmp_path, capsys):
    """evaluate seeded the agents' envs with 0 and said nothing about results.json (dense 8.8 vs stored 9.4)."""
    from sparse_rl.evaluate import main as evaluate_main

    common = ["--suite", "minatar", "--runs", str(AGENTS / "dqn"), "--episodes", "2", "--latency-steps", "0",
              "--no-plots"]
    assert evaluate_main([*common, "-o", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "env seed 20000: the agents' stored evaluation seed" in out
    assert out.count("(reproduced)") == len(list((AGENTS / "dqn").rglob(RESULTS))) and "NOT" not in out
    assert evaluate_main([*common, "-o", str(tmp_path / "b"), "--seed", "0"]) == 0
    assert "results.json not compared (evaluated otherwise than it was packaged" in capsys.readouterr().out


@pytest.mark.skipif(not (AGENTS / "dqn/MinAtar-Breakout-v1/dense").is_dir(), reason="agent not shipped")
def test_a_minatar_agent_with_sb3_alone_as_agents_readme_says():
    """agents/README.md's SB3-alone recipe for MinAtar (the registration and the 10,000-step cut were not said)."""
    import gymnasium as gym
    from stable_baselines3 import DQN

    import sparse_rl.sb3  # noqa: F401  (registers MinAtar/...)

    agent = AGENTS / "dqn/MinAtar-Breakout-v1/dense"
    assert "gym.make(\"MinAtar/Breakout-v1\", max_episode_steps=10000)" in (AGENTS / "README.md").read_text()
    model = DQN.load(agent / "MinAtar-Breakout-v1.zip", device="cpu")
    env = gym.make("MinAtar/Breakout-v1", max_episode_steps=10000)
    obs, _ = env.reset(seed=20000)
    total, done = 0.0, False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(model.predict(obs, deterministic=True)[0])
        total, done = total + float(reward), terminated or truncated
    assert total == json.loads((agent / RESULTS).read_text())["evaluation"]["episode_returns"][0]


def test_the_readme_agents_table_is_the_generated_one():
    """The README's copy of agents/README.md's table (regenerated by `python scripts/package_agents.py --table-only`)."""
    if not SHIPPED:
        pytest.skip("no agent shipped yet")
    assert table(AGENTS) in (AGENTS.parent / "README.md").read_text()
