"""Crash-safe checkpoints: everything needed to continue a run, written atomically.

A checkpoint is a folder ``checkpoints/step_<N>/`` holding the model (its state dict carries the sparse topology and
the TopologyCallback's schedule state), the RNG states (python, numpy, torch, the action space), VecNormalize
statistics when used, the environments' current episodes (:mod:`sparse_rl.sb3.env_state`: a resume replays them), and
optionally the replay buffer. It is written into a temporary folder that is renamed
into place, and ``checkpoints/latest.json`` is replaced last (``os.replace``): the pointer only ever names a complete
checkpoint, so a process killed at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import StateDependentNoiseDistribution

from sparse_rl.sb3.env_state import capture_env_state

LATEST = "latest.json"
ENV_STATE = "env_state.pt"
RECORD = "record.json"
#: Fault injection for tests: seconds to sleep after the files are written and before the checkpoint is committed,
#: for checkpoints after step ``SPARSE_RL_CHECKPOINT_DELAY_AFTER`` (default 0).
DELAY_ENV = "SPARSE_RL_CHECKPOINT_DELAY"
DELAY_AFTER_ENV = "SPARSE_RL_CHECKPOINT_DELAY_AFTER"


#: the tensors of SB3's gSDE distribution that ``reset_noise`` draws (not saved with the model; its ``weights_dist``
#: only serves the next draw)
SDE_ATTRIBUTES = ("exploration_mat", "exploration_matrices")


def sde_distributions(model: Any) -> dict[str, Any]:
    """The gSDE distributions of a model by owner (``policy``: PPO, A2C; ``actor``: SAC, TD3)."""
    owners = {"policy": getattr(model, "policy", None), "actor": getattr(model, "actor", None)}
    return {name: owner.action_dist for name, owner in owners.items()
            if isinstance(getattr(owner, "action_dist", None), StateDependentNoiseDistribution)}


def rng_state(model: Any) -> dict[str, Any]:
    """The random state of a run: the global generators, the action space's, and what SB3 does not save but a
    resume needs: the gSDE exploration matrices, RecurrentPPO's LSTM states."""
    exploration = {name: {k: getattr(dist, k).detach().clone() for k in SDE_ATTRIBUTES if hasattr(dist, k)}
                   for name, dist in sde_distributions(model).items()}
    return {
        "python": random.getstate(), "numpy": np.random.get_state(), "torch": th.get_rng_state(),
        "action_space": model.action_space.np_random.bit_generator.state, "exploration": exploration,
        "lstm_states": copy.deepcopy(getattr(model, "_last_lstm_states", None)),
    }


def restore_rng_state(model: Any, state: dict[str, Any]) -> None:
    """Restore :func:`rng_state` (the exploration matrices: :func:`restore_exploration`, once SB3 redrew them)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    th.set_rng_state(state["torch"])
    model.action_space.np_random.bit_generator.state = state["action_space"]
    if state.get("lstm_states") is not None:  # sb3-contrib does not save them: they restarted at zero mid-episode
        model._last_lstm_states = state["lstm_states"]


def restore_exploration(model: Any, state: dict[str, Any]) -> None:
    """Put the checkpoint's torch generator and gSDE matrices back: SB3 draws new matrices when a collection starts,
    just before the callbacks' ``on_rollout_start``, so a resumed run would explore with other ones."""
    th.set_rng_state(state["torch"])
    distributions = sde_distributions(model)
    for name, values in (state.get("exploration") or {}).items():
        for key, value in values.items():
            setattr(distributions[name], key, value)


def atomic_save(model: Any, path: Path) -> None:
    """``model.save`` to a temporary file, then rename: a crash never leaves a half-written model."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.zip")
    model.save(tmp)
    os.replace(tmp, path)


def write_checkpoint(model: Any, folder: Path, save_replay_buffer: bool = False, record: dict[str, Any] | None = None
                     ) -> Path:
    """Write a complete checkpoint of ``model`` under ``folder`` and point ``latest.json`` at it.

    :param record: extra values stored in ``latest.json`` (e.g. ``train_seconds``, the run's training clock)
    """
    folder.mkdir(parents=True, exist_ok=True)
    step, captured = int(model.num_timesteps), time.time()
    final, tmp = folder / f"step_{step}", folder / f".tmp_step_{step}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model.save(tmp / "model.zip")
    th.save(rng_state(model), tmp / "rng.pt")
    th.save(capture_env_state(model.get_env()), tmp / ENV_STATE)
    env = model.get_vec_normalize_env()
    if env is not None:
        env.save(str(tmp / "vecnormalize.pkl"))
    if save_replay_buffer and hasattr(model, "replay_buffer") and model.replay_buffer is not None:
        model.save_replay_buffer(tmp / "replay_buffer.pkl")
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    if delay > 0 and step > int(os.environ.get(DELAY_AFTER_ENV, "0") or 0):
        time.sleep(delay)
    entry = {"step": step, "path": final.name, "time": captured, **(record or {})}
    (tmp / RECORD).write_text(json.dumps(entry))  # the checkpoint's own copy of what latest.json says of it
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    pointer = folder / f".{LATEST}.{os.getpid()}"
    pointer.write_text(json.dumps(entry))
    os.replace(pointer, folder / LATEST)
    return final


def _latest_pointer(folder: Path) -> dict[str, Any]:
    """The ``latest.json`` record under ``folder`` (empty when there is none)."""
    pointer = folder / LATEST
    return json.loads(pointer.read_text()) if pointer.is_file() else {}


def latest_checkpoint(folder: Path) -> Path | None:
    """The last complete checkpoint under ``folder`` (``None`` if there is none)."""
    record = _latest_pointer(folder)
    if not record:
        return None
    path = folder / record["path"]
    return path if (path / "model.zip").is_file() else None


def checkpoint_record(folder: Path) -> dict[str, Any]:
    """What ``latest.json`` says of the last complete checkpoint (step, path, time, train_seconds...; ``{}`` if none)."""
    return _latest_pointer(folder)


def checkpoint_time(folder: Path) -> float | None:
    """Wall-clock time at which the last complete checkpoint under ``folder`` captured the model (None if unknown)."""
    return _latest_pointer(folder).get("time")


def rewind_monitor_logs(run_dir: Path, until: float | None) -> float | None:
    """Drop the Monitor CSV rows of episodes that ended after ``until`` (the resumed run replays them); atomically.

    Returns the files' ``t_start``, so the resumed run's Monitors can append rows on the same clock (None: no file).
    """
    t_start = None
    for path in sorted(run_dir.glob("*.monitor.csv")):
        lines = path.read_text().splitlines(keepends=True)
        if len(lines) < 2 or not lines[0].startswith("#"):
            continue
        t_start = float(json.loads(lines[0][1:])["t_start"])
        column = lines[1].strip().split(",").index("t")
        rows = [line for line in lines[2:] if line.strip()]
        if until is not None:
            rows = [line for line in rows if t_start + float(line.strip().split(",")[column]) <= until]
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text("".join(lines[:2] + rows))
        os.replace(tmp, path)
    return t_start


class AtomicCheckpointCallback(BaseCallback):
    """Checkpoint every ``save_freq`` environment steps (``model.num_timesteps``), keeping the last ``keep``.

    A checkpoint falls due at the first env step at or past the grid and is written when the next collection starts
    (SB3's ``on_rollout_start``): the transitions collected so far are stored and trained on (on-policy: the rollout
    is trained on), so a resume repeats and loses nothing of the agent's state. The environments' current episodes
    are stored too and replayed at resume (where they cannot be: new episodes, and the resume says why).

    :param save_freq: environment steps between checkpoints
    :param folder: where checkpoints go (``<run>/checkpoints``)
    :param save_replay_buffer: include the replay buffer (exact off-policy resumption; can be large)
    :param keep: number of checkpoints kept (older ones are deleted after a new one is committed)
    :param clock: the run's training clock (its seconds are stored with each checkpoint, so a resumed run's wall
        time continues)
    """

    def __init__(self, save_freq: int, folder: str | Path, save_replay_buffer: bool = False, keep: int = 2,
                 clock: Any = None) -> None:
        super().__init__()
        self.clock = clock
        if save_freq <= 0:
            raise ValueError(f"save_freq must be a positive number of steps, got {save_freq}")
        self.save_freq, self.folder, self.save_replay_buffer, self.keep = save_freq, Path(folder), save_replay_buffer, keep
        self.next_save: int | None = None

    def _on_training_start(self) -> None:
        self.next_save = (self.num_timesteps // self.save_freq + 1) * self.save_freq
        self.due = False

    def _on_step(self) -> bool:
        # Due now, written at the start of the next collection: inside a step SB3 has not yet stored this step's
        # transition nor trained on it (PPO: not trained on the rollout), so a checkpoint written here lost both
        if self.next_save is not None and self.num_timesteps >= self.next_save:
            self.due = True
        return True

    def _on_rollout_start(self) -> None:
        if not getattr(self, "due", False):
            return
        self.due = False
        record = {"train_seconds": self.clock.seconds()} if self.clock is not None else None
        write_checkpoint(self.model, self.folder, self.save_replay_buffer, record)
        self.next_save = (self.num_timesteps // self.save_freq + 1) * self.save_freq
        steps = sorted((int(p.name.split("_")[1]) for p in self.folder.glob("step_*")), reverse=True)
        for old in steps[self.keep:]:
            shutil.rmtree(self.folder / f"step_{old}", ignore_errors=True)
