"""Run folders written by ``python -m sparse_rl.train``: evaluations, the run summary and TensorBoard scalars."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RUN_SUMMARY = "run.json"


@dataclass
class Run:
    """One training run: identity (algo, env, method, sparsity, seed), evaluation curve and summary numbers."""

    path: Path
    algo: str
    env: str
    method: str
    sparsity: float
    seed: int
    timesteps: np.ndarray
    returns: np.ndarray  # mean evaluation return at each evaluation
    summary: dict[str, Any] = field(default_factory=dict)
    walltime: np.ndarray | None = None  # training seconds at each evaluation (runs written since walltime_s existed)

    @property
    def name(self) -> str:
        """``<algo>_<Env>_<dense|rigl90>_s<seed>``: the run's name in TensorBoard, run.json and reports."""
        if self.summary.get("name"):
            return str(self.summary["name"])
        config = "dense" if self.label == "dense" else f"{self.method}{round(100 * self.sparsity)}"
        return f"{self.algo}_{self.env.replace('/', '-').replace(':', '-')}_{config}_s{self.seed}"

    def seconds(self) -> tuple[np.ndarray, bool]:
        """Training wall-clock seconds at each evaluation, and whether they were measured (else: the run's total
        wall time spread evenly over its steps)."""
        if self.walltime is not None and len(self.walltime) == len(self.timesteps):
            return self.walltime, True
        total = float(self.summary.get("wall_time_s") or np.nan)
        steps = float(self.summary.get("n_timesteps") or (self.timesteps[-1] if len(self.timesteps) else 1))
        return self.timesteps * total / max(steps, 1.0), False

    @property
    def label(self) -> str:
        """``dense`` or ``<method> <sparsity>%``: runs with the same label are seeds of one configuration."""
        if self.method == "dense" or self.sparsity == 0:
            return "dense"
        return f"{self.method} {round(100 * self.sparsity)}%"

    @property
    def final_return(self) -> float:
        return float(self.returns[-1]) if len(self.returns) else float("nan")


def load_run(path: Path) -> Run:
    """Read a run folder (needs ``evaluations.npz`` and ``run.json``)."""
    path = Path(path)
    summary_file = path / RUN_SUMMARY
    if not summary_file.is_file():
        raise ValueError(f"{path} has no {RUN_SUMMARY}: it was not written by python -m sparse_rl.train")
    summary = json.loads(summary_file.read_text())
    evaluations = path / "evaluations.npz"
    walltime = None
    if evaluations.is_file():
        data = np.load(evaluations)
        timesteps, returns = data["timesteps"], data["results"].mean(axis=1)
        walltime = data["walltime_s"] if "walltime_s" in data else None
    else:
        timesteps, returns = np.zeros(0, dtype=int), np.zeros(0)
    return Run(path=path, algo=summary["algo"], env=summary["env"], method=summary["method"],
               sparsity=float(summary["sparsity"]), seed=int(summary["seed"]), timesteps=timesteps, returns=returns,
               summary=summary, walltime=walltime)


def find_runs(root: str | Path) -> list[Run]:
    """Every run folder (one holding ``run.json``) under ``root``, sorted by path."""
    root = Path(root)
    if not root.exists():
        raise ValueError(f"log folder {str(root)!r} does not exist")
    return [load_run(p.parent) for p in sorted(root.rglob(RUN_SUMMARY))]


def tensorboard_scalars(event_dir: str | Path, tags: list[str] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Scalars of a TensorBoard run directory: ``tag -> (steps, values)`` (all tags when ``tags`` is None)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(event_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    available = accumulator.Tags().get("scalars", [])
    result = {}
    for tag in available if tags is None else [t for t in tags if t in available]:
        events = accumulator.Scalars(tag)
        result[tag] = (np.array([e.step for e in events]), np.array([e.value for e in events]))
    return result
