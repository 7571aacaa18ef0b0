"""Exact resumption of the training environments: each env's current episode is replayed from its start.

A checkpoint cannot pickle a live environment (MuJoCo handles, the Monitor's open file), but the environments trained
here are deterministic given their numpy random generators: an episode is fully determined by the generators' states and
the numbers a ``reset`` leaves from the episode before (MinAtar's last action) at its ``reset``, and by the actions
taken since. :class:`EpisodeRecorder`, the outermost wrapper of each training env, keeps them. A checkpoint stores them with
the state of the VecEnv wrappers (VecNormalize's discounted returns, VecFrameStack's stack); a resume replays every
env's episode through its wrappers (Monitor, TimeLimit, ...) and checks
that the replay ends on the observation the checkpoint recorded, so the resumed run continues the same episodes and
its weights, evaluations and curves equal those of an uninterrupted run (tests/integration/test_resume.py).

Where this cannot hold, the resume starts new episodes, as SB3 and RL Zoo do, and says why in one line: ALE games
(the emulator keeps its own random state and episodic-life resets span episodes), a VecEnv wrapper whose state is
unknown here, environments in subprocesses, or a replay that does not end on the recorded observation.
"""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

GENERATORS = (np.random.Generator, np.random.RandomState)
SCALARS = (bool, int, float, np.number, np.bool_)
#: numbers a reset does not reset, by attribute path from the unwrapped env
CARRIED = ("game.last_action",)
#: VecEnv wrappers without state of their own between steps
STATELESS = ("VecTransposeImage", "VecExtractDictObs", "VecCheckNan")


def _generators(env: gym.Env) -> dict[str, Any]:
    """The numpy generators an environment holds, by attribute path from the unwrapped env, three levels deep
    (Gymnasium's ``_np_random``, its spaces' generators: BitFlippingEnv samples its observation space; MinAtar's
    ``game.random`` and ``game.env.random``); a generator shared by several attributes appears under each path. The
    agent samples a copy of the action space (``train`` gives it one), so env 0's generators are the env's alone."""
    found: dict[str, Any] = {}

    def visit(obj: Any, prefix: str, depth: int) -> None:
        for name, value in sorted(getattr(obj, "__dict__", {}).items()):
            if isinstance(value, GENERATORS):
                found[prefix + name] = value
            elif depth > 0 and hasattr(value, "__dict__") and not isinstance(value, type):
                visit(value, f"{prefix}{name}.", depth - 1)

    visit(env.unwrapped, "", 2)
    return found


def _find(env: gym.Env, path: str) -> tuple[Any, str] | None:
    """The object holding the attribute at ``path`` and its name (``None``: the env has no such part, or the part is
    built at reset and is still ``None`` in a fresh env)."""
    try:
        owner, name = _owner(env, path)
    except AttributeError:
        return None
    return (owner, name) if hasattr(owner, "__dict__") else None


def _scalars(env: gym.Env) -> dict[str, Any]:
    """The numbers a ``reset`` leaves as they are, so that they carry one episode into the next (:data:`CARRIED`:
    MinAtar's ``game.last_action``, which a sticky first action repeats). Only those known: restoring every number of
    an env before its reset made a PPO CartPole resume differ now and then in the full test suite (not understood)."""
    values = {}
    for path in CARRIED:
        found = _find(env, path)
        value = vars(found[0]).get(found[1]) if found is not None else None
        if isinstance(value, SCALARS):
            values[path] = copy.deepcopy(value)
    return values


def _set_scalars(env: gym.Env, values: dict[str, Any]) -> None:
    for path, value in values.items():
        found = _find(env, path)
        if found is not None:
            vars(found[0])[found[1]] = value  # read from the instance's __dict__, so written back there


def _generator_states(env: gym.Env) -> list[tuple[list[str], str, Any]]:
    """``(paths, kind, state)`` per generator object: the paths that share it, so a restore shares it again."""
    groups: dict[int, tuple[list[str], str, Any]] = {}
    for path, g in _generators(env).items():
        if id(g) not in groups:
            state = copy.deepcopy(g.bit_generator.state) if isinstance(g, np.random.Generator) else g.get_state()
            groups[id(g)] = ([], type(g).__name__, state)
        groups[id(g)][0].append(path)
    return list(groups.values())


def _owner(env: gym.Env, path: str) -> tuple[Any, str]:
    *parents, name = path.split(".")
    owner: Any = env.unwrapped
    for parent in parents:
        owner = getattr(owner, parent)
    return owner, name


def _set_generator_states(env: gym.Env, groups: list[tuple[list[str], str, Any]]) -> None:
    for paths, kind, state in groups:
        owner, name = _owner(env, paths[0])
        generator = getattr(owner, name, None)
        if not isinstance(generator, GENERATORS):  # not created yet in a fresh env (Gymnasium creates it at reset)
            generator = (np.random.Generator(getattr(np.random, state["bit_generator"])()) if kind == "Generator"
                         else np.random.RandomState())
        if kind == "Generator":
            generator.bit_generator.state = state
        else:
            generator.set_state(state)
        for path in paths:  # one object wherever the recorded env had one (a fresh MinAtar env has two)
            setattr(*_owner(env, path), generator)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def _same_generators(a: list[tuple[list[str], str, Any]], b: list[tuple[list[str], str, Any]]) -> bool:
    def key(groups: list[tuple[list[str], str, Any]]) -> list[Any]:
        return sorted((paths, kind, repr(state)) for paths, kind, state in groups)

    return key(a) == key(b)


class EpisodeRecorder(gym.Wrapper):
    """Records what determines the current episode: the env's generator states at ``reset``, the ``reset`` arguments
    and the actions since; :meth:`replay` rebuilds the episode in a fresh copy of the env (same wrappers)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._episode: dict[str, Any] | None = None
        self._last_obs: Any = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        self._episode = {"generators": _generator_states(self.env), "scalars": _scalars(self.env), "seed": seed,
                         "options": options, "actions": []}
        obs, info = self.env.reset(seed=seed, options=options)
        self._last_obs = obs
        return obs, info

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        if self._episode is not None:
            self._episode["actions"].append(copy.deepcopy(action))
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._last_obs = obs
        return obs, reward, terminated, truncated, info

    def episode(self) -> dict[str, Any] | None:
        """The current episode (``None`` before the first reset), with the last observation returned."""
        if self._episode is None:
            return None
        return {**self._episode, "actions": list(self._episode["actions"]), "last_obs": copy.deepcopy(self._last_obs),
                "generators_now": _generator_states(self.env)}

    def replay(self, episode: dict[str, Any]) -> str | None:
        """Play ``episode`` again from its reset; ``None`` when it ends on the recorded observation, else why not."""
        _set_scalars(self.env, episode.get("scalars", {}))  # checkpoints before 2026-11-30 did not hold them
        _set_generator_states(self.env, episode["generators"])
        obs, _ = self.reset(seed=episode["seed"], options=episode["options"])
        for i, action in enumerate(episode["actions"]):
            obs, _, terminated, truncated, _ = self.step(action)
            if (terminated or truncated) and i + 1 < len(episode["actions"]):
                return f"the replayed episode ended at step {i + 1} of {len(episode['actions'])}"
        if not _same(obs, episode["last_obs"]):
            return "the replayed episode did not reach the recorded observation"
        if not _same_generators(_generator_states(self.env), episode["generators_now"]):
            return "the replayed environment's random generators are not where the recorded ones were"
        return None


def _chain(venv: Any) -> list[Any]:
    """The VecEnv and its wrappers, outermost first."""
    chain = [venv]
    while hasattr(chain[-1], "venv"):
        chain.append(chain[-1].venv)
    return chain


def _wrapper_state(wrapper: Any) -> tuple[Any, str | None]:
    name = type(wrapper).__name__
    if name == "VecNormalize":
        return {"returns": wrapper.returns.copy()}, None
    if name == "VecFrameStack":
        return {"stacked_obs": copy.deepcopy(wrapper.stacked_obs)}, None
    if name in STATELESS:
        return None, None
    return None, f"the VecEnv wrapper {name} keeps a state this checkpoint cannot restore"


def capture_env_state(venv: Any) -> dict[str, Any]:
    """What a checkpoint stores of the training VecEnv: ``{"exact": True, "wrappers": [...], "episodes": [...]}``,
    or ``{"exact": False, "reason": ...}`` when its environments cannot be restored (see the module docstring)."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    *wrappers, base = _chain(venv)
    if not isinstance(base, DummyVecEnv):
        return {"exact": False, "reason": f"the environments run in a {type(base).__name__} (only DummyVecEnv's are replayed)"}
    states = []
    for wrapper in wrappers:
        state, reason = _wrapper_state(wrapper)
        if reason is not None:
            return {"exact": False, "reason": reason}
        states.append((type(wrapper).__name__, state))
    episodes = []
    for env in base.envs:
        if not isinstance(env, EpisodeRecorder):
            return {"exact": False, "reason": "the environments were not built with an EpisodeRecorder"}
        if "ale_py" in type(env.unwrapped).__module__:
            return {"exact": False, "reason": "ALE games keep the emulator's own random state"}
        episodes.append(env.episode())
    return {"exact": True, "wrappers": states, "episodes": episodes}


def restore_env_state(venv: Any, state: dict[str, Any]) -> str | None:
    """Bring a freshly built training VecEnv (same settings) to the checkpoint's state; ``None`` on success, else the
    reason the environments will start new episodes instead."""
    if not state.get("exact"):
        return str(state.get("reason", "the checkpoint holds no environment state"))
    *wrappers, base = _chain(venv)
    if [type(w).__name__ for w in wrappers] != [name for name, _ in state["wrappers"]] or \
            len(getattr(base, "envs", ())) != len(state["episodes"]):
        return "the environments were built with other wrappers or another n_envs than the checkpoint's"
    for env, episode in zip(base.envs, state["episodes"]):
        if not isinstance(env, EpisodeRecorder):
            return "the environments were not built with an EpisodeRecorder"
        if episode is not None:
            try:
                reason = env.replay(episode)
            except Exception as error:  # an env this replay does not know: new episodes, said, not a crash
                reason = f"the replay failed ({type(error).__name__}: {error})"
            if reason is not None:
                return reason
    for wrapper, (_, saved) in zip(wrappers, state["wrappers"]):
        for key, value in (saved or {}).items():
            setattr(wrapper, key, copy.deepcopy(value))
    for reset in ("_reset_seeds", "_reset_options"):  # the first reset's seeds were used before the checkpoint
        if hasattr(base, reset):
            getattr(base, reset)()
    return None


class ResumeState(BaseCallback):
    """What SB3's ``learn`` redraws or resets before a resumed run's first collection, put back (the first callback of
    a resumed run): the action noise (reset when ``learn`` starts: an Ornstein-Uhlenbeck noise restarted from zero
    mid-episode) and the gSDE exploration matrices with the torch generator (redrawn when a collection starts).

    :param action_noise: the checkpoint's action noise (``None``: leave SB3's, e.g. when the episodes restart)
    :param rng: the checkpoint's :func:`~sparse_rl.sb3.checkpoints.rng_state`
    """

    def __init__(self, action_noise: Any, rng: dict[str, Any]) -> None:
        super().__init__()
        self.action_noise, self.rng, self.first = copy.deepcopy(action_noise), rng, True

    def _on_training_start(self) -> None:
        if self.action_noise is not None:
            self.model.action_noise = self.action_noise

    def _on_rollout_start(self) -> None:
        from sparse_rl.sb3.checkpoints import restore_exploration

        if self.first:
            self.first = False
            restore_exploration(self.model, self.rng)

    def _on_step(self) -> bool:
        return True
