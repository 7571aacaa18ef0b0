"""Benchmark suites as data: ``envs/mujoco.yml`` and ``envs/atari.yml`` (env lists, protocol, reference scores).

A suite maps each run's env id to a *task* (the env id for MuJoCo, the game for Atari, so ``PongNoFrameskip-v4`` and
``ALE/Pong-v5`` are one task) and normalises returns as ``(return - low) / (high - low)``: random to human for Atari
(the human-normalised score), random to the published dense agent for MuJoCo. The Atari-5 subset is from Aitchison
et al. 2023; the sources of every number are in the YAML files.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from sparse_rl.harness.resources import data_dir

SUITE_DIR = data_dir("envs")
SUITE_FILES = {"mujoco": "mujoco.yml", "atari": "atari.yml", "minatar": "minatar.yml"}
ATARI_ID = re.compile(r"^(?:ALE/)?(?P<game>[A-Za-z0-9]+?)(?:NoFrameskip)?-v\d+$")


def _score(entry: Any) -> float | None:
    """A reference entry (a number, ``{score: ...}`` or null) as a float, or None."""
    if isinstance(entry, dict):
        entry = entry.get("score")
    return None if entry is None else float(entry)


@dataclass
class Suite:
    """A benchmark suite: its tasks, evaluation protocol and reference scores.

    :param name: suite name (``mujoco``, ``atari5``, ... or an env id for a one-env suite)
    :param tasks: task names in order (env ids for MuJoCo, game names for Atari)
    :param protocol: ``episodes``, ``deterministic``, ``epsilon``, ``max_episode_steps``
    :param references: ``task -> {reference name -> score or None}`` (``random``, ``human``, ``sac``, ...)
    :param low: name of the reference that maps to 0
    :param high: name of the reference that maps to 1 when the run's algorithm has no reference of its own
    :param atari: whether tasks are Atari games (env ids map to games)
    :param env_ids: env id to evaluate for each task when a run does not say (``task -> env id``)
    """

    name: str
    tasks: list[str]
    protocol: dict[str, Any]
    references: dict[str, dict[str, float | None]] = field(default_factory=dict)
    low: str = "random"
    high: str = "human"
    atari: bool = False
    env_ids: dict[str, str] = field(default_factory=dict)

    def task_of(self, env_id: str) -> str | None:
        """The task an env id belongs to, or None when it is not part of the suite."""
        if self.atari:
            match = ATARI_ID.match(env_id)
            task = match.group("game") if match else None
        else:
            task = env_id
        return task if task in self.tasks else None

    def reference(self, task: str, algo: str | None = None) -> tuple[float | None, float | None, str]:
        """``(low, high, high_name)`` for a task: the run's own algo's reference when listed, else the suite's."""
        scores = self.references.get(task, {})
        high_name = algo if algo is not None and _score(scores.get(algo)) is not None else self.high
        return _score(scores.get(self.low)), _score(scores.get(high_name)), high_name

    def normalize(self, task: str, score: float, algo: str | None = None) -> float:
        """``(score - low) / (high - low)``; NaN when a reference is missing."""
        low, high, _ = self.reference(task, algo)
        if low is None or high is None or high == low:
            return math.nan
        return (score - low) / (high - low)


def _read(name: str) -> dict[str, Any]:
    path = SUITE_DIR / SUITE_FILES[name]
    if not path.is_file():
        raise ValueError(f"suite file {path} not found: is sparse_rl installed from its repository (pip install -e .)?")
    return yaml.safe_load(path.read_text())


def suite_names() -> list[str]:
    """Every suite name accepted by :func:`load_suite` (besides single env ids)."""
    return ["mujoco", "minatar", "atari", *[s for s in _read("atari")["subsets"]]]


def _mujoco_suite() -> Suite:
    data = _read("mujoco")
    references = {task: {k: v for k, v in entry.items() if k != "measured_on"} for task, entry in data["references"].items()}
    norm = data.get("normalization", {})
    return Suite(name="mujoco", tasks=list(data["envs"]), protocol=dict(data["protocol"]), references=references,
                 low=norm.get("low", "random"), high=norm.get("reference", "sac"), env_ids={e: e for e in data["envs"]})


def _minatar_suite() -> Suite:
    data = _read("minatar")
    tasks = list(data["envs"])
    return Suite(name="minatar", tasks=tasks, protocol=dict(data["protocol"]), references={}, env_ids={e: e for e in tasks})


def _atari_suite(subset: str | None = None) -> Suite:
    data = _read("atari")
    subset = subset or data["default_subset"]
    games = data["subsets"][subset]
    if games == "all":
        games = list(data["scores"])
    norm = data.get("normalization", {})
    template = data.get("id_template", "{game}NoFrameskip-v4")
    return Suite(name=subset, tasks=list(games), protocol=dict(data["protocol"]), references=dict(data["scores"]),
                 low=norm.get("low", "random"), high=norm.get("reference", "human"), atari=True,
                 env_ids={game: template.format(game=game) for game in games})


def load_suite(name: str) -> Suite:
    """A suite by name (``mujoco``, ``minatar``, ``atari`` = Atari-5, ``atari5``, ``atari26``, ``atari57``) or a one-env
    suite.

    A one-env suite (``--suite HalfCheetah-v4``, ``--suite ALE/Pong-v5``) takes the protocol and references of the
    suite file that lists the env (MuJoCo ids, or any Atari game of the 57), else defaults with no normalisation.
    """
    if name == "mujoco":
        return _mujoco_suite()
    if name == "minatar":
        return _minatar_suite()
    if name == "atari":
        return _atari_suite()
    atari_subsets = _read("atari")["subsets"]
    if name in atari_subsets:
        return _atari_suite(name)
    from sparse_rl.harness.envs import check_env_id, is_atari

    try:
        check_env_id(name)
    except ValueError:
        import difflib

        import gymnasium as gym

        close = difflib.get_close_matches(name, [*suite_names(), *gym.registry], n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        choices = suite_names()
        raise ValueError(f"unknown suite or env {name!r}: choose one of {choices} or a registered env id.{hint}") from None
    if is_atari(name):
        full = _atari_suite("atari57")
        game = full.task_of(name) or name
        references = {game: full.references.get(game, {})}
        return Suite(name=name, tasks=[game], protocol=full.protocol, references=references, low=full.low, high=full.high,
                     atari=True, env_ids={game: name})
    mujoco = _mujoco_suite()
    if name in mujoco.tasks:
        return Suite(name=name, tasks=[name], protocol=mujoco.protocol, references={name: mujoco.references[name]},
                     low=mujoco.low, high=mujoco.high, env_ids={name: name})
    protocol = {"episodes": 10, "deterministic": True, "epsilon": 0.0, "max_episode_steps": None}
    return Suite(name=name, tasks=[name], protocol=protocol, env_ids={name: name})
