"""Sweeps (``python -m sparse_rl.sweep -conf SWEEP.yml``, whose help shows the file format): the grid of seeds x
sparsities x methods x envs, each point one ``python -m sparse_rl.train`` process run as a Ray task (locally, or on a
cluster), failures retried then reported, finished points skipped when re-run, each point's folder locked while it
trains.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparse_rl.harness.checks import numeric_text
from sparse_rl.harness.hyperparams import read_yaml
from sparse_rl.harness.runs import LOCK_FILE, RunFolder

INSTALL_HINT = "Ray is not installed: pip install 'sparse_rl[sweep]' (or pip install 'ray[default]')"
GRID_KEYS = ("algo", "env", "method", "sparsity", "seed")
POINT_FILE = "sweep_point.json"  # in a grid point's folder: the settings it was (or is being) trained with


@dataclass(frozen=True)
class GridRun:
    """One grid point; ``folder`` is where its ``python -m sparse_rl.train`` writes (``-f``)."""

    algo: str
    env: str
    method: str
    sparsity: float
    seed: int
    n_timesteps: int | None = None
    train_args: tuple[str, ...] = ()
    root: str = "logs/sweep"

    @property
    def name(self) -> str:
        return f"{self.algo}_{self.env.replace('/', '-')}_{self.method}_{self.sparsity:g}_seed{self.seed}"

    @property
    def folder(self) -> Path:
        return Path(self.root) / self.name

    def is_finished(self) -> bool:
        return any(self.folder.rglob("run.json")) if self.folder.exists() else False

    def is_busy(self) -> bool:
        """Whether another process (a sweep or benchmark over the same folder) is training this point now."""
        return RunFolder(self.folder, self.env).is_locked()

    def settings(self) -> dict[str, Any]:
        """What the sweep file asks of this point beyond its name: ``n_timesteps`` and ``train_args``."""
        return {"n_timesteps": self.n_timesteps, "train_args": list(self.train_args)}

    def stale(self) -> str | None:
        """Why the run already in this point's folder is not what the sweep file now asks (``None``: it is, or the
        folder is empty): its recorded settings (``sweep_point.json``), or for folders of older sweeps the
        ``n_timesteps`` of its ``args.yml``."""
        if not self.folder.exists():
            return None
        record = self.folder / POINT_FILE
        if not any(self.folder.glob(f"{self.algo}/*/*/args.yml")):
            return None  # nothing trained here yet (an attempt that failed before training): the point runs as asked
        if record.is_file():
            recorded = json.loads(record.read_text())
        else:
            folders = [RunFolder(path, self.env) for path in sorted(self.folder.glob(f"{self.algo}/*"))]
            folders = [folder for folder in folders if (folder.params_dir / "args.yml").is_file()]
            if not folders or self.n_timesteps is None:
                return None
            recorded = {"n_timesteps": folders[0].read_args().get("n_timesteps"), "train_args": list(self.train_args)}
        wanted = self.settings()
        differ = [f"{key} {recorded.get(key)!r} (the sweep file now says {wanted[key]!r})" for key in wanted
                  if recorded.get(key) != wanted[key]]
        return f"{self.folder} was trained with {', '.join(differ)}" if differ else None

    def resumable_dir(self) -> Path | None:
        """The run folder of an interrupted attempt that has a complete checkpoint (``--resume`` continues it)."""
        if not self.folder.exists():
            return None
        for pointer in sorted(self.folder.glob("*/*/checkpoints/latest.json")):
            return pointer.parent.parent
        return None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "sparse_rl.train", "--algo", self.algo, "--env", self.env, "--method", self.method,
               "--sparsity", str(self.sparsity), "--seed", str(self.seed), "-f", str(self.folder), "-v", "0"]
        if self.n_timesteps is not None:
            cmd += ["-n", str(self.n_timesteps)]
        return cmd + list(self.train_args)


@dataclass
class SweepResult:
    finished: list[GridRun] = field(default_factory=list)
    skipped: list[GridRun] = field(default_factory=list)
    failed: dict[GridRun, str] = field(default_factory=dict)
    busy: list[GridRun] = field(default_factory=list)  # trained by another process at the time: neither done nor failed


class RunLocked(RuntimeError):
    """The grid point's folder is locked: another sweep or benchmark is training it (not a failure)."""


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def load_sweep(path: str | Path) -> dict[str, Any]:
    """Read and check a sweep file."""
    path = Path(path)
    spec = read_yaml(path, "sweep file")
    if not isinstance(spec, dict) or "algo" not in spec or "env" not in spec:
        raise ValueError(f"sweep file {str(path)!r} needs at least 'algo' and 'env' keys (see python -m sparse_rl.sweep -h)")
    unknown = set(spec) - {*GRID_KEYS, "n_timesteps", "train_args", "log_folder", "max_retries"}
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)} in sweep file {str(path)!r}")
    _check_grid(spec, str(path))
    return spec


#: train flags that each grid point sets itself (long names; argparse also takes unique prefixes and ``--flag=value``)
POINT_FLAGS = {"--algo": "algo", "--env": "env", "--method": "method", "--sparsity": "sparsity", "--seed": "seed",
               "--n-timesteps": "n_timesteps", "--log-folder": "log_folder", "--resume": "(none: sweeps resume "
               "unfinished points themselves)"}
SHORT_POINT_FLAGS = {"-n": "n_timesteps", "-f": "log_folder"}


def _check_grid(spec: dict[str, Any], where: str) -> None:
    """Every grid value checked before anything runs; ``train_args`` may not set what the grid sets (argparse keeps
    the last flag, so the point would silently train something other than its name says)."""
    from sparse_rl.harness.resolve import ALGOS, METHODS

    def fail(key: str, value: Any, allowed: str) -> None:
        numeric = isinstance(value, str) and numeric_text(value)
        hint = f" (YAML reads {value} as a string: write it as a number)" if numeric else ""
        raise ValueError(f"sweep file {where}: {key} {value!r} is not allowed: {allowed}{hint}")

    for algo in _as_list(spec["algo"]):
        if algo not in ALGOS:
            fail("algo", algo, f"one of {list(ALGOS)}")
    for method in _as_list(spec.get("method", "rigl")):
        if method not in METHODS:
            fail("method", method, f"one of {list(METHODS)}")
    for sparsity in _as_list(spec.get("sparsity", 0.9)):
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
            fail("sparsity", sparsity, "a number in [0, 1)")
    for seed in _as_list(spec.get("seed", 0)):
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            fail("seed", seed, "an integer >= 0")
    steps = spec.get("n_timesteps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0):
        fail("n_timesteps", steps, "a positive integer")
    train_args = spec.get("train_args", [])
    if not isinstance(train_args, list) or not all(isinstance(a, (str, int, float)) for a in train_args):
        fail("train_args", train_args, "a list of python -m sparse_rl.train arguments, e.g. ['--eval-freq', '2000']")
    for arg in (str(a) for a in train_args):
        name = arg.split("=")[0]
        if name.startswith("--") and len(name) > 2:
            hits = [flag for flag in POINT_FLAGS if flag.startswith(name)]
        else:
            hits = [flag for flag in SHORT_POINT_FLAGS if name == flag or (name.startswith(flag) and name[2:3].isdigit())]
        if hits:
            key = {**POINT_FLAGS, **SHORT_POINT_FLAGS}[hits[0]]
            raise ValueError(f"sweep file {where}: train_args set {arg}, which each grid point sets itself: use the "
                             f"sweep file's {key} key instead")


def expand_grid(spec: dict[str, Any]) -> list[GridRun]:
    """All grid points; sparsity 0 (or method dense) becomes one dense run per (algo, env, seed)."""
    runs: dict[str, GridRun] = {}
    common = dict(n_timesteps=spec.get("n_timesteps"), train_args=tuple(str(a) for a in spec.get("train_args", ())),
                  root=str(spec.get("log_folder", "logs/sweep")))
    grid = itertools.product(_as_list(spec["algo"]), _as_list(spec["env"]), _as_list(spec.get("method", "rigl")),
                             _as_list(spec.get("sparsity", 0.9)), _as_list(spec.get("seed", 0)))
    for algo, env, method, sparsity, seed in grid:
        if float(sparsity) == 0.0 or method == "dense":
            method, sparsity = "dense", 0.0
        run = GridRun(algo, env, method, float(sparsity), int(seed), **common)
        runs.setdefault(run.name, run)
    return list(runs.values())


def run_one(run: GridRun) -> str:
    """Train one grid point in a fresh process; raises with the tail of its stderr if it fails.

    The grid point's folder is locked while it trains, so two sweeps (or benchmarks) over the same folder never train
    one point twice nor clear each other's files. An interrupted attempt with a complete checkpoint is continued
    (``--resume``); one without is started again.
    """
    run.folder.mkdir(parents=True, exist_ok=True)
    lock = RunFolder(run.folder, run.env)
    try:
        lock.lock()
    except ValueError:
        raise RunLocked(f"{run.name} is being trained by another process (its folder {run.folder} is locked)") from None
    try:
        if run.is_finished():
            return run.name
        (run.folder / POINT_FILE).write_text(json.dumps(run.settings()))
        command = run.command()
        resume = run.resumable_dir()
        if resume is not None:
            command = [sys.executable, "-m", "sparse_rl.train", "--algo", run.algo, "--resume", str(resume)]
            if run.n_timesteps is not None:
                command += ["-n", str(run.n_timesteps)]
        else:  # a partial folder without a checkpoint: start clean, so numbering stays _1
            for child in run.folder.iterdir():
                if child.name not in (LOCK_FILE, POINT_FILE):
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        result = subprocess.run(command, capture_output=True, text=True, env=env)
    finally:
        lock.unlock()
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"{run.name} exited with {result.returncode}: {tail}")
    return run.name


BUSY = "busy"


def _run_or_busy(run: GridRun) -> str:
    """:func:`run_one` for a Ray task: a point another process trains returns :data:`BUSY` instead of raising, so that
    Ray neither retries it nor logs it as a failed task."""
    try:
        return run_one(run)
    except RunLocked:
        return BUSY


def check_points(runs: list[GridRun]) -> None:
    """Check the unfinished points with ``python -m sparse_rl.train --dry-run`` on this machine (the first point of
    each algo, env and method; other seeds and sparsities differ only in values the grid checks), so that a point the
    trainer would refuse (a flag of ``train_args``, a hyperparameter, an algo the env does not fit) stops the sweep
    before anything runs.

    :raises ValueError: one line naming the first failing point and its error
    """
    from concurrent.futures import ThreadPoolExecutor

    todo: dict[tuple[str, str, str], GridRun] = {}
    for run in runs:
        if not run.is_finished():
            todo.setdefault((run.algo, run.env, run.method), run)

    def dry_run(run: GridRun) -> str | None:
        try:
            out = subprocess.run([*run.command(), "--dry-run"], capture_output=True, text=True, timeout=600,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"})
        except subprocess.TimeoutExpired:
            return "its train --dry-run did not finish in 600 s"
        lines = (out.stderr.strip() or out.stdout.strip()).splitlines()
        return None if out.returncode == 0 else (lines[-1] if lines else f"exit status {out.returncode}")

    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        errors = [(run, error) for run, error in zip(todo.values(), pool.map(dry_run, todo.values())) if error]
    if errors:
        more = f" (and {len(errors) - 1} more points)" if len(errors) > 1 else ""
        raise ValueError(f"grid point {errors[0][0].name} would fail{more}: {errors[0][1].removeprefix('error: ')}")


def execute(runs: list[GridRun], max_retries: int = 1, address: str | None = None, num_cpus: int | None = None) -> SweepResult:
    """Run the unfinished grid points as Ray tasks and wait for all of them.

    :raises ValueError: before anything runs, when a point's folder holds a run trained with other settings than the
        sweep file now asks (another ``n_timesteps`` or ``train_args``): such a run is neither done nor continued
    """
    stale = [reason for reason in (run.stale() for run in runs) if reason]
    if stale:
        more = f" (and {len(stale) - 1} more points)" if len(stale) > 1 else ""
        raise ValueError(f"{stale[0]}{more}: set another log_folder for the new settings, or delete those folders")
    try:
        import ray
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    result = SweepResult()
    todo = []
    for run in runs:
        (result.skipped if run.is_finished() else todo).append(run)
    if not todo:
        return result
    ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
             ignore_reinit_error=True, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1, max_retries=max_retries, retry_exceptions=True)(_run_or_busy)
        pending = {task.remote(run): run for run in todo}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            run = pending.pop(done[0])
            try:
                if ray.get(done[0]) == BUSY:
                    result.busy.append(run)
                    print(f"busy {run.name}: trained by another process, left to it", flush=True)
                    continue
                result.finished.append(run)
                print(f"finished {run.name}", flush=True)
            except Exception as error:  # a failed run is reported, the others go on
                cause = getattr(error, "cause", None) or error
                result.failed[run] = str(cause).strip().splitlines()[-1]
                print(f"FAILED {run.name}: {result.failed[run]}", flush=True)
    finally:
        ray.shutdown()
    return result
