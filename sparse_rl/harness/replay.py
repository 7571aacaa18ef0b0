"""Replaying a trained agent headless (``python -m sparse_rl.enjoy``), optionally writing an MP4 video.

Uses the run's own settings (Atari wrappers, frame stack, VecNormalize statistics) through
:func:`sparse_rl.harness.envs.evaluation_env`, full episodes and unclipped rewards, and the episode loop of
:func:`sparse_rl.harness.evaluation.play`. MuJoCo renders headless through EGL (``MUJOCO_GL=egl`` unless set).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from sparse_rl.harness.envs import evaluation_env
from sparse_rl.harness.evaluation import play
from sparse_rl.harness.runs import RunFolder, load_agent, saved_hyperparams


def replay(run_dir: Path, episodes: int = 3, best: bool = False, video: str | None = None, seed: int = 0,
           deterministic: bool = True, max_steps: int | None = None, video_size: int | None = None) -> list[float]:
    """Play ``episodes`` full episodes (at most ``max_steps`` steps in all); returns the returns of finished episodes.

    Writes ``video`` as MP4 when given (``video_size``: frame width and height for MuJoCo envs).
    """
    if video:
        os.environ.setdefault("MUJOCO_GL", "egl")
    model, run, config = load_agent(Path(run_dir), best)
    env_kwargs = {"render_mode": "rgb_array"} if video else None
    if video and video_size and "mujoco" in str(gym.registry[run.env].entry_point):
        env_kwargs.update(width=video_size, height=video_size)
    hyperparams = saved_hyperparams(config)  # env_kwargs are saved as an expression string, as RL Zoo saves them
    env = evaluation_env(run.env, hyperparams, seed, RunFolder(run_dir, run.env).vecnormalize_path,
                         env_kwargs={**(hyperparams.get("env_kwargs") or {}), **(env_kwargs or {})} or None)
    writer = _video_writer(video, env) if video else None

    def record(venv: Any) -> None:
        writer.write(np.ascontiguousarray(venv.render()[..., ::-1]))

    try:
        return play(model, env, episodes, deterministic, seed=seed, max_total_steps=max_steps,
                    on_step=record if writer is not None else None)
    finally:
        if writer is not None:
            writer.release()
        env.close()


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
