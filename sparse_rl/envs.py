"""Building environments the standard way: Atari through SB3's AtariWrapper + frame stack, others through make_vec_env.

Atari ids (``ALE/Pong-v5``, ``PongNoFrameskip-v4``) get the Nature-DQN preprocessing: noop starts, frame skip 4,
episodic life and reward clipping for training, 84x84 grey frames, a stack of 4. For ``ALE/*-v5`` ids the ALE's own
frame skip is set to 1 so that the wrapper's skip gives the standard 4 (sticky actions stay as the env defines them).
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

import gymnasium as gym


def register_optional_envs() -> None:
    """Register the ALE environments when ale-py is installed (MuJoCo envs ship with gymnasium)."""
    try:
        ale_py = importlib.import_module("ale_py")
    except ImportError:
        return
    gym.register_envs(ale_py)


def is_atari(env_id: str) -> bool:
    """Whether ``env_id`` names an Atari game (ALE namespace or a ``NoFrameskip`` id)."""
    if env_id.startswith("ALE/") or "NoFrameskip" in env_id:
        return True
    spec = gym.registry.get(env_id)
    return spec is not None and "ale_py" in str(spec.entry_point)


def check_env_id(env_id: str) -> None:
    """Raise a ``ValueError`` naming close matches when ``env_id`` is not registered."""
    register_optional_envs()
    if env_id in gym.registry:
        return
    close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    atari = "ALE" in env_id or "NoFrameskip" in env_id
    extra = " Atari ids need the atari extra (pip install 'sparse_rl[atari]')." if atari else ""
    raise ValueError(f"unknown environment id {env_id!r}.{hint}{extra}")


def make_env(
    env_id: str,
    n_envs: int = 1,
    seed: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
    frame_stack: int | None = None,
    atari_wrapper_kwargs: dict[str, Any] | None = None,
    for_evaluation: bool = False,
    monitor_dir: str | None = None,
    monitor_kwargs: dict[str, Any] | None = None,
) -> Any:
    """A ``VecEnv`` for ``env_id``: Atari preprocessing for Atari ids, ``make_vec_env`` (DummyVecEnv) otherwise.

    :param for_evaluation: keep full episodes and unclipped rewards (no episodic life, no reward clipping)
    :param monitor_dir: where the Monitor wrappers write ``<i>.monitor.csv`` (RL Zoo's training curves), or None
    :param monitor_kwargs: passed to SB3's ``Monitor`` (``override_existing=False`` appends to existing files)
    """
    from stable_baselines3.common.env_util import make_atari_env, make_vec_env
    from stable_baselines3.common.vec_env import VecFrameStack

    check_env_id(env_id)
    env_kwargs = dict(env_kwargs or {})
    if not is_atari(env_id):
        return make_vec_env(env_id, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs, monitor_dir=monitor_dir,
                            monitor_kwargs=monitor_kwargs)
    if env_id.startswith("ALE/"):
        env_kwargs.setdefault("frameskip", 1)
    wrapper_kwargs = dict(atari_wrapper_kwargs or {})
    if for_evaluation:
        wrapper_kwargs.update(terminal_on_life_loss=False, clip_reward=False)
    venv = make_atari_env(env_id, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs, wrapper_kwargs=wrapper_kwargs,
                          monitor_dir=monitor_dir, monitor_kwargs=monitor_kwargs)
    return VecFrameStack(venv, n_stack=frame_stack or 4)
