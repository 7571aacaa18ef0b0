"""Replaying a trained agent headless (``python -m sparse_rl.enjoy``), optionally writing an MP4 video.

Uses the run's own settings (Atari wrappers, frame stack, VecNormalize statistics) through
:func:`sparse_rl.harness.envs.evaluation_env`, full episodes and unclipped rewards, and the episode loop of
:func:`sparse_rl.harness.evaluation.play`. MuJoCo renders headless through EGL (``MUJOCO_GL=egl`` unless set).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from sparse_rl.harness.envs import evaluation_env
from sparse_rl.harness.evaluation import play
from sparse_rl.harness.runs import RunFolder, load_agent, saved_hyperparams

#: frames whose shorter side is below TINY_FRAME pixels (MinAtar: 10) are scaled up by a whole factor to at least
#: MIN_VIDEO_SIDE; larger frames (and --video-size) are written as rendered
TINY_FRAME, MIN_VIDEO_SIDE = 64, 160
TRACKING_CAMERA = "track"  # the camera of the MuJoCo locomotion models that follows the body


def replay(run_dir: Path, episodes: int = 3, best: bool = False, video: str | None = None, seed: int = 0,
           deterministic: bool = True, max_steps: int | None = None, video_size: int | None = None) -> list[float]:
    """Play ``episodes`` full episodes (at most ``max_steps`` steps in all); returns the returns of finished episodes.

    Writes ``video`` as MP4 when given (``video_size``: frame width and height for MuJoCo envs).
    """
    if video:
        os.environ.setdefault("MUJOCO_GL", "egl")
    model, run, config = load_agent(Path(run_dir), best)
    env_kwargs = {"render_mode": "rgb_array"} if video else None
    if video and "mujoco" in str(gym.registry[run.env].entry_point):
        if video_size:
            env_kwargs.update(width=video_size, height=video_size)
        if _has_camera(run.env, TRACKING_CAMERA):  # the default camera stays put: a running agent leaves the frame
            env_kwargs.update(camera_name=TRACKING_CAMERA)
    hyperparams = saved_hyperparams(config)  # env_kwargs: a mapping, or a string (older runs)
    env = evaluation_env(run.env, hyperparams, seed, RunFolder(run_dir, run.env).statistics_path(best),
                         env_kwargs={**(hyperparams.get("env_kwargs") or {}), **(env_kwargs or {})} or None)
    writer: _Video | None = None

    def record(venv: Any) -> None:
        writer.write(venv.render())

    try:
        writer = _Video(video, env, seed) if video else None
        return play(model, env, episodes, deterministic, seed=seed, max_total_steps=max_steps,
                    on_step=record if writer is not None else None)
    finally:
        if writer is not None:
            writer.release()
        env.close()


def _has_camera(env_id: str, name: str) -> bool:
    """Whether a MuJoCo env's model has a camera called ``name`` (HalfCheetah, Hopper, Walker2d, Ant: ``track``)."""
    env = gym.make(env_id)
    try:
        model = env.unwrapped.model  # type: ignore[attr-defined]
        return name in (model.camera(i).name for i in range(model.ncam))
    finally:
        env.close()


def check_video_path(path: str) -> None:
    """:raises ValueError: for a path that is not ``.mp4`` (OpenCV would print its FFmpeg errors before failing)"""
    if Path(path).suffix.lower() != ".mp4":
        raise ValueError(f"--video {path}: videos are written as MP4 (mp4v codec); give a .mp4 path")


class _Video:
    """An MP4 file written through OpenCV (``mp4v``): frames as 8-bit BGR, tiny frames (MinAtar renders 10 x 10 floats
    in [0, 1]) scaled up by a whole factor to at least :data:`MIN_VIDEO_SIDE` pixels, pixels kept square and sharp.

    :raises ValueError: when the env cannot render rgb frames, or OpenCV cannot write ``path`` (e.g. a ``.gif``)
    """

    def __init__(self, path: str, env: Any, seed: int) -> None:
        import cv2

        check_video_path(path)
        env.reset()  # a first frame, for the size; it uses up the seeded reset, so the env is seeded again below
        env.seed(seed)
        try:
            with warnings.catch_warnings():  # gymnasium's checker on MinAtar's float frames without render_fps: the
                warnings.filterwarnings("ignore", message=".*(render fps|dtype uint8)")  # writer handles both (30 fps)
                frame = env.render()
        except (ImportError, gym.error.DependencyNotInstalled) as error:  # e.g. pygame for classic control
            raise ValueError(f"this environment cannot render here: {error}") from None
        if frame is None:
            raise ValueError("this environment cannot render rgb frames here, so no video can be written")
        side = min(frame.shape[:2])
        self.scale = -(-MIN_VIDEO_SIDE // side) if side < TINY_FRAME else 1
        height, width = frame.shape[0] * self.scale, frame.shape[1] * self.scale
        target = Path(path)
        existed = target.exists()
        target.parent.mkdir(parents=True, exist_ok=True)
        fps = env.get_attr("metadata")[0].get("render_fps") or 30  # the env's own (HalfCheetah: 20), not the VecEnv's
        self.writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        if not self.writer.isOpened():
            if target.exists() and not existed:
                target.unlink()
            raise ValueError(f"--video {path}: OpenCV cannot write this file with the mp4v codec; give a .mp4 path")

    def write(self, frame: np.ndarray) -> None:
        frame = np.asarray(frame)
        if frame.dtype != np.uint8:  # float frames: [0, 1] (MinAtar) or [0, 255]
            top = 1.0 if frame.size and float(frame.max()) <= 1.0 else 255.0
            frame = np.clip(np.rint(frame * (255.0 / top)), 0, 255).astype(np.uint8)
        if self.scale > 1:
            frame = frame.repeat(self.scale, axis=0).repeat(self.scale, axis=1)
        self.writer.write(np.ascontiguousarray(frame[..., ::-1]))

    def release(self) -> None:
        self.writer.release()
