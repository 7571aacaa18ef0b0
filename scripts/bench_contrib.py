"""Learning sanity check of the sb3-contrib algorithms: dense vs RigL at 90 %, 5 fixed seeds, a few thousand steps.

One short run per (algorithm, configuration, seed) through the training pipeline of ``python -m sparse_rl.train``
(the packaged ``configs/<algo>.yml`` entry, RL Zoo's hyperparameters; ``--sparsity 0`` for dense, ``--sparsity 0.9``
with the config's RigL schedule for sparse; only ``-n`` changes), then one final evaluation of 10 deterministic episodes
on an env seeded ``seed + 10000``. It checks that the sparse agents learn at all next to dense ones at equal settings,
not what they reach after full training:

- TQC and CrossQ on Pendulum-v1, 4000 steps (RL Zoo trains 20000);
- QR-DQN, RecurrentPPO (LSTM) and MaskablePPO (every action valid) on CartPole-v1, 10000 steps (RL Zoo: 50k-100k).

    nice -n 19 python scripts/bench_contrib.py                       # everything, one process
    python scripts/bench_contrib.py --algos qrdqn ppo_mask --jobs 2  # a subset, two processes

Writes ``scripts/results/bench_contrib.{md,json}`` (every seed's score, the mean, the standard deviation, density,
wall time; ``--out`` renames them). Runs go to ``--log-folder`` (a temporary folder by default, removed afterwards).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SEEDS = (0, 1, 2, 3, 4)  # fixed in advance
EVAL_EPISODES = 10
#: algo -> (env, environment steps)
BENCHES: dict[str, tuple[str, int]] = {
    "tqc": ("Pendulum-v1", 4000),
    "crossq": ("Pendulum-v1", 4000),
    "qrdqn": ("CartPole-v1", 10_000),
    "ppo_lstm": ("CartPole-v1", 10_000),
    "ppo_mask": ("CartPole-v1", 10_000),
}
CONFIGS = {"dense": 0.0, "rigl90": 0.9}


def run(algo: str, config: str, seed: int, log_folder: str) -> dict[str, Any]:
    """One training run (the ``train`` command's pipeline) and its final evaluation."""
    import torch as th

    from sparse_rl.harness.resolve import RunSpec
    from sparse_rl.harness.training import train

    th.set_num_threads(1)
    env, steps = BENCHES[algo]
    spec = RunSpec(algo=algo, env=env, sparsity=CONFIGS[config], seed=seed, n_timesteps=steps,
                   log_folder=str(Path(log_folder) / config), eval_freq=steps, eval_episodes=EVAL_EPISODES, verbose=0)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        folder = train(spec)
    evaluations = np.load(folder / "evaluations.npz")
    summary = json.loads((folder / "run.json").read_text())
    return {"algo": algo, "env": env, "steps": steps, "config": config, "seed": seed,
            "score": float(evaluations["results"][-1].mean()), "density": summary["density"],
            "wall_time_s": time.perf_counter() - start}


def table(records: list[dict[str, Any]]) -> str:
    """The Markdown table: one row per (algo, config), every seed's score and the mean."""
    lines = ["| algo | env | steps | config | " + " | ".join(f"seed {s}" for s in SEEDS)
             + " | mean | std | vs dense | density | wall time (s) |",
             "|" + "---|" * (9 + len(SEEDS))]
    for algo in BENCHES:
        means: dict[str, float] = {}
        for config in CONFIGS:
            rows = sorted((r for r in records if r["algo"] == algo and r["config"] == config), key=lambda r: r["seed"])
            if not rows:
                continue
            scores = {r["seed"]: r["score"] for r in rows}
            mean = statistics.fmean(scores.values())
            means[config] = mean
            std = statistics.stdev(scores.values()) if len(scores) > 1 else 0.0
            dense = means.get("dense")
            ratio = f"{1 + (mean - dense) / abs(dense):.3f}" if dense else "-"
            cells = [f"{scores[s]:.1f}" if s in scores else "-" for s in SEEDS]
            lines.append(f"| {algo} | {rows[0]['env']} | {rows[0]['steps']} | {config} | " + " | ".join(cells)
                         + f" | {mean:.1f} | {std:.1f} | {ratio} | {statistics.fmean(r['density'] for r in rows):.3f}"
                         f" | {sum(r['wall_time_s'] for r in rows):.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algos", nargs="+", default=list(BENCHES), choices=list(BENCHES))
    parser.add_argument("--seeds", type=int, default=len(SEEDS), help="the first N of the fixed seeds")
    parser.add_argument("--jobs", type=int, default=1, help="parallel processes (one torch thread each)")
    parser.add_argument("--log-folder", default=None, help="where the runs go (default: a temporary folder, removed)")
    parser.add_argument("--out", default="bench_contrib", help="name of the result files in scripts/results/")
    args = parser.parse_args(argv)
    log_folder = args.log_folder or tempfile.mkdtemp(prefix="bench_contrib_")
    grid = [(algo, config, seed, log_folder) for seed in SEEDS[: args.seeds] for algo in args.algos for config in CONFIGS]
    started = time.perf_counter()
    records: list[dict[str, Any]] = []
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            for record in pool.map(run, *zip(*grid)):
                records.append(record)
                print(record, flush=True)
    else:
        for point in grid:
            records.append(run(*point))
            print(records[-1], flush=True)
    if args.log_folder is None:
        shutil.rmtree(log_folder, ignore_errors=True)
    command = "nice -n 19 python scripts/bench_contrib.py" + (f" --algos {' '.join(args.algos)}" if args.algos != list(
        BENCHES) else "") + (f" --seeds {args.seeds}" if args.seeds != len(SEEDS) else "") + (
        f" --jobs {args.jobs}" if args.jobs > 1 else "")
    RESULTS.mkdir(exist_ok=True)
    header = (f"Command: `{command}` (final evaluation: mean return over {EVAL_EPISODES} deterministic episodes; "
              f"configs/<algo>.yml settings, `--sparsity 0` vs `--sparsity 0.9` with the config's RigL schedule; "
              f"total {time.perf_counter() - started:.0f} s)")
    from sparse_rl.analysis.report import write_result_files

    write_result_files(RESULTS, args.out, header + "\n\n" + table(records), {
        "command": command, "benches": BENCHES, "seeds": list(SEEDS[: args.seeds]), "eval_episodes": EVAL_EPISODES,
        "runs": records})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
