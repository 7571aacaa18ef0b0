"""Environments the standard way: Atari through SB3's AtariWrapper + frame stack, others through ``make_vec_env``;
the config's wrappers, Monitor options and VecNormalize as RL Zoo applies them.

Atari ids (``ALE/Pong-v5``, ``PongNoFrameskip-v4``) get the Nature-DQN preprocessing: noop starts, frame skip 4,
episodic life and reward clipping for training, 84x84 grey frames, a stack of 4. For ``ALE/*-v5`` ids the ALE's own
frame skip is set to 1 so that the wrapper's skip gives the standard 4 (sticky actions stay as the env defines them).
An ``env_wrapper`` entry naming SB3's ``AtariWrapper`` sets that wrapper's arguments instead of wrapping twice.

Evaluation environments (:func:`evaluation_env`, the one builder every command uses) play full episodes with
unclipped rewards; with VecNormalize they use the training statistics, frozen, and raw rewards.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym

from sparse_rl.harness.hyperparams import class_specs, normalizes
from sparse_rl.sb3.minatar import register_minatar_envs

ATARI_WRAPPER = "stable_baselines3.common.atari_wrappers.AtariWrapper"
EVAL_SEED_OFFSET = 10_000


def register_optional_envs() -> None:
    """Register the ALE and MinAtar environments when their packages are installed (MuJoCo ships with gymnasium)."""
    try:
        gym.register_envs(importlib.import_module("ale_py"))
    except ImportError:
        pass
    register_minatar_envs()


def is_atari(env_id: str) -> bool:
    """Whether ``env_id`` names an Atari game (ALE namespace or a ``NoFrameskip`` id)."""
    if env_id.startswith("ALE/") or "NoFrameskip" in env_id:
        return True
    spec = gym.registry.get(env_id)
    return spec is not None and "ale_py" in str(spec.entry_point)


def check_env_id(env_id: str) -> None:
    """Raise a ``ValueError`` naming close matches when ``env_id`` is not registered."""
    if env_id not in gym.registry:
        register_optional_envs()
    if env_id in gym.registry:
        return
    close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    atari = "ALE" in env_id or "NoFrameskip" in env_id
    extra = " Atari ids need the atari extra (pip install 'sparse_rl[atari]')." if atari else ""
    extra += " MinAtar ids need the minatar extra (pip install 'sparse_rl[minatar]')." if "MinAtar" in env_id else ""
    raise ValueError(f"unknown environment id {env_id!r}.{hint}{extra}")


def env_name(env_id: str) -> str:
    """An env id as a folder name (``ALE/Pong-v5`` -> ``ALE-Pong-v5``), as RL Zoo names its run folders."""
    return env_id.replace("/", "-").replace(":", "-")


def _wrapper_chain(specs: list[tuple[Any, dict[str, Any]]]) -> Callable[[gym.Env], gym.Env] | None:
    if not specs:
        return None

    def wrap(env: gym.Env) -> gym.Env:
        for cls, kwargs in specs:
            env = cls(env, **kwargs)
        return env

    return wrap


def make_env(
    env_id: str,
    n_envs: int = 1,
    seed: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
    frame_stack: int | None = None,
    for_evaluation: bool = False,
    monitor_dir: str | None = None,
    monitor_kwargs: dict[str, Any] | None = None,
    env_wrapper: Any = None,
    vec_env_wrapper: Any = None,
    record_episodes: bool = False,
) -> Any:
    """A ``VecEnv`` for ``env_id``: Atari preprocessing for Atari ids, ``make_vec_env`` (DummyVecEnv) otherwise.

    :param frame_stack: stack this many frames (``VecFrameStack``; Atari default 4)
    :param for_evaluation: keep full episodes and unclipped rewards (no episodic life, no reward clipping)
    :param monitor_dir: where the Monitor wrappers write ``<i>.monitor.csv`` (RL Zoo's training curves), or None
    :param monitor_kwargs: passed to SB3's ``Monitor`` (``override_existing=False`` appends to existing files)
    :param env_wrapper: RL Zoo's ``env_wrapper`` (class names, ``{name: kwargs}`` or a list), applied to each env
    :param vec_env_wrapper: RL Zoo's ``vec_env_wrapper``, applied to the VecEnv
    :param record_episodes: wrap each env last in :class:`~sparse_rl.sb3.env_state.EpisodeRecorder` (training envs:
        a checkpoint can then restore their episodes exactly)
    """
    from stable_baselines3.common.atari_wrappers import AtariWrapper
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecFrameStack

    check_env_id(env_id)
    env_kwargs = dict(env_kwargs or {})
    wrappers = class_specs(env_wrapper, "env_wrapper")
    if is_atari(env_id):
        atari_kwargs = {}
        for cls, kwargs in wrappers:
            if cls is AtariWrapper:
                atari_kwargs.update(kwargs)
        wrappers = [(cls, kw) for cls, kw in wrappers if cls is not AtariWrapper]
        if for_evaluation:
            atari_kwargs.update(terminal_on_life_loss=False, clip_reward=False)
        wrappers.insert(0, (AtariWrapper, atari_kwargs))
        if env_id.startswith("ALE/"):
            env_kwargs.setdefault("frameskip", 1)
        frame_stack = frame_stack or 4
    else:  # the Atari preprocessing is for Atari ids only (an Atari run evaluated elsewhere fails on its spaces)
        wrappers = [(cls, kw) for cls, kw in wrappers if cls is not AtariWrapper]
    if record_episodes:
        from sparse_rl.sb3.env_state import EpisodeRecorder

        wrappers.append((EpisodeRecorder, {}))
    venv = make_vec_env(env_id, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs, monitor_dir=monitor_dir,
                        monitor_kwargs=monitor_kwargs, wrapper_class=_wrapper_chain(wrappers))
    if frame_stack:
        venv = VecFrameStack(venv, n_stack=int(frame_stack))
    for cls, kwargs in class_specs(vec_env_wrapper, "vec_env_wrapper"):
        venv = cls(venv, **kwargs)
    return venv


def training_env(env_id: str, hyperparams: Mapping[str, Any], seed: int, monitor_dir: Path | None = None,
                 monitor_t_start: float | None = None, env_kwargs: dict[str, Any] | None = None) -> Any:
    """The training VecEnv of a run: ``n_envs`` copies, the config's wrappers, VecNormalize with the resolved arguments.

    :param hyperparams: resolved hyperparameters (``normalize`` holds the VecNormalize arguments or ``False``)
    :param monitor_t_start: continue the Monitor CSVs in ``monitor_dir`` (append, on the clock of their ``t_start``)
    """
    monitor_kwargs = dict(hyperparams.get("monitor_kwargs") or {})
    if monitor_t_start is not None:
        monitor_kwargs["override_existing"] = False
    env = make_env(env_id, n_envs=int(hyperparams.get("n_envs", 1)), seed=seed,
                   env_kwargs=env_kwargs or hyperparams.get("env_kwargs"), frame_stack=hyperparams.get("frame_stack"),
                   monitor_dir=str(monitor_dir) if monitor_dir is not None else None,
                   monitor_kwargs=monitor_kwargs or None, env_wrapper=hyperparams.get("env_wrapper"),
                   vec_env_wrapper=hyperparams.get("vec_env_wrapper"), record_episodes=True)
    if monitor_t_start is not None:
        _set_monitor_start(env, monitor_t_start)
    normalize = hyperparams.get("normalize")
    if normalizes(normalize):
        from stable_baselines3.common.vec_env import VecNormalize

        env = VecNormalize(env, **dict(normalize))
    return env


def evaluation_env(env_id: str, hyperparams: Mapping[str, Any], seed: int, vecnormalize_path: Path | None = None,
                   env_kwargs: dict[str, Any] | None = None) -> Any:
    """The evaluation VecEnv of a run: one env, full episodes, unclipped rewards, frozen observation statistics,
    channels-last images transposed as SB3 transposes the training env's.

    :param vecnormalize_path: the run's saved ``vecnormalize.pkl``, loaded when present (an error when the run
        normalises and it is missing); ``None`` during training: a fresh VecNormalize with the config's arguments,
        whose statistics ``EvalCallback`` copies from the training env before each evaluation
    """
    from stable_baselines3.common.vec_env import VecNormalize

    env = make_env(env_id, n_envs=1, seed=seed, env_kwargs=env_kwargs or hyperparams.get("env_kwargs"),
                   frame_stack=hyperparams.get("frame_stack"), for_evaluation=True,
                   env_wrapper=hyperparams.get("env_wrapper"), vec_env_wrapper=hyperparams.get("vec_env_wrapper"))
    if vecnormalize_path is not None and Path(vecnormalize_path).is_file():
        env = VecNormalize.load(str(vecnormalize_path), env)
    elif vecnormalize_path is not None and normalizes(hyperparams.get("normalize")):
        raise ValueError(f"the run normalises observations, but its statistics {str(vecnormalize_path)!r} are missing")
    elif normalizes(hyperparams.get("normalize")):
        env = VecNormalize(env, **dict(hyperparams["normalize"]))
    if isinstance(env, VecNormalize):
        env.training, env.norm_reward = False, False
    from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first
    from stable_baselines3.common.vec_env import VecTransposeImage

    space = env.observation_space
    if is_image_space(space) and not is_image_space_channels_first(space):
        env = VecTransposeImage(env)  # as SB3 wraps the training env (RL Zoo too): the same type, no SB3 warning
    return env


def _set_monitor_start(venv: Any, t_start: float) -> None:
    """Put every Monitor wrapper of ``venv`` on the clock ``t_start`` (rows appended to a resumed run's CSVs)."""
    from stable_baselines3.common.monitor import Monitor

    while hasattr(venv, "venv"):
        venv = venv.venv
    for env in getattr(venv, "envs", []):
        while env is not None and not isinstance(env, Monitor):
            env = getattr(env, "env", None)
        if env is not None:
            env.t_start = t_start


def check_action_space(algo: str, env_id: str, env_kwargs: Mapping[str, Any] | None = None) -> None:
    """A clear error when the env rejects ``env_kwargs`` or the algorithm cannot handle its action space (checked
    before any file is written)."""
    from gymnasium import spaces

    check_env_id(env_id)
    try:
        probe = gym.make(env_id, **dict(env_kwargs or {}))
    except TypeError as error:
        raise ValueError(f"env_kwargs {dict(env_kwargs or {})} are not accepted by {env_id}: "
                         f"{str(error).splitlines()[0]}") from None
    except gym.error.DependencyNotInstalled as error:  # e.g. Box2D for LunarLander
        raise ValueError(f"{env_id} cannot be built here: {str(error).splitlines()[0]}") from None
    space = probe.action_space
    probe.close()
    if algo in ("dqn", "qrdqn", "ppo_mask") and not isinstance(space, spaces.Discrete):
        raise ValueError(f"--algo {algo} needs a discrete action space, but this env's is {space}: use --algo sac, td3, "
                         "tqc, crossq or ppo")
    if algo in ("sac", "td3", "tqc", "crossq") and not isinstance(space, spaces.Box):
        raise ValueError(f"--algo {algo} needs a continuous (Box) action space, but this env's is {space}: use --algo "
                         "dqn, qrdqn, ppo or ppo_mask")
