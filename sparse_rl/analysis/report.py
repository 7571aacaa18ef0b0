"""Dense-vs-sparse comparison report: learning curves with 95 % CIs over seeds, and a summary table (md + html)."""

from __future__ import annotations

import html
import json
import textwrap
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sparse_rl.analysis.runs import Run

N_BOOTSTRAP = 2000


def mean_ci(values: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Mean and a 95 % percentile-bootstrap confidence interval of the mean (a single value gives a zero-width CI)."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(N_BOOTSTRAP, len(values)))].mean(axis=1)
    return mean, float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def relative_to_dense(value: float, dense: float) -> float:
    """``1 + (value - dense) / |dense|``: 1.0 equals dense, above 1 is better; works for negative returns too."""
    return 1.0 + (value - dense) / abs(dense) if dense else float("nan")


def format_interval(values: list[float] | None, fmt: str | None = None) -> str:
    """``point [low, high]`` of an estimate with its CI (``n/a`` without one); by default returns of 100 or more
    without decimals, smaller ones (MinAtar) with two.

    :param fmt: a format such as ``"{:.2f}"`` for every number instead
    """
    if not values:
        return "n/a"
    point, low, high = values
    fmt = fmt or ("{:.0f}" if max(abs(point), abs(low), abs(high)) >= 100 else "{:.2f}")
    return f"{fmt.format(point)} [{fmt.format(low)}, {fmt.format(high)}]"


def group_runs(runs: list[Run]) -> dict[tuple[str, str], dict[str, list[Run]]]:
    """``(algo, env) -> label -> runs`` (the seeds of each configuration)."""
    groups: dict[tuple[str, str], dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        groups[(run.algo, run.env)][run.config].append(run)
    return groups


def _aligned_curves(runs: list[Run]) -> tuple[np.ndarray, np.ndarray]:
    """Curves of several seeds interpolated onto the evaluation steps they all reach."""
    runs = [r for r in runs if len(r.timesteps)]
    horizon = min(int(r.timesteps[-1]) for r in runs)
    grid = np.unique(np.concatenate([r.timesteps[r.timesteps <= horizon] for r in runs]))
    return grid, np.stack([np.interp(grid, r.timesteps, r.returns) for r in runs])


def _summary_value(runs: list[Run], key: str) -> float:
    values = [r.summary.get(key) for r in runs if r.summary.get(key) is not None]
    return float(np.mean(values)) if values else float("nan")


def summary_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per (algo, env, configuration): final return (mean, CI), its ratio to dense and the cost columns."""
    rows = []
    for (algo, env), by_label in sorted(group_runs(runs).items()):
        dense_runs = by_label.get("dense")
        dense_mean = mean_ci(np.array([r.final_return for r in dense_runs]))[0] if dense_runs else float("nan")
        for label in sorted(by_label, key=lambda name: (name != "dense", name)):
            group = by_label[label]
            mean, low, high = mean_ci(np.array([r.final_return for r in group]))
            rows.append({
                "algo": algo, "env": env, "config": label, "seeds": len(group), "final_return": mean, "ci_low": low,
                "ci_high": high, "vs_dense": relative_to_dense(mean, dense_mean) if dense_runs else float("nan"),
                "params": _summary_value(group, "nnz"), "density": _summary_value(group, "density"),
                "inference_flops": _summary_value(group, "inference_flops_vs_dense"),
                "wall_time_s": _summary_value(group, "wall_time_s"), "steps_per_s": _summary_value(group, "steps_per_s"),
            })
    return rows


COLUMNS = [
    ("algo", "algo", "{}"), ("env", "env", "{}"), ("config", "config", "{}"), ("seeds", "seeds", "{}"),
    ("final return (95 % CI)", None, None), ("vs dense", "vs_dense", "{:.3f}"), ("params (nnz)", "params", "{:,.0f}"),
    ("density", "density", "{:.3f}"), ("inference FLOPs vs dense", "inference_flops", "{:.3f}"),
    ("wall time (s)", "wall_time_s", "{:.0f}"), ("steps/s", "steps_per_s", "{:.1f}"),
]


def _cells(row: dict[str, Any]) -> list[str]:
    cells = []
    for _, key, fmt in COLUMNS:
        if key is None:
            cells.append(f"{row['final_return']:.1f} [{row['ci_low']:.1f}, {row['ci_high']:.1f}]")
        else:
            value = row[key]
            cells.append("n/a" if isinstance(value, float) and np.isnan(value) else fmt.format(value))
    return cells


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = [name for name, _, _ in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _band(ax: Any, x: np.ndarray, stats: np.ndarray, label: str, dense: bool) -> None:
    # configuration names that list their settings are long: wrapped, so that the legend leaves room for the plot
    line = ax.plot(x, stats[:, 0], label=textwrap.fill(label, 40), lw=2 if dense else 1.5)
    ax.fill_between(x, stats[:, 1], stats[:, 2], color=line[0].get_color(), alpha=0.2)


def plot_curves(runs: list[Run], out_dir: Path) -> list[Path]:
    """One PNG per (algo, env), one line per configuration (mean and 95 % CI band over seeds), return against
    environment steps, against training wall-clock seconds and against training compute (where sparse should win)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for (algo, env), by_label in sorted(group_runs(runs).items()):
        fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
        measured = True
        for label in sorted(by_label, key=lambda name: (name != "dense", name)):
            group = [r for r in by_label[label] if len(r.timesteps)]
            if not group:
                continue
            grid, curves = _aligned_curves(group)
            stats = np.array([mean_ci(curves[:, i]) for i in range(len(grid))])
            text, dense = f"{label} (n={len(group)})", label == "dense"
            _band(axes[0], grid, stats, text, dense)
            seconds = []
            for run in group:
                values, exact = run.seconds()
                measured &= exact
                seconds.append(np.interp(grid, run.timesteps, values))
            _band(axes[1], np.mean(seconds, axis=0), stats, text, dense)
            ratio = _summary_value(group, "training_flops_vs_dense")
            _band(axes[2], grid * (1.0 if np.isnan(ratio) else ratio), stats, text, dense)
        axes[0].set(title=f"{algo.upper()} on {env}", xlabel="environment steps", ylabel="evaluation return")
        axes[1].set(title="against wall clock" + ("" if measured else " (approx.: run time spread over steps)"),
                    xlabel="training seconds (evaluations excluded)", ylabel="evaluation return")
        axes[2].set(title="against training compute", xlabel="training multiply-adds, in env steps of the dense run",
                    ylabel="evaluation return")
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        path = out_dir / f"curves_{algo}_{env.replace('/', '-')}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def runs_table(runs: list[Run]) -> str:
    """One row per run: its name (as in TensorBoard and run.json), configuration, seed and final return."""
    lines = ["| run | config | seed | final return | steps | wall time (s) |", "|---|---|---|---|---|---|"]
    for run in sorted(runs, key=lambda r: (r.algo, r.env, r.label != "dense", r.config, r.seed)):
        lines.append(f"| {run.name} | {run.config} | {run.seed} | {run.final_return:.1f} | "
                     f"{run.summary.get('n_timesteps', '')} | {float(run.summary.get('wall_time_s') or np.nan):.0f} |")
    return "\n".join(lines) + "\n"


def write_report(runs: list[Run], out_dir: str | Path, notes: Sequence[str] = ()) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and the curve PNGs into ``out_dir``; returns the paths. ``notes``: what
    the run search said (runs left out, settings or seeds that differ), written into the report too."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not runs:
        raise ValueError("no runs found: point compare at a folder written by python -m sparse_rl.train")
    rows = summary_rows(runs)
    pngs = plot_curves(runs, out_dir)
    note = ("Final return: last evaluation, mean over seeds with a 95 % bootstrap CI. vs dense: 1 + (sparse - dense) / "
            "|dense| (1.0 = dense, above 1 is better). FLOPs: multiply-adds of one forward pass of the policy networks.")
    md = ["# Dense vs sparse comparison", "", markdown_table(rows), note, ""]
    md += ["## Notes", "", *[f"- {line}" for line in notes], ""] if notes else []
    md += ["## Runs", "", runs_table(runs)]
    md += [f"![{p.stem}]({p.name})" for p in pngs]
    (out_dir / "report.md").write_text("\n".join(md) + "\n")
    header = "".join(f"<th>{html.escape(name)}</th>" for name, _, _ in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(row)) + "</tr>" for row in rows)
    images = "".join(f'<p><img src="{p.name}" alt="{p.stem}"></p>' for p in pngs)
    names = "".join(f"<li>{html.escape(r.name)}: {html.escape(r.config)}, final return {r.final_return:.1f}</li>"
                    for r in sorted(runs, key=lambda r: (r.algo, r.env, r.label != "dense", r.config, r.seed)))
    notes_html = ("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in notes) + "</ul>"
                  if notes else "")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>sparse_rl comparison</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #aaa;"
            f"padding:4px 8px;text-align:right}}</style></head><body><h1>Dense vs sparse comparison</h1><table><tr>{header}"
            f"</tr>{body}</table><p>{html.escape(note)}</p>{notes_html}<h2>Runs</h2><ul>{names}</ul>{images}</body></html>")
    (out_dir / "report.html").write_text(page)
    return {"markdown": out_dir / "report.md", "html": out_dir / "report.html", **{p.stem: p for p in pngs}}


def write_result_files(folder: str | Path, name: str, text: str, payload: dict[str, Any]) -> None:
    """A benchmark's results: ``<folder>/<name>.md`` (``text``, the tables a person reads) and ``<name>.json``
    (``payload``, the numbers behind them), also printed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.md").write_text(text.rstrip("\n") + "\n")
    (folder / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    print(text)
