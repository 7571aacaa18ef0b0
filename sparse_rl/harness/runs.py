"""The one owner of the run-folder layout ``<log_folder>/<algo>/<Env>_<n>/`` (RL Zoo's, so its scripts read ours).

A run folder holds ``<Env>.zip`` (final model), ``best_model.zip``, ``evaluations.npz``, ``<Env>/config.yml`` and
``<Env>/args.yml`` (RL Zoo's files), ``<Env>/resolved.yml`` (every merge and default of the run's settings),
``<Env>/vecnormalize.pkl`` when the run normalises, ``command.txt``, the Monitor CSVs, ``dormant.csv``,
``checkpoints/`` and ``run.json`` (the summary, written when training ends).

Runs started at once never share a folder: :meth:`RunFolder.claim` takes the next free ``<Env>_<n>`` with an atomic
``mkdir``, and a run holds an exclusive lock on its folder (``.lock``, released when the process ends) so that no
other process resumes or writes into it meanwhile.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import sys
import time
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from sparse_rl.harness.checks import error_line
from sparse_rl.harness.envs import env_name

RUN_SUMMARY = "run.json"
RESUMES = "resumes.json"
LOCK_FILE = ".lock"


#: a packaged agent's record (``agents/``, :mod:`sparse_rl.harness.agents`); a run folder holding it is a shipped agent
AGENT_RESULTS = "results.json"


class RunFolder:
    """Paths and files of one run folder.

    :param path: the folder (``logs/sac/HalfCheetah-v4_1``)
    :param env_id: the run's env id (its folder name form names the model and parameter files)
    """

    def __init__(self, path: str | Path, env_id: str) -> None:
        self.path = Path(path)
        self.env_id = env_id
        self._lock_fd: int | None = None
        self.created_parents: list[Path] = []  # folders :meth:`claim` created above the run folder

    # ----------------------------------------------------------------------------------------------- creation
    @classmethod
    def claim(cls, log_folder: str | Path, algo: str, env_id: str) -> RunFolder:
        """Create and lock the next free ``<log_folder>/<algo>/<Env>_<n>`` (atomic: concurrent runs get distinct n)."""
        base = Path(log_folder) / algo
        created = [p for p in (base, *base.parents) if not p.exists()]
        base.mkdir(parents=True, exist_ok=True)
        name = env_name(env_id)
        taken = [int(p.name.rsplit("_", 1)[1]) for p in base.glob(f"{name}_*") if p.name.rsplit("_", 1)[1].isdigit()]
        n = max(taken, default=0) + 1
        while True:
            try:
                (base / f"{name}_{n}").mkdir()
                break
            except FileExistsError:
                n += 1
        folder = cls(base / f"{name}_{n}", env_id)
        folder.created_parents = created
        folder.lock()
        return folder

    @classmethod
    def open(cls, path: str | Path) -> RunFolder:
        """An existing run folder (its env id read from ``args.yml``)."""
        path = Path(path)
        args_files = sorted(path.glob("*/args.yml"))
        if not path.is_dir() or not args_files:
            raise ValueError(f"{str(path)!r} is not a run folder written by python -m sparse_rl.train (no <Env>/args.yml)")
        saved = yaml.load(args_files[0].read_text(), Loader=yaml.UnsafeLoader)
        return cls(path, str(saved["env"]))

    def lock(self) -> None:
        """Hold this folder exclusively until the process ends (``ValueError`` if another process holds it)."""
        if self._lock_fd is not None:
            return
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ValueError(f"run folder {str(self.path)!r} is in use by another process (pid {owner}): wait for it to "
                             "finish, or use another -f folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def is_locked(self) -> bool:
        """Whether another process holds this folder now."""
        if self._lock_fd is not None or not (self.path / LOCK_FILE).is_file():
            return False
        fd = os.open(self.path / LOCK_FILE, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def remove(self) -> None:
        """Delete a folder this process claimed but could not start (nothing is left half-written)."""
        import shutil

        self.unlock()
        shutil.rmtree(self.path, ignore_errors=True)
        for parent in self.created_parents:  # innermost first; only if still empty (another run may use them)
            try:
                parent.rmdir()
            except OSError:
                break

    # -------------------------------------------------------------------------------------------------- paths
    @property
    def name(self) -> str:
        return env_name(self.env_id)

    @property
    def params_dir(self) -> Path:
        return self.path / self.name

    @property
    def model_path(self) -> Path:
        return self.path / f"{self.name}.zip"

    @property
    def best_model_path(self) -> Path:
        return self.path / "best_model.zip"

    @property
    def vecnormalize_path(self) -> Path:
        return self.params_dir / "vecnormalize.pkl"

    def statistics_path(self, best: bool = False) -> Path:
        """The VecNormalize statistics of the final model, or of ``best_model.zip`` (saved with it; a run written
        before that holds only the final ones, which the best model is then paired with: said in one line)."""
        from sparse_rl.sb3.eval_callback import BEST_STATISTICS

        if best and self.vecnormalize_path.is_file():
            if (self.path / BEST_STATISTICS).is_file():
                return self.path / BEST_STATISTICS
            print(f"note: {self.path} has no {BEST_STATISTICS} (written before it was saved): best_model.zip is "
                  "paired with the final model's VecNormalize statistics")
        return self.vecnormalize_path

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def summary_path(self) -> Path:
        return self.path / RUN_SUMMARY

    def agent_path(self, best: bool = False) -> Path:
        path = self.best_model_path if best else self.model_path
        if not path.is_file():
            other = self.model_path if best else self.best_model_path
            shipped = (self.path / AGENT_RESULTS).is_file()  # a packaged agent (agents/), not a training run
            hint = (f"use {'--last' if best else '--best'} ({other.name} is there)" if other.is_file()
                    else "the agent folder is incomplete: check it out again" if shipped else "train first")
            if (self.path / "export").is_dir():
                hint += f"; its export loads without SB3: sparse_rl.load_exported('{self.path / 'export'}')"
            raise ValueError(f"{path} not found: {hint}")
        return path

    # ------------------------------------------------------------------------------------------------- files
    def write_run_files(self, spec: Any, hyperparams: dict[str, Any], topology: dict[str, Any] | None,
                        resolved: dict[str, Any], argv: list[str] | None = None) -> None:
        """``config.yml`` and ``args.yml`` as RL Zoo writes them (OrderedDicts), ``resolved.yml`` and ``command.txt``
        (``argv``: the train arguments; default the process's own, ``sys.argv[1:]``)."""
        self.params_dir.mkdir(parents=True, exist_ok=True)
        config = config_record(hyperparams, topology)
        _atomic_text(self.params_dir / "config.yml", yaml.dump(OrderedDict(sorted(config.items()))))
        args = asdict(spec) | {"env_kwargs": spec.env_kwargs, "folder": spec.log_folder}
        _atomic_text(self.params_dir / "args.yml", yaml.dump(OrderedDict(sorted(args.items()))))
        _atomic_text(self.params_dir / "resolved.yml", yaml.safe_dump(resolved, sort_keys=False))
        command = [os.path.basename(sys.executable), "-m", "sparse_rl.train", *(sys.argv[1:] if argv is None else argv)]
        _atomic_text(self.path / "command.txt", shlex.join(command) + "\n")  # quoted: it runs as written

    def read_config(self) -> dict[str, Any]:
        """The saved ``config.yml`` (hyperparameters; ``normalize`` and ``*_kwargs`` as RL Zoo writes them)."""
        path = self.params_dir / "config.yml"
        if not path.is_file():
            raise ValueError(f"{path} not found: {self.path} is not a complete run folder")
        return dict(yaml.load(path.read_text(), Loader=yaml.UnsafeLoader))

    def read_resolved(self) -> dict[str, Any]:
        """The saved ``resolved.yml`` (``{}`` for a run written before it existed)."""
        path = self.params_dir / "resolved.yml"
        return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}

    def read_args(self) -> dict[str, Any]:
        return dict(yaml.load((self.params_dir / "args.yml").read_text(), Loader=yaml.UnsafeLoader))

    def update_args(self, **changes: Any) -> None:
        """Rewrite ``args.yml`` with ``changes`` (a resumed run's new ``-n`` becomes its target)."""
        args = {**self.read_args(), **changes}
        _atomic_text(self.params_dir / "args.yml", yaml.dump(OrderedDict(sorted(args.items()))))

    def update_target(self, n_timesteps: int, schedule: dict[str, Any] | None) -> None:
        """A resumed run's new ``-n``: its target in ``args.yml``, ``config.yml`` and ``resolved.yml`` (with the topology
        schedule resolved against it), so that the saved settings describe the run that trains."""
        self.update_args(n_timesteps=n_timesteps)
        config = self.read_config()
        config["n_timesteps"] = n_timesteps
        _atomic_text(self.params_dir / "config.yml", yaml.dump(OrderedDict(sorted(config.items()))))
        resolved = self.read_resolved()
        if resolved:
            resolved.setdefault("hyperparams", {})["n_timesteps"] = n_timesteps
            if schedule is not None:
                resolved["topology_schedule"] = schedule
            _atomic_text(self.params_dir / "resolved.yml", yaml.safe_dump(resolved, sort_keys=False))

    def write_summary(self, summary: dict[str, Any]) -> None:
        _atomic_text(self.summary_path, json.dumps(summary, indent=2))

    def read_summary(self) -> dict[str, Any] | None:
        return json.loads(self.summary_path.read_text()) if self.summary_path.is_file() else None

    def resumes(self) -> list[dict[str, Any]]:
        """Each ``--resume`` of this run: the step it continued from, when, and whether the environments' episodes
        were replayed (an exact continuation) or restarted (``resumes.json``; empty for a run never interrupted)."""
        path = self.path / RESUMES
        return list(json.loads(path.read_text())) if path.is_file() else []

    def record_resume(self, entry: dict[str, Any]) -> None:
        _atomic_text(self.path / RESUMES, json.dumps([*self.resumes(), entry], indent=2))


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def code_version() -> dict[str, Any]:
    """The code that runs: ``sparse_rl``'s version and, in a git checkout, its commit and whether the package, configs
    or suites differ from it (``None`` outside a checkout, e.g. an installed wheel)."""
    import subprocess
    from importlib import metadata

    root = Path(__file__).resolve().parents[2]  # sparse_rl/harness/runs.py -> the checkout
    try:
        version: str | None = metadata.version("sparse_rl")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        version = None
    found: dict[str, Any] = {"sparse_rl": version, "git_commit": None, "git_dirty": None}
    if (root / ".git").exists():
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()

        try:
            found["git_commit"] = git("rev-parse", "HEAD")
            found["git_dirty"] = bool(git("status", "--porcelain", "--", "sparse_rl", "configs", "envs"))
        except (OSError, subprocess.SubprocessError):
            pass
    return found


def run_summary(spec: Any, model: Any, method: str, sparsity: float, wall_time_s: float,
                tensorboard_dir: str | None, code: dict[str, Any] | None = None) -> dict[str, Any]:
    """``run.json``: who the run is (algo, env, method, sparsity, seed), what it cost (nnz, FLOPs, wall time), the
    code that trained it (``code``: :func:`code_version` when the training, or its last resume, started) and what
    happened (``n_updates``: SB3's update counter, gradient steps for SAC/TD3/DQN, epochs for PPO, rollouts for A2C;
    ``topology_updates``: ``None`` without a TopologyCallback)."""
    from sparse_rl.sb3.flops import policy_flops_for_space
    from sparse_rl.sb3.report import sparsity_report

    total = sparsity_report(model)["total"]
    flops = policy_flops_for_space(model.policy, model.observation_space)
    return {
        "algo": spec.algo, "env": spec.env, "method": method, "sparsity": sparsity, "seed": spec.seed,
        "n_timesteps": int(model.num_timesteps), "nnz": total["nnz"], "numel": total["numel"], "density": total["density"],
        "inference_flops_vs_dense": flops["inference_vs_dense"], "training_flops_vs_dense": flops["training_vs_dense"],
        "wall_time_s": wall_time_s, "steps_per_s": model.num_timesteps / max(wall_time_s, 1e-9),
        "tensorboard_dir": tensorboard_dir, "finished": time.time(), "code": code,
        "n_updates": int(getattr(model, "_n_updates", 0)),
        "topology_updates": (getattr(model.policy, "topology_state", None) or {}).get("updater", {}).get("num_updates"),
    }


def load_agent(run_dir: str | Path, best: bool = False, device: str = "cpu") -> tuple[Any, Any, dict[str, Any]]:
    """(model, run summary, hyperparameters) of a run folder written by ``python -m sparse_rl.train``."""
    from sparse_rl.analysis.runs import load_run
    from sparse_rl.harness.resolve import algo_class

    run = load_run(Path(run_dir))
    folder = RunFolder(run_dir, run.env)
    path = folder.agent_path(best)
    try:
        model = algo_class(run.algo).load(path, device=device)
    except Exception as error:  # a truncated or corrupted file: one line, not a traceback from zipfile/torch
        first = error_line(error)
        raise ValueError(f"{path} cannot be loaded ({type(error).__name__}: {first}): the file is damaged or not an "
                         f"SB3 {run.algo.upper()} model") from None
    return model, run, folder.read_config()


def config_record(hyperparams: dict[str, Any], topology: dict[str, Any] | None) -> dict[str, Any]:
    """The ``config.yml`` record of resolved hyperparameters, as RL Zoo saves them: ``*_kwargs`` and ``normalize`` as
    expression strings (``env_kwargs`` stays a mapping: RL Zoo reads it so), the TopologyCallback in ``callback``."""
    from sparse_rl.harness.hyperparams import EXPRESSION_KEYS, TOPOLOGY_CALLBACK, normalizes, to_expression

    saved = {k: v for k, v in hyperparams.items() if not callable(v)}
    for key in EXPRESSION_KEYS:
        if isinstance(saved.get(key), dict) and key != "env_kwargs":
            saved[key] = to_expression(saved[key])
    saved["policy_kwargs"] = to_expression(hyperparams.get("policy_kwargs") or {})
    saved["normalize"] = to_expression(hyperparams["normalize"]) if normalizes(hyperparams.get("normalize")) else False
    if topology is not None:
        saved["callback"] = [*hyperparams.get("callback", []), {TOPOLOGY_CALLBACK: topology}]
    return saved


def saved_hyperparams(config: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters of a saved ``config.yml`` with ``normalize`` / ``*_kwargs`` strings read back as dicts.

    ``policy_kwargs`` that cannot be read back (a class outside ``torch.nn`` / ``torch.optim``, saved by its repr) are
    left out: the saved model holds its own policy arguments.
    """
    from sparse_rl.harness.hyperparams import EXPRESSION_KEYS, kwargs_dict, resolved_normalize

    result = dict(config)
    for key in EXPRESSION_KEYS:
        if key in result:
            try:
                result[key] = kwargs_dict(result[key], key)
            except ValueError:
                if key != "policy_kwargs":
                    raise
                result[key] = {}
    result["normalize"] = resolved_normalize(result)
    return result
