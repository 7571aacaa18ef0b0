"""``python -m sparse_rl.enjoy RUN_DIR``: replay a trained agent headless, optionally writing a video.

Example::

    python -m sparse_rl.enjoy logs/sac/HalfCheetah-v4_1 --episodes 3 --video cheetah.mp4

Uses the run's own settings (Atari wrappers, frame stack, VecNormalize statistics) with full episodes and unclipped
rewards. MuJoCo renders headless through EGL (``MUJOCO_GL=egl`` unless set).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from sparse_rl.harness.envs import evaluation_env
from sparse_rl.harness.runs import RunFolder, load_agent, saved_hyperparams

__all__ = ["load_agent", "replay"]


def replay(run_dir: Path, episodes: int = 3, best: bool = False, video: str | None = None, seed: int = 0,
           deterministic: bool = True, max_steps: int | None = None, video_size: int | None = None) -> list[float]:
    """Play ``episodes`` full episodes (at most ``max_steps`` steps); returns the returns of finished episodes.

    Writes ``video`` as MP4 when given (``video_size``: frame width and height for MuJoCo envs).
    """
    if video:
        os.environ.setdefault("MUJOCO_GL", "egl")
    model, run, config = load_agent(Path(run_dir), best)
    env_kwargs = {"render_mode": "rgb_array"} if video else None
    if video and video_size and "mujoco" in str(gym.registry[run.env].entry_point):
        env_kwargs.update(width=video_size, height=video_size)
    env = evaluation_env(run.env, saved_hyperparams(config), seed, RunFolder(run_dir, run.env).vecnormalize_path,
                         env_kwargs={**(config.get("env_kwargs") or {}), **(env_kwargs or {})} or None)
    writer = _video_writer(video, env) if video else None
    returns, total, obs, steps = [], 0.0, env.reset(), 0
    while len(returns) < episodes and (max_steps is None or steps < max_steps):
        steps += 1
        action, _ = model.predict(obs, deterministic=deterministic)
        obs, reward, done, infos = env.step(action)
        if writer is not None:
            writer.write(np.ascontiguousarray(env.render()[..., ::-1]))
        total += float(reward[0])
        if done[0]:
            episode = infos[0].get("episode")  # Monitor's return: unclipped, full episode
            returns.append(float(episode["r"]) if episode else total)
            total = 0.0
    if writer is not None:
        writer.release()
    env.close()
    return returns


def _video_writer(path: str, env: Any) -> Any:
    import cv2

    env.reset()
    try:
        frame = env.render()
    except (ImportError, gym.error.DependencyNotInstalled) as error:  # e.g. pygame for classic control
        raise ValueError(f"this environment cannot render here: {error}") from None
    if frame is None:
        raise ValueError("this environment cannot render rgb frames here, so no video can be written")
    fps = env.metadata.get("render_fps") or 30
    return cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (frame.shape[1], frame.shape[0]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparse_rl.enjoy", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run folder, e.g. logs/sac/HalfCheetah-v4_1")
    parser.add_argument("--episodes", type=int, default=3)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--best", action="store_true", help="load best_model.zip")
    group.add_argument("--last", action="store_true", help="load the final model (default)")
    parser.add_argument("-n", "--max-steps", type=int, default=None, help="stop after this many steps")
    parser.add_argument("--video", default=None, help="write an MP4 video of the episodes to this path")
    parser.add_argument("--video-size", type=int, default=None, help="frame size of MuJoCo videos (default: the env's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stochastic", action="store_true", help="sample actions instead of deterministic ones")
    args = parser.parse_args(argv)
    try:
        returns = replay(Path(args.run_dir), args.episodes, args.best, args.video, args.seed, not args.stochastic,
                         args.max_steps, args.video_size)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    mean = f"{np.mean(returns):.2f}" if returns else "n/a"
    print(f"returns over {len(returns)} episodes: mean {mean}, each {[round(r, 2) for r in returns]}")
    if args.video:
        print(f"video: {args.video}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
