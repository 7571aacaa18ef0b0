"""Run folders written by ``python -m sparse_rl.train``: evaluations, the run summary and TensorBoard scalars."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RUN_SUMMARY = "run.json"
#: settings that make a run sparse (SparseConfig's fields in sparse_rl.sb3.builders, the policy class, the topology
#: schedule): a sparse configuration and its dense baseline may differ in these and only these
SPARSE_SETTINGS = ("policy", "topology", *(f"policy_kwargs.{k}" for k in (
    "sparsity", "actor_sparsity", "critic_sparsity", "distribution", "dense_layers", "backend", "constant_fan_in",
    "start_dense", "init_scale")))
TRAINED_STEPS = "trained env steps"
SCHEDULE_KEYS = ("update_every", "start", "end", "drop_fraction", "drop_schedule")


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
    settings: dict[str, Any] | None = None  # resolved settings without the seed (resolved.yml); None: not recorded
    configuration: str = ""  # the label, plus the settings that tell it apart from same-label runs (find_runs)
    episodes: int = 0  # evaluation episodes per evaluation point

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
    def config(self) -> str:
        """The configuration this run is a seed of: :attr:`label`, with the differing settings when runs of the same
        label differ (set by :func:`find_runs`)."""
        return self.configuration or self.label

    @property
    def final_return(self) -> float:
        return float(self.returns[-1]) if len(self.returns) else float("nan")


def load_run(path: Path) -> Run:
    """Read a run folder (needs ``evaluations.npz`` and ``run.json``)."""
    path = Path(path)
    summary_file = path / RUN_SUMMARY
    if not summary_file.is_file():
        inside = sorted(str(p.parent) for p in path.glob(f"*/*/{RUN_SUMMARY}")) + sorted(
            str(p.parent) for p in path.glob(f"*/{RUN_SUMMARY}"))
        if inside:  # the -f folder of train holds <algo>/<Env>_<n> run folders
            raise ValueError(f"{path} is a log folder, not a run folder: its runs are {', '.join(inside[:4])}"
                             f"{' ...' if len(inside) > 4 else ''}")
        raise ValueError(f"{path} has no {RUN_SUMMARY}: it was not written by python -m sparse_rl.train, or its training "
                         "did not finish (--resume finishes it)")
    try:
        summary = json.loads(summary_file.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{summary_file} is unreadable ({type(error).__name__}: {error}): the file is damaged") from None
    evaluations = path / "evaluations.npz"
    walltime = None
    if evaluations.is_file():
        data = np.load(evaluations)
        timesteps, returns = data["timesteps"], data["results"].mean(axis=1)
        walltime = data["walltime_s"] if "walltime_s" in data else None
        episodes = int(data["results"].shape[1]) if data["results"].ndim == 2 else 0
    else:
        timesteps, returns, episodes = np.zeros(0, dtype=int), np.zeros(0), 0
    return Run(path=path, algo=summary["algo"], env=summary["env"], method=summary["method"],
               sparsity=float(summary["sparsity"]), seed=int(summary["seed"]), timesteps=timesteps, returns=returns,
               summary=summary, walltime=walltime, settings=_settings(path), episodes=episodes)


def _settings(path: Path) -> dict[str, Any] | None:
    """What the run trained with, the seed left out: ``<Env>/resolved.yml``'s hyperparameters and topology, flattened
    to dotted keys (the distribution is in ``policy_kwargs``); ``None`` for runs written before resolved.yml existed."""
    import yaml

    files = sorted(path.glob("*/resolved.yml"))
    if not files:
        return None
    data = yaml.safe_load(files[0].read_text()) or {}
    hyper = dict(data.get("hyperparams") or {})
    callbacks = [c for c in hyper.pop("callback", None) or [] if "TopologyCallback" not in str(c)]
    topology = {k: v for k, v in (data.get("topology") or {}).items() if k != "seed"}
    schedule = data.get("topology_schedule")  # the schedule as trained, defaults filled in (runs since it existed)
    if topology and schedule:
        topology = {"method": topology.get("method"), **{k: schedule[k] for k in SCHEDULE_KEYS},
                    **{k: v for k, v in topology.items() if k not in (*SCHEDULE_KEYS, "method", "verbose")}}
    return _flatten({"hyperparams": {**hyper, "callback": callbacks}, "topology": topology})


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip(".").removeprefix("hyperparams."): value}


def assign_configurations(runs: list[Run], say: Callable[[str], Any] = print) -> list[Run]:
    """Tell apart runs that share a label but not their settings, and drop repeats of one configuration and seed.

    Runs of one ``(algo, env, label)`` whose settings differ (another distribution, ``net_arch``, ``n_timesteps``...)
    are different configurations, not seeds of one: each gets ``configuration = "<label> (<key>=<value>, ...)"``
    naming the settings that differ, and one line says so. A second run with the same configuration and seed is a
    repeat, not another seed: only the first (by path) is kept, and one line says so. Returns the runs kept.
    """
    by_label: dict[tuple[str, str, str], list[Run]] = defaultdict(list)
    for run in runs:
        by_label[(run.algo, run.env, run.label)].append(run)
    for (algo, env, label), group in by_label.items():
        known = [r.settings for r in group if r.settings is not None]
        keys = sorted({k for s in known for k in s if len({repr(t.get(k)) for t in known}) > 1})
        if len(known) < len(group) and known:
            keys.append("settings")
        if not keys:
            continue
        for run in group:
            if run.settings is None:
                run.configuration = f"{label} (settings not recorded)"
            else:
                shown = ", ".join(f"{k}={run.settings.get(k, '-')}" for k in keys if k != "settings")
                run.configuration = f"{label} ({shown})" if shown else label
        say(f"{algo} {env}: the runs labelled {label!r} differ in {', '.join(keys)}: reported as separate "
            f"configurations")
    kept: dict[tuple[str, str, str, int], Run] = {}
    for run in runs:
        key = (run.algo, run.env, run.config, run.seed)
        if key in kept:
            say(f"{run.path} repeats seed {run.seed} of {run.algo} {run.env} {run.config!r} ({kept[key].path}): "
                f"counted once")
            continue
        kept[key] = run
    note_baseline_differences(list(kept.values()), say)
    note_comparability(list(kept.values()), say)
    note_inert_runs(list(kept.values()), say)
    return list(kept.values())


def note_inert_runs(runs: list[Run], say: Callable[[str], Any] = print) -> None:
    """One line per run that did not do what its label says: no gradient step (``learning_starts`` past its steps) or
    no topology update of a rewiring method (its schedule never fired: a static network in effect). Runs finished
    before ``run.json`` recorded these are not checked."""
    for run in runs:
        if run.summary.get("n_updates") == 0:
            say(f"{run.path} ({run.config}) took no gradient step: an untrained agent (learning_starts >= its steps)")
        elif run.summary.get("topology_updates") == 0 and run.method not in ("dense", "static"):
            say(f"{run.path} ({run.config}) ran no {run.method} update (its schedule never fired): its masks stayed "
                "as initialised, a static network in effect")


def note_comparability(runs: list[Run], say: Callable[[str], Any] = print) -> None:
    """One line for what a table pooling these runs would hide: configurations of one algo and env trained on
    other seeds or evaluated with other episode counts, and sparse runs with no single dense baseline ("vs dense"
    is then n/a)."""
    for (algo, env), configs in _by_configuration(runs).items():
        seeds = {config: sorted(r.seed for r in group) for config, group in configs.items()}
        if len(configs) > 1 and len({tuple(v) for v in seeds.values()}) > 1:
            shown = "; ".join(f"{config}: {v}" for config, v in seeds.items())
            say(f"{algo} {env}: the configurations ran on different seeds ({shown}): their means and 'vs dense' "
                "compare different seed sets")
        episodes = {r.episodes for group in configs.values() for r in group if r.episodes}
        if len(episodes) > 1:
            shown = "; ".join(f"{config}: {sorted({r.episodes for r in group})}" for config, group in configs.items())
            say(f"{algo} {env}: the runs' training-time evaluations used different episode counts ({shown})")
        dense = [config for config in configs if config.startswith("dense (")]
        if "dense" not in configs and dense and len(configs) > len(dense):
            say(f"{algo} {env}: 'vs dense' is n/a: the dense runs differ in settings ({'; '.join(dense)}), so no one "
                "of them is the baseline")


def note_few_seeds(runs: list[Run], say: Callable[[str], Any] = print) -> None:
    """One line per algo and env with configurations of fewer than 3 seeds: a per-configuration 95 % CI over seeds is
    then the seeds' own range (one seed: a point), not an interval to judge by."""
    for (algo, env), configs in _by_configuration(runs).items():
        few = [f"{config} ({len(group)})" for config, group in configs.items() if len(group) < 3]
        if few:
            say(f"{algo} {env}: fewer than 3 seeds in {', '.join(few)}: their 95 % CIs are bootstrap ranges of so few "
                "runs (the seeds' own values; one seed: a point), not intervals to judge by")


def _by_configuration(runs: list[Run]) -> dict[tuple[str, str], dict[str, list[Run]]]:
    """``(algo, env) -> configuration -> its runs``."""
    grouped: dict[tuple[str, str], dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        grouped[(run.algo, run.env)][run.config].append(run)
    return grouped


def unfinished_runs(root: str | Path) -> list[Path]:
    """Run folders under ``root`` with evaluations but no ``run.json``: training was interrupted (``--resume``
    finishes them), or another trainer wrote them (``rl_zoo3.train``: no ``command.txt`` either)."""
    return sorted(p.parent for p in Path(root).rglob("evaluations.npz") if not (p.parent / RUN_SUMMARY).is_file())


def note_baseline_differences(runs: list[Run], say: Callable[[str], Any] = print) -> None:
    """One line for each sparse configuration whose runs differ from its dense baseline's (the ``dense``
    configuration of the same algo and env) in more than the sparse settings (:data:`SPARSE_SETTINGS`): other
    hyperparameters (``n_envs``, ``learning_rate``...) or other trained env steps (a resumed run), so that a
    "vs dense" figure never silently compares more than sparsity."""
    for (algo, env), configs in _by_configuration(runs).items():
        dense = configs.get("dense")
        if not dense:
            continue
        for config, group in configs.items():
            if config == "dense":
                continue
            recorded = all(r.settings is not None for r in [*dense, *group])  # else: only the trained steps
            base, other = _shared_settings(dense, recorded), _shared_settings(group, recorded)
            keys = sorted(k for k in set(base) | set(other) if base.get(k, {"'-'"}) != other.get(k, {"'-'"}))
            if keys:
                shown = ", ".join(f"{k} ({_values(other.get(k))} vs {_values(base.get(k))})" for k in keys)
                say(f"{algo} {env}: {config!r} and its dense baseline differ in more than sparsity: {shown}; its "
                    "'vs dense' compares these too")


def _shared_settings(runs: list[Run], with_settings: bool) -> dict[str, set[str]]:
    """``setting -> the values the runs have`` (missing: ``-``), sparse settings left out, trained steps added."""
    values: dict[str, set[str]] = defaultdict(set)
    keys = {k for r in runs for k in (r.settings or {})} if with_settings else set()
    keys = {k for k in keys if not any(k == s or k.startswith(f"{s}.") for s in SPARSE_SETTINGS)}
    for run in runs:
        for key in keys:
            value = (run.settings or {}).get(key, "-")
            values[key].add(repr("-" if value == {} else value))  # an empty policy_kwargs is no policy_kwargs
        values[TRAINED_STEPS].add(repr(run.summary.get("n_timesteps", "-")))
    return dict(values)


def _values(values: set[str] | None) -> str:
    return "/".join(sorted(values or {"-"})).replace("'", "")


def print_and_keep(notes: list[str]) -> Callable[[str], None]:
    """A ``say`` for :func:`find_runs` and the notes after it: prints each line and appends it to ``notes`` (which
    the caller writes into its report)."""
    def say(line: str) -> None:
        print(line)
        notes.append(line)

    return say


def find_runs(root: str | Path, say: Callable[[str], Any] = print, keep: Callable[[Run], bool] | None = None
              ) -> list[Run]:
    """Every run folder (one holding ``run.json``) under ``root`` (those ``keep`` accepts), sorted by path, with
    configurations assigned (:func:`assign_configurations`: runs whose settings differ are not pooled as seeds,
    repeats are counted once)."""
    root = Path(root)
    if not root.exists():
        raise ValueError(f"log folder {str(root)!r} does not exist")
    runs = [load_run(p.parent) for p in sorted(root.rglob(RUN_SUMMARY))]
    without = unfinished_runs(root)
    unfinished = [p for p in without if (p / "command.txt").is_file()]  # python -m sparse_rl.train writes it first
    foreign = [p for p in without if p not in unfinished]
    if unfinished:
        say(f"{len(unfinished)} unfinished run folder(s) left out (no run.json: interrupted; --resume finishes them): "
            + ", ".join(str(p) for p in unfinished))
    if foreign:
        say(f"{len(foreign)} run folder(s) not written by python -m sparse_rl.train left out (e.g. rl_zoo3.train runs: "
            "no run.json, which reports read; train with python -m sparse_rl.train to compare): "
            + ", ".join(str(p) for p in foreign))
    return assign_configurations([r for r in runs if keep is None or keep(r)], say)


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
