"""Aggregate metrics across tasks and seeds with rliable (Agarwal et al. 2021, "Deep RL at the Edge of the Statistical
Precipice"): IQM, median, mean and optimality gap with stratified-bootstrap 95 % CIs, performance profiles and the
probability of improvement of each sparse configuration over dense, plus their PNG plots.

Scores are the normalised ones when every task has references; otherwise the tasks without references are left out
of the aggregate, and raw returns are used when no task has any. Each configuration's score matrix is
``(runs, tasks)`` over the tasks that every configuration covers; with unequal seed counts per task, the first
``min`` seeds (by seed) of each task are used.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

METRICS = ("iqm", "median", "mean", "optimality_gap")


def import_rliable() -> tuple[Any, Any, Any]:
    """``(library, metrics, plot_utils)`` of rliable, imported on first use (it pulls in arch and statsmodels)."""
    from rliable import library, metrics, plot_utils

    return library, metrics, plot_utils


def score_kind(rows: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """``("normalized" | "return", left-out tasks)``: the score to aggregate and the tasks without references."""
    tasks = sorted({r["task"] for r in rows})
    missing = sorted({r["task"] for r in rows if not _finite(r.get("normalized"))})
    if len(missing) == len(tasks):
        return "return_mean", []
    return "normalized", missing


def _finite(value: Any) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def score_matrices(rows: list[dict[str, Any]], key: str, skip_tasks: tuple[str, ...] | list[str] = ()
                   ) -> tuple[dict[str, np.ndarray], list[str]]:
    """``group -> (runs, tasks)`` score matrices over the tasks every group covers, and those tasks."""
    by_group: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row["task"] not in skip_tasks:
            by_group[row["group"]][row["task"]].append((int(row["seed"]), float(row[key])))
    if not by_group:
        return {}, []
    tasks = sorted(set.intersection(*[set(t) for t in by_group.values()]))
    matrices = {}
    for group, per_task in by_group.items():
        if not tasks:
            continue
        n_runs = min(len(per_task[t]) for t in tasks)
        columns = [[score for _, score in sorted(per_task[t])[:n_runs]] for t in tasks]
        matrices[group] = np.array(columns, dtype=float).T
    order = sorted(matrices, key=lambda group: (_algo_prefix(group), not _is_dense(group), group))
    return {group: matrices[group] for group in order}, tasks


def _algo_prefix(group: str) -> str:
    """``"SAC "`` for ``"SAC rigl 90%"`` (groups of several algorithms), else ``""``."""
    first = group.split(" ")[0]
    return f"{first} " if first.isupper() else ""


def _is_dense(group: str) -> bool:
    """Whether a group is a dense baseline (``dense``, ``SAC dense``), not a label that ends in it (``rigl90-input-dense``)."""
    return group == f"{_algo_prefix(group)}dense"


@contextmanager
def _global_numpy_seed(seed: int) -> Iterator[None]:
    """numpy's global generator seeded for the block and restored after it: rliable bootstraps from it
    (``np.random.choice``) whatever ``random_state`` says (arch's FutureWarning on ``random_state`` silenced)."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="random_state is deprecated", category=FutureWarning)
            yield
    finally:
        np.random.set_state(state)


def bootstrap_estimates(score_dict: dict[str, Any], func: Any, reps: int, seed: int) -> tuple[dict, dict]:
    """rliable's stratified-bootstrap interval estimates, reproducible and independent of the other keys: rliable
    resamples the keys one after the other from numpy's global generator, so a key's CI used to depend on which keys
    came before it (the same comparison showed two CIs in one report). Each key is estimated in its own call, with the
    global generator seeded by ``seed``.
    """
    library, _, _ = import_rliable()
    points, intervals = {}, {}
    for key, scores in score_dict.items():
        with _global_numpy_seed(seed):
            point, interval = library.get_interval_estimates({key: scores}, func, reps=reps,
                                                             random_state=np.random.RandomState(seed))
        points[key], intervals[key] = point[key], interval[key]
    return points, intervals


def _aggregate_func(metrics: Any) -> Any:
    def func(scores: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(scores), metrics.aggregate_median(scores), metrics.aggregate_mean(scores),
                         metrics.aggregate_optimality_gap(scores, gamma=1)])

    return func


def interval_estimates(matrices: dict[str, np.ndarray], reps: int, seed: int = 0) -> dict[str, dict[str, list[float]]]:
    """``group -> metric -> [point, ci_low, ci_high]`` for IQM, median, mean and optimality gap (95 % CIs)."""
    _, metrics, _ = import_rliable()
    points, intervals = bootstrap_estimates(matrices, _aggregate_func(metrics), reps, seed)
    return {group: {name: [float(points[group][i]), float(intervals[group][0, i]), float(intervals[group][1, i])]
                    for i, name in enumerate(METRICS)} for group in matrices}


def dense_pairs(groups: list[str]) -> list[tuple[str, str]]:
    """``(sparse group, its dense group)``: same algorithm prefix, label ``dense`` (a label that merely ends in
    ``dense``, such as ``rigl90-input-dense``, is a sparse configuration)."""
    pairs = []
    for group in groups:
        prefix = _algo_prefix(group)
        if not _is_dense(group) and f"{prefix}dense" in groups:
            pairs.append((group, f"{prefix}dense"))
    return pairs


def improvement_over_dense(matrices: dict[str, np.ndarray], reps: int, seed: int = 0) -> dict[str, list[float]]:
    """``sparse group -> [P(sparse > dense), ci_low, ci_high]`` (rliable's probability of improvement)."""
    return probability_of_improvement(matrices, dense_pairs(list(matrices)), reps, seed)


def probability_of_improvement(matrices: dict[str, np.ndarray], pairs: list[tuple[str, str]], reps: int, seed: int = 0
                               ) -> dict[str, list[float]]:
    """``x -> [P(x > y), ci_low, ci_high]`` for each ``(x, y)`` of ``pairs`` (rliable, 95 % stratified bootstrap)."""
    if not pairs:
        return {}
    _, metrics, _ = import_rliable()
    pair_scores = {f"{x},{y}": (matrices[x], matrices[y]) for x, y in pairs}
    points, intervals = bootstrap_estimates(pair_scores, metrics.probability_of_improvement, reps, seed)
    result = {}
    for x, y in pairs:
        low, high = np.ravel(intervals[f"{x},{y}"])
        result[x] = [float(np.ravel(points[f"{x},{y}"])[0]), float(low), float(high)]
    return result


def performance_profiles(matrices: dict[str, np.ndarray], reps: int, seed: int = 0, n_taus: int = 41
                         ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(taus, group -> fraction of runs above tau, group -> [2, n_taus] CI)`` (score distributions)."""
    library, _, _ = import_rliable()
    every = np.concatenate([m.ravel() for m in matrices.values()])
    taus = np.linspace(min(0.0, float(every.min())), max(1.0, float(every.max())), n_taus)
    profiles, cis = {}, {}
    for group, matrix in matrices.items():  # each group's bands from its own seeded bootstrap, as in bootstrap_estimates
        with _global_numpy_seed(seed):
            profile, ci = library.create_performance_profile({group: matrix}, taus, reps=reps)
        profiles[group], cis[group] = profile[group], ci[group]
    return taus, profiles, cis


def plot(matrices: dict[str, np.ndarray], estimates: dict[str, dict[str, list[float]]], profiles: tuple,
         improvement: dict[str, list[float]], out_dir: Path, kind: str) -> dict[str, str]:
    """``aggregates.png``, ``performance_profiles.png`` and (with a dense baseline) ``probability_of_improvement.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, _, plot_utils = import_rliable()
    groups = list(matrices)
    xlabel = "Normalized score" if kind == "normalized" else "Return"
    shown = reported_metrics(kind)
    points = {g: np.array([estimates[g][m][0] for m in shown]) for g in groups}
    intervals = {g: np.array([[estimates[g][m][1] for m in shown], [estimates[g][m][2] for m in shown]]) for g in groups}
    paths = {}
    names = {"iqm": "IQM", "median": "Median", "mean": "Mean", "optimality_gap": "Optimality Gap"}
    fig, _ = plot_utils.plot_interval_estimates(points, intervals, metric_names=[names[m] for m in shown],
                                                algorithms=groups, xlabel=xlabel, max_ticks=3,
                                                xlabel_y_coordinate=-0.5 if len(groups) < 4 else -0.15)
    paths["aggregates"] = out_dir / "aggregates.png"
    fig.savefig(paths["aggregates"], bbox_inches="tight", dpi=100)
    plt.close(fig)
    taus, profile, cis = profiles
    fig, ax = plt.subplots(figsize=(7, 4.5))
    plot_utils.plot_performance_profiles(profile, taus, performance_profile_cis=cis, ax=ax, xlabel=f"{xlabel} (τ)")
    ax.legend(loc="upper right")
    paths["performance_profiles"] = out_dir / "performance_profiles.png"
    fig.savefig(paths["performance_profiles"], bbox_inches="tight", dpi=100)
    plt.close(fig)
    if improvement:
        pairs = dict(dense_pairs(groups))

        def key(x: str) -> str:  # rliable splits "x,y" on the comma: names holding commas (settings) must not
            return f"{x.replace(',', ';')},{pairs[x].replace(',', ';')}"

        probs = {key(x): value[0] for x, value in improvement.items()}
        cis_ = {key(x): np.array(value[1:]) for x, value in improvement.items()}
        fig, ax = plt.subplots(figsize=(5, 1 + 0.6 * len(probs)))
        plot_utils.plot_probability_of_improvement(probs, cis_, ax=ax)
        paths["probability_of_improvement"] = out_dir / "probability_of_improvement.png"
        fig.savefig(paths["probability_of_improvement"], bbox_inches="tight", dpi=100)
        plt.close(fig)
    return {name: str(path) for name, path in paths.items()}


def reported_metrics(kind: str) -> tuple[str, ...]:
    """The metrics that mean something for this score: the optimality gap (shortfall below a normalised score of 1)
    needs normalised scores; on raw returns it is left out (``n/a``)."""
    return METRICS if kind == "normalized" else tuple(m for m in METRICS if m != "optimality_gap")


def _mean_of(rows: list[dict[str, Any]], key: str) -> float:
    values = [float(r[key]) for r in rows if _finite(r.get(key))]
    return float(np.mean(values)) if values else math.nan


def aggregate(rows: list[dict[str, Any]], out_dir: str | Path, reps: int = 2000, seed: int = 0, plots: bool = True
              ) -> dict[str, Any]:
    """rliable aggregates of evaluated runs (rows of :func:`sparse_rl.harness.evaluation.evaluate_run`), PNGs in ``out_dir``.

    :param reps: stratified-bootstrap resamples (keep small in tests)
    :return: ``{"score", "tasks", "left_out_tasks", "groups": {group: {metrics, runs, cost columns}}, "plots"}``
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key, missing = score_kind(rows)
    matrices, tasks = score_matrices(rows, key, missing)
    if not matrices:
        raise ValueError("no task is covered by every configuration: nothing to aggregate")
    estimates = interval_estimates(matrices, reps, seed)
    improvement = improvement_over_dense(matrices, reps, seed)
    profiles = performance_profiles(matrices, reps, seed)
    groups = {}
    for group, matrix in matrices.items():
        members = [r for r in rows if r["group"] == group]
        groups[group] = {
            **{m: estimates[group][m] if m in reported_metrics(key) else None for m in METRICS},
            "runs": int(matrix.shape[0]), "tasks": int(matrix.shape[1]),
            "probability_of_improvement": improvement.get(group), "density": _mean_of(members, "density"),
            "nnz": _mean_of(members, "nnz"), "inference_flops_vs_dense": _mean_of(members, "inference_flops_vs_dense"),
            "latency_ms": _mean_of(members, "latency_ms"), "latency_vs_dense": _mean_of(members, "latency_vs_dense"),
        }
    summary: dict[str, Any] = {"score": key, "tasks": tasks, "left_out_tasks": missing, "reps": reps, "groups": groups,
                               "performance_profile": {"taus": profiles[0].tolist(),
                                                       **{g: p.tolist() for g, p in profiles[1].items()}}}
    summary["plots"] = plot(matrices, estimates, profiles, improvement, out_dir, key) if plots else {}
    return summary


def _cell(values: list[float] | None, fmt: str = "{:.3f}") -> str:
    if values is None:
        return "n/a"
    return f"{fmt.format(values[0])} [{fmt.format(values[1])}, {fmt.format(values[2])}]"


def markdown_table(summary: dict[str, Any]) -> str:
    """The aggregate table: one line per configuration, metrics with their 95 % CIs and the cost columns."""
    header = ["config", "runs", "tasks", "IQM", "median", "mean", "optimality gap", "P(> dense)", "density", "params (nnz)",
              "inference FLOPs vs dense", "latency ms", "latency vs dense"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group, g in summary["groups"].items():
        cells = [group, str(g["runs"]), str(g["tasks"]), *(_cell(g[m]) for m in METRICS),
                 _cell(g["probability_of_improvement"]),
                 f"{g['density']:.3f}", f"{g['nnz']:,.0f}", f"{g['inference_flops_vs_dense']:.3f}",
                 "n/a" if math.isnan(g["latency_ms"]) else f"{g['latency_ms']:.3f}",
                 "n/a" if math.isnan(g["latency_vs_dense"]) else f"{g['latency_vs_dense']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
