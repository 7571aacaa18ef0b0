"""Evaluation on a fixed grid of environment steps, across resumes, with the training wall clock beside each point.

SB3's ``EvalCallback`` counts its own calls (``n_calls % eval_freq``), which restart at 0 when a run is resumed from a
checkpoint: a run checkpointed at step 4500 with ``eval_freq=1000`` would then evaluate at 5500, 6500... and the
curves of resumed and uninterrupted runs could not be compared point by point. :class:`GridEvalCallback` evaluates
whenever ``model.num_timesteps`` reaches the next multiple of ``grid`` (env steps, all envs counted), evaluates once
more when training ends off the grid, and stores ``walltime_s`` (training seconds, evaluations excluded, continued
across resumes) in ``evaluations.npz`` beside SB3's ``timesteps``, ``results`` and ``ep_lengths``. With ``seed``, the
k-th evaluation (k = 0, 1, ...) starts from the evaluation env seeded with ``seed + k``, so each evaluation depends on
the policy alone, not on the evaluations before it: a resumed run evaluates as an uninterrupted one.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import EvalCallback

from sparse_rl.sb3.checkpoints import atomic_save

#: the VecNormalize statistics saved with ``best_model.zip`` (beside it)
BEST_STATISTICS = "best_vecnormalize.pkl"


class TrainingClock:
    """Seconds spent training (evaluations excluded), starting from ``offset`` (a resumed run's earlier time)."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = float(offset)
        self._started = time.perf_counter()
        self._excluded = 0.0

    def seconds(self) -> float:
        return self.offset + time.perf_counter() - self._started - self._excluded

    @contextmanager
    def excluded(self) -> Any:
        """Time spent inside the block does not count as training."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self._excluded += time.perf_counter() - start


class GridEvalCallback(EvalCallback):
    """``EvalCallback`` on the grid of env steps ``grid, 2 * grid, ...`` plus a final evaluation.

    :param eval_env: the evaluation environment
    :param grid: env steps between evaluations
    :param clock: the run's training clock (``None``: a new one)
    :param seed: the k-th evaluation reseeds the evaluation env with ``seed + k`` (``None``: SB3's behaviour, the env's
        generators continue from one evaluation to the next)
    :param kwargs: the other arguments of SB3's ``EvalCallback`` (``eval_freq`` is replaced by ``grid``)
    """

    def __init__(self, eval_env: Any, grid: int, clock: TrainingClock | None = None, seed: int | None = None,
                 **kwargs: Any) -> None:
        if grid <= 0:
            raise ValueError(f"grid must be a positive number of environment steps, got {grid}")
        super().__init__(eval_env, eval_freq=1, **kwargs)
        self.grid, self.seed = grid, seed
        self.clock = clock or TrainingClock()
        self.walltimes: list[float] = []
        self.next_eval = grid

    def restore(self, path: Path, upto: int) -> None:
        """Carry a resumed run's evaluations up to step ``upto`` over (none lost, none doubled)."""
        if not path.is_file():
            return
        data = np.load(path)
        keep = data["timesteps"] <= upto
        self.evaluations_timesteps = data["timesteps"][keep].tolist()
        self.evaluations_results = data["results"][keep].tolist()
        self.evaluations_length = data["ep_lengths"][keep].tolist()
        if "walltime_s" in data:
            self.walltimes = data["walltime_s"][keep].tolist()
        if keep.any():
            self.best_mean_reward = float(np.max(np.mean(data["results"][keep], axis=1)))

    def _init_callback(self) -> None:
        super()._init_callback()
        self.next_eval = (self.model.num_timesteps // self.grid + 1) * self.grid

    def _evaluate(self) -> bool:
        with self.clock.excluded():
            seconds = self.clock.seconds()
            if self.seed is not None:
                self.eval_env.seed(self.seed + len(self.evaluations_timesteps))
            # eval_freq=1: SB3's evaluation and logging; its files (written in place, so a crash mid-write left a
            # truncated evaluations.npz or best_model.zip) go to a scratch name / nowhere, and are written here atomically
            log_path, best_dir, best = self.log_path, self.best_model_save_path, self.best_mean_reward
            self.log_path = f"{log_path}.{os.getpid()}.sb3" if log_path is not None else None
            self.best_model_save_path = None
            try:
                continue_training = super()._on_step()
            finally:
                scratch, self.log_path, self.best_model_save_path = self.log_path, log_path, best_dir
            self.walltimes.append(seconds)
            if log_path is not None:
                Path(f"{scratch}.npz").unlink(missing_ok=True)
                extra = {"successes": self.evaluations_successes} if self.evaluations_successes else {}
                tmp = f"{log_path}.{os.getpid()}.tmp.npz"
                np.savez(tmp, timesteps=self.evaluations_timesteps, results=self.evaluations_results,
                         ep_lengths=self.evaluations_length, walltime_s=self.walltimes, **extra)
                os.replace(tmp, f"{log_path}.npz")
            if best_dir is not None and self.best_mean_reward > best:
                # the best model reads observations normalised by these statistics, not the final ones: both files
                # are written first and replaced one right after the other
                statistics = self.model.get_vec_normalize_env()
                tmp = Path(best_dir) / f".{BEST_STATISTICS}.{os.getpid()}.tmp"
                if statistics is not None:
                    statistics.save(str(tmp))
                atomic_save(self.model, Path(best_dir) / "best_model.zip")
                if statistics is not None:
                    os.replace(tmp, Path(best_dir) / BEST_STATISTICS)
        return continue_training

    def _on_step(self) -> bool:
        if self.num_timesteps < self.next_eval:
            return True
        self.next_eval = (self.num_timesteps // self.grid + 1) * self.grid
        return self._evaluate()

    def _on_training_end(self) -> None:
        if not self.evaluations_timesteps or self.evaluations_timesteps[-1] != self.num_timesteps:
            self._evaluate()
