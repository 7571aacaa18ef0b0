"""The report of a learning benchmark (``scripts/bench_learning.py``): rliable aggregates, curves, dormant neurons.

Scores are the final evaluation's mean return (>= 10 deterministic episodes at the last step) of every finished run;
the headline compares configurations on the seeds finished by all of them. IQM and mean come with 95 %
stratified-bootstrap CIs, the probability of improvement over dense with its CI (rliable, Agarwal et al. 2021).
"""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from sparse_rl.analysis.aggregate import (
    bootstrap_estimates,
    improvement_over_dense,
    interval_estimates,
    probability_of_improvement,
)
from sparse_rl.analysis.report import format_interval, relative_to_dense

REPS = 2000
DORMANT_LAST = 3  # the dormant column averages each run's last measurements, then the runs
TAU = 0.1


def _run_dir(folder: Path) -> Path | None:
    found = sorted(folder.glob("*/*/run.json"))
    return found[0].parent if found else None


def load(config_runs: list[tuple[Any, Any]]) -> dict[str, list[dict[str, Any]]]:
    """``config name -> [finished run records]`` (seed, final score, curve, wall time, dormant fractions)."""
    result: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for config, grid_run in config_runs:
        run_dir = _run_dir(grid_run.folder)
        if run_dir is None:
            continue
        summary = json.loads((run_dir / "run.json").read_text())
        data = np.load(run_dir / "evaluations.npz")
        returns = data["results"].mean(axis=1)
        record = {"seed": grid_run.seed, "final": float(returns[-1]), "final_step": int(data["timesteps"][-1]),
                  "episodes": int(data["results"].shape[1]), "timesteps": data["timesteps"].tolist(),
                  "returns": returns.tolist(), "walltime_s": data["walltime_s"].tolist() if "walltime_s" in data else None,
                  "wall_time_s": summary["wall_time_s"], "steps_per_s": summary["steps_per_s"], "nnz": summary["nnz"],
                  "density": summary["density"], "dormant": _dormant(run_dir / "dormant.csv"),
                  "resumes": summary.get("resumes")}  # None: run.json predates resume records
        result[config.name].append(record)
    return result


def _dormant(path: Path) -> dict[str, list[tuple[int, float]]]:
    """``network -> [(step, fraction at TAU)]``."""
    if not path.is_file():
        return {}
    curves: dict[str, list[tuple[int, float]]] = defaultdict(list)
    with open(path) as f:
        for row in csv.DictReader(f):
            if abs(float(row["tau"]) - TAU) < 1e-9:
                curves[row["network"]].append((int(row["timesteps"]), float(row["fraction"])))
    return dict(curves)


def _common_seeds(records: dict[str, list[dict[str, Any]]]) -> list[int]:
    sets = [{r["seed"] for r in runs} for runs in records.values()]
    return sorted(set.intersection(*sets)) if sets else []


def summarize(records: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    seeds = _common_seeds(records)
    matrices = {name: np.array([[r["final"]] for r in sorted(runs, key=lambda r: r["seed"]) if r["seed"] in seeds])
                for name, runs in records.items()}
    matrices = {name: m for name, m in matrices.items() if len(m)}
    rows = {}
    baselines = ablation_baselines(list(matrices))
    if matrices and all(len(m) >= 2 for m in matrices.values()):
        estimates = interval_estimates(matrices, REPS)
        improvement = improvement_over_dense(matrices, REPS)
        over_baseline = probability_of_improvement(matrices, list(baselines.items()), REPS)
    else:
        estimates, improvement, over_baseline = {}, {}, {}
    dense_iqm = estimates.get("dense", {}).get("iqm", [float("nan")])[0]
    for name, runs in records.items():
        end_dormant = defaultdict(list)
        for run in runs:  # one measurement is noisy (PPO measures on the last rollout: half an episode)
            for network, curve in run["dormant"].items():
                end_dormant[network].append(float(np.mean([fraction for _, fraction in curve[-DORMANT_LAST:]])))
        iqm = estimates.get(name, {}).get("iqm")
        rows[name] = {
            "seeds_finished": sorted(r["seed"] for r in runs), "iqm": iqm, "mean": estimates.get(name, {}).get("mean"),
            "iqm_vs_dense": relative_to_dense(iqm[0], dense_iqm) if iqm and name != "dense" else None,
            "p_improvement_over_dense": improvement.get(name),
            "dormant_end": {k: float(np.mean(v)) for k, v in end_dormant.items()},
            "nnz": float(np.mean([r["nnz"] for r in runs])), "density": float(np.mean([r["density"] for r in runs])),
            "wall_time_s": float(np.mean([r["wall_time_s"] for r in runs])),
            "steps_per_s": float(np.mean([r["steps_per_s"] for r in runs])),
            "per_seed": {r["seed"]: round(r["final"], 1) for r in sorted(runs, key=lambda r: r["seed"])},
            "resumes": {r["seed"]: r["resumes"] for r in sorted(runs, key=lambda r: r["seed"]) if r.get("resumes")},
            "resumes_unrecorded": sorted(r["seed"] for r in runs if r.get("resumes", []) is None),
        }
        if name in baselines:
            base = estimates.get(baselines[name], {}).get("iqm")
            rows[name] |= {"baseline": baselines[name], "p_improvement_over_baseline": over_baseline.get(name),
                           "iqm_vs_baseline": relative_to_dense(iqm[0], base[0]) if iqm and base else None}
    return {"seeds_compared": seeds, "rows": rows}


def ablation_baselines(names: list[str]) -> dict[str, str]:
    """``ablation -> its baseline``: the longest other configuration name that ``name`` extends by ``-<change>``
    (``rigl90-wd1e-4 -> rigl90``, ``dense-lr3x -> dense``); configurations without one are left out."""
    result = {}
    for name in names:
        bases = [other for other in names if other != name and name.startswith(f"{other}-")]
        if bases:
            result[name] = max(bases, key=len)
    return result


def ablation_markdown(summary: dict[str, Any]) -> str:
    """Each change against its own baseline (RigL changes against rigl90, dense changes against dense)."""
    rows = {name: row for name, row in summary["rows"].items() if row.get("baseline")}
    if not rows:
        return ""
    lines = ["", "## Each change against its baseline", "",
             "| change | baseline | IQM [95 % CI] | IQM vs baseline | P(better than baseline) [CI] | IQM vs dense |",
             "|---|---|---|---|---|---|"]
    for name, row in sorted(rows.items(), key=lambda item: (item[1]["baseline"], item[0])):
        versus = f"{row['iqm_vs_baseline']:.3f}" if row["iqm_vs_baseline"] is not None else "n/a"
        dense = f"{row['iqm_vs_dense']:.3f}" if row["iqm_vs_dense"] is not None else "n/a"
        lines.append(f"| {name} | {row['baseline']} | {format_interval(row['iqm'])} | {versus} | "
                     f"{format_interval(row['p_improvement_over_baseline'], '{:.2f}')} | {dense} |")
    return "\n".join(lines) + "\n"


def equal_wall_clock(records: dict[str, list[dict[str, Any]]]) -> dict[str, Any] | None:
    """Every configuration's return at the same training wall-clock time: the shortest finished run's (seeds compared
    by every configuration); each run scores its last evaluation at or before that time (IQM, mean, P(improvement)).

    Only meaningful when the runs shared the machine alike (the sparse-wide benchmark trains a dense and a wide run of
    each seed at the same time); ``None`` when a run has no wall-clock curve (``walltime_s`` in evaluations.npz).
    """
    seeds = _common_seeds(records)
    runs_compared = {name: [r for r in sorted(runs, key=lambda r: r["seed"]) if r["seed"] in seeds]
                     for name, runs in records.items()}
    if not seeds or not all(r["walltime_s"] for runs in runs_compared.values() for r in runs):
        return None
    budget = min(r["walltime_s"][-1] for runs in runs_compared.values() for r in runs)
    matrices, steps = {}, {}
    for name, runs in runs_compared.items():
        picked = [max(int(np.searchsorted(r["walltime_s"], budget, side="right")) - 1, 0) for r in runs]
        matrices[name] = np.array([[r["returns"][i]] for r, i in zip(runs, picked)])
        steps[name] = [r["timesteps"][i] for r, i in zip(runs, picked)]
    enough = len(seeds) >= 2
    estimates = interval_estimates(matrices, REPS) if enough else {}
    improvement = improvement_over_dense(matrices, REPS) if enough else {}
    dense_iqm = estimates.get("dense", {}).get("iqm", [float("nan")])[0]
    rows = {}
    for name in matrices:
        iqm = estimates.get(name, {}).get("iqm")
        rows[name] = {"iqm": iqm, "mean": estimates.get(name, {}).get("mean"),
                      "iqm_vs_dense": relative_to_dense(iqm[0], dense_iqm) if iqm and name != "dense" else None,
                      "p_improvement_over_dense": improvement.get(name), "env_steps_mean": float(np.mean(steps[name])),
                      "per_seed": {r["seed"]: round(float(m[0]), 1) for r, m in zip(runs_compared[name], matrices[name])},
                      "steps_per_seed": {r["seed"]: int(n) for r, n in zip(runs_compared[name], steps[name])},
                      "steps_per_s_per_seed": {r["seed"]: round(r["timesteps"][-1] / r["walltime_s"][-1], 1)
                                               for r in runs_compared[name]}}
    return {"wall_clock_s": float(budget), "seeds_compared": seeds, "rows": rows}


def equal_wall_clock_markdown(result: dict[str, Any]) -> str:
    lines = ["", f"## At equal training wall clock ({result['wall_clock_s']:.0f} s, the shortest finished run)", "",
             "Each run scores its last evaluation at or before that time. The runs trained two at a time, one torch "
             "thread each, but which runs shared the machine, and what else ran on it, varied: the per-seed speeds "
             "below show how much, and an interleaved throughput benchmark is the speed comparison.", "",
             "| config | IQM [95 % CI] | mean [95 % CI] | IQM vs dense | P(better than dense) [CI] | "
             "env steps reached (mean) |", "|---|---|---|---|---|---|"]
    for name, row in result["rows"].items():
        ratio = f"{row['iqm_vs_dense']:.3f}" if row["iqm_vs_dense"] is not None else ("1.000" if name == "dense" else "n/a")
        lines.append(f"| {name} | {format_interval(row['iqm'])} | {format_interval(row['mean'])} | {ratio} | "
                     f"{format_interval(row['p_improvement_over_dense'], '{:.2f}')} | {row['env_steps_mean']:,.0f} |")
    seeds = result["seeds_compared"]
    lines += ["", "Per seed: env steps reached at that time / the whole run's steps per second:", "",
              "| config | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for name, row in result["rows"].items():
        lines.append(f"| {name} | " + " | ".join(
            f"{row['steps_per_seed'][s]:,} / {row['steps_per_s_per_seed'][s]:.1f}" for s in seeds) + " |")
    return "\n".join(lines) + "\n"


def markdown(summary: dict[str, Any], header: str) -> str:
    lines = [header, "", f"Compared on seeds {summary['seeds_compared']} (finished by every configuration).", "",
             "| config | IQM [95 % CI] | mean [95 % CI] | IQM vs dense | P(better than dense) [CI] | "
             f"dormant (tau {TAU}, mean of the last {DORMANT_LAST} measurements) | "
             "nnz | density | wall time (s) | steps/s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in summary["rows"].items():
        dormant = ", ".join(f"{k} {v:.3f}" for k, v in sorted(row["dormant_end"].items())) or "n/a"
        ratio = f"{row['iqm_vs_dense']:.3f}" if row["iqm_vs_dense"] is not None else ("1.000" if name == "dense" else "n/a")
        lines.append(f"| {name} | {format_interval(row['iqm'])} | {format_interval(row['mean'])} | {ratio} | "
                     f"{format_interval(row['p_improvement_over_dense'], '{:.2f}')} | {dormant} | {row['nnz']:,.0f} | "
                     f"{row['density']:.3f} | {row['wall_time_s']:.0f} | {row['steps_per_s']:.1f} |")
    lines += ["", "Final return of every seed:", "", "| config | " + " | ".join(
        f"seed {s}" for s in sorted({s for r in summary["rows"].values() for s in r["per_seed"]})) + " |"]
    all_seeds = sorted({s for r in summary["rows"].values() for s in r["per_seed"]})
    lines.append("|---|" + "---|" * len(all_seeds))
    for name, row in summary["rows"].items():
        lines.append(f"| {name} | " + " | ".join(str(row["per_seed"].get(s, "-")) for s in all_seeds) + " |")
    resumed = [f"{name} seed {seed} at step {step:,} ({environments}){'' if n == 1 else f', {n} times'}"
               for name, row in summary["rows"].items() for seed, rs in sorted(row.get("resumes", {}).items())
               for (step, environments), n in Counter((r["step"], r["environments"]) for r in rs).items()]
    if resumed:
        lines += ["", "Resumed from a checkpoint (a run recorded as replayed continues exactly; one with new episodes "
                  "does not): " + "; ".join(resumed) + "."]
    unrecorded = [f"{name} seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
                  for name, row in summary["rows"].items() if (seeds := row.get("resumes_unrecorded"))]
    if unrecorded:
        lines += ["", "Written before runs recorded their resumes (whether these were resumed, and how, is not in "
                  "their files): " + "; ".join(unrecorded) + "."]
    return "\n".join(lines) + "\n"


def plot(records: dict[str, list[dict[str, Any]]], title: str, path: Path) -> Path:
    """Learning curves (IQM over seeds, 95 % bootstrap band) and dormant fractions over training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rliable import metrics

    walltime = all(r["walltime_s"] for runs in records.values() for r in runs)
    panels = 3 if walltime else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4))
    for name, runs in records.items():
        horizon = min(len(r["returns"]) for r in runs)
        steps = np.array(runs[0]["timesteps"][:horizon])
        scores = np.array([r["returns"][:horizon] for r in runs])[:, None, :]  # (runs, tasks, points)
        if len(runs) >= 2:
            def iqm_per_point(s: np.ndarray) -> np.ndarray:
                return np.array([metrics.aggregate_iqm(s[..., i]) for i in range(s.shape[-1])])
            points, cis = bootstrap_estimates({name: scores}, iqm_per_point, reps=500, seed=0)
            line, low, high = points[name], cis[name][0], cis[name][1]
        else:
            line = low = high = scores[0, 0]
        axes[0].plot(steps, line, label=f"{name} ({len(runs)} seeds)")
        axes[0].fill_between(steps, low, high, alpha=0.2)
        if walltime:
            seconds = np.mean([r["walltime_s"][:horizon] for r in runs], axis=0)
            axes[2].plot(seconds, line, label=name)
            axes[2].fill_between(seconds, low, high, alpha=0.2)
        for network in sorted(runs[0]["dormant"]):
            curves = [r["dormant"].get(network, []) for r in runs]
            n = min(len(c) for c in curves)
            if n:
                axes[1].plot([p[0] for p in curves[0][:n]], np.mean([[p[1] for p in c[:n]] for c in curves], axis=0),
                             label=f"{name} {network}")
    axes[0].set(xlabel="environment steps", ylabel="evaluation return (IQM)", title=title)
    axes[1].set(xlabel="environment steps", ylabel=f"dormant fraction (tau {TAU})", title="dormant neurons (mean)")
    if walltime:
        axes[2].set(xlabel="training wall-clock seconds", ylabel="evaluation return (IQM)", title="return vs wall clock")
    for axis in axes:
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report_steps(path: Path) -> int | None:
    """The step budget per run of an earlier report ``<out>.json``; ``None`` when there is none.

    :raises ValueError: the file is there but unreadable or records no step budget (one line)
    """
    if not path.is_file():
        return None
    try:
        return int(json.loads(path.read_text())["steps"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is unreadable or records no step budget ({type(error).__name__})") from None


def saved_records(path: Path, steps: int) -> dict[str, list[dict[str, Any]]]:
    """The run records of an earlier report (``<out>.json``) of the same step budget: finished runs whose folders
    may be gone (another session, another machine) still count and are not trained again."""
    if report_steps(path) != steps:
        return {}
    return {name: list(runs) for name, runs in json.loads(path.read_text()).get("records", {}).items()}


def merge(records: dict[str, list[dict[str, Any]]], saved: dict[str, list[dict[str, Any]]]
          ) -> dict[str, list[dict[str, Any]]]:
    """``records`` plus the saved records of (configuration, seed) pairs it lacks."""
    merged = {name: list(runs) for name, runs in records.items()}
    for name, runs in saved.items():
        have = {r["seed"] for r in merged.get(name, [])}
        merged.setdefault(name, []).extend(r for r in runs if r["seed"] not in have)
    return {name: sorted(runs, key=lambda r: r["seed"]) for name, runs in merged.items()}


def partial_note(records: dict[str, list[dict[str, Any]]], expected: int) -> str:
    """A line for a report some of whose runs have not finished (``""`` when all have): its table is not the result."""
    finished = sum(len(runs) for runs in records.values())
    if finished >= expected:
        return ""
    return (f"**Partial: {finished} of {expected} runs finished; the others are still training, so this is not the "
            "benchmark's result yet.**\n\n")


def write_report(bench_name: str, bench: Any, config_runs: list[tuple[Any, Any]], root: Path, command: str, out: str,
                 results: Path) -> list[Path]:
    records = merge(load(config_runs), saved_records(results / f"{out}.json", bench.steps))
    if not records:
        return []
    summary = summarize(records)
    header = (f"# {bench_name}: {bench.algo.upper()} on {bench.env}, {bench.steps:,} env steps per run\n\n"
              f"{partial_note(records, len(config_runs))}"
              f"Command: `{command}`. {bench.note[:1].upper() + bench.note[1:] + '. ' if bench.note else ''}Final score: "
              "mean return of the final "
              f"evaluation ({records[next(iter(records))][0]['episodes']} deterministic episodes) at the last step. Wall "
              "time and steps/s come from runs that shared the machine with other jobs: not a speed comparison.")
    results.mkdir(exist_ok=True)
    md = results / f"{out}.md"
    wall_clock = equal_wall_clock(records) if bench.extra.get("equal_wall_clock") else None
    md.write_text(markdown(summary, header) + ablation_markdown(summary)
                  + (equal_wall_clock_markdown(wall_clock) if wall_clock else ""))
    js = results / f"{out}.json"
    js.write_text(json.dumps({"bench": bench_name, "command": command, "steps": bench.steps,
                              "runs_expected": len(config_runs), **summary,
                              **({"equal_wall_clock": wall_clock} if wall_clock else {}), "records": records},
                             indent=1, default=float))
    png = plot(records, f"{bench.algo.upper()} {bench.env}", results / f"{out}.png")
    return [md, js, png]
