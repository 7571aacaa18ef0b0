"""Learning benchmark: dense vs static vs SET vs RigL at 90 % sparsity, several seeds, final evaluation return.

Runs ``python -m sparse_rl.train`` for every (method, seed) of each benchmark in parallel processes (one torch thread
each), then reports the final evaluation return (mean over seeds, 95 % bootstrap CI) and its ratio to dense
(``1 + (sparse - dense) / |dense|``, so 1.0 = dense and negative returns compare correctly).

    python scripts/bench_learning.py --bench sac-pendulum --seeds 5 --steps 10000 --jobs 2
    python scripts/bench_learning.py --bench ppo-halfcheetah --seeds 3 --steps 1000000 --jobs 16

Writes ``scripts/results/bench_learning_<bench>.json`` and ``.md`` (``--out`` renames them); finished runs are reused
when re-run, so re-running a command only renders its table again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sparse_rl.analysis import find_runs
from sparse_rl.analysis.report import markdown_table, summary_rows
from sparse_rl.sweep import GridRun, run_one

BENCHES = {
    # algo, env, default steps, extra train flags
    "sac-pendulum": ("sac", "Pendulum-v1", 10_000, ["--eval-freq", "2000", "--eval-episodes", "10"]),
    "ppo-halfcheetah": ("ppo", "HalfCheetah-v4", 1_000_000, ["--eval-freq", "50000", "--eval-episodes", "10"]),
    "sac-halfcheetah": ("sac", "HalfCheetah-v4", 150_000, ["--eval-freq", "10000", "--eval-episodes", "10",
                                                            "--save-freq", "25000", "--save-replay-buffer"]),
}
METHODS = ("dense", "static", "set", "rigl")
RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", choices=sorted(BENCHES), default="sac-pendulum")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None, help="environment steps per run (default: the bench's)")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs at once")
    parser.add_argument("--log-folder", default="logs/bench_learning")
    parser.add_argument("--out", default=None, help="results file name in scripts/results (default bench_learning_BENCH)")
    args = parser.parse_args()
    algo, env, default_steps, flags = BENCHES[args.bench]
    steps = args.steps or default_steps
    root = Path(args.log_folder) / f"{args.bench}_{steps}"
    runs = [GridRun(algo, env, m, 0.0 if m == "dense" else args.sparsity, seed, steps, tuple(flags), str(root))
            for m in args.methods for seed in range(args.seeds)]
    todo = [run for run in runs if not run.is_finished()]
    print(f"{len(runs)} runs, {len(todo)} to train, {args.jobs} at once", flush=True)
    started = time.time()
    with ThreadPoolExecutor(args.jobs) as pool:
        for name in pool.map(run_one, todo):
            print(f"  done {name} ({time.time() - started:.0f} s)", flush=True)
    rows = summary_rows(find_runs(root))
    command = " ".join(["python", "scripts/bench_learning.py", *sys.argv[1:]])
    RESULTS.mkdir(exist_ok=True)
    table = markdown_table(rows)
    out = args.out or f"bench_learning_{args.bench}"
    (RESULTS / f"{out}.md").write_text(
        f"Command: `{command}` ({steps} steps per run, {args.seeds} seeds, sparsity {args.sparsity})\n\n{table}"
    )
    (RESULTS / f"{out}.json").write_text(json.dumps(
        {"command": command, "steps": steps, "seeds": args.seeds, "sparsity": args.sparsity, "rows": rows}, indent=2))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
