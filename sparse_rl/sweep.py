"""``python -m sparse_rl.sweep -conf SWEEP.yml``: seeds x sparsities x methods x envs as Ray tasks.

Each grid point is one ``python -m sparse_rl.train`` run in its own process (one torch thread), executed as a Ray
task: locally by default (as many runs at once as cores), or on an existing cluster with ``--address auto`` or a
``ray://host:10001`` address. A failed run is retried (``max_retries``), then reported with its error while the
others complete. Re-running the same sweep skips finished runs (those with a ``run.json``). When the grid is done,
the runs are aggregated into the comparison report (``python -m sparse_rl.compare``).

Sweep file (YAML)::

    algo: sac                      # or a list
    env: [Pendulum-v1, HalfCheetah-v4]
    method: [static, set, rigl]    # dense is added once per (env, seed) when sparsity 0 is in the grid
    sparsity: [0.0, 0.9]
    seed: [0, 1, 2]
    n_timesteps: 20000
    train_args: ["--eval-freq", "2000"]   # any further flags of python -m sparse_rl.train (a list)
    log_folder: logs/sweep
    max_retries: 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sparse_rl.harness.sweeps import check_points, execute, expand_grid, load_sweep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparse_rl.sweep", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-conf", "--conf-file", required=True, help="sweep YAML file")
    parser.add_argument("--address", default=None, help="Ray cluster: 'auto' or 'ray://HOST:10001' (default: local)")
    parser.add_argument("--num-cpus", type=int, default=None, help="local runs at once (default: all cores)")
    parser.add_argument("--max-retries", type=int, default=None, help="retries of a failed run (default: file, else 1)")
    parser.add_argument("--dry-run", action="store_true", help="list the grid and exit")
    args = parser.parse_args(argv)
    try:
        spec = load_sweep(args.conf_file)
        runs = expand_grid(spec)
        if args.address is None:  # each kind of unfinished point through train --dry-run: a refusal stops it here
            check_points(runs)
        else:  # the cluster's nodes may have other packages than this machine
            print("--address: grid points are not checked with train --dry-run here (the cluster's nodes run them)")
        if args.dry_run:
            for r in runs:
                stale = r.stale()
                resume = None if stale or r.is_finished() else r.resumable_dir()
                busy = not r.is_finished() and r.is_busy()
                status = ("stale " if stale else "done  " if r.is_finished() else "busy  " if busy else "resume" if resume
                          else "todo  ")
                why = (f"  # {stale}" if stale else "  # another process is training it now" if busy
                       else f"  # continues {resume} from its last checkpoint" if resume else "")
                print(f"{status} {' '.join(r.command()[1:])}{why}")
            return 0
        retries = args.max_retries if args.max_retries is not None else int(spec.get("max_retries", 1))
        result = execute(runs, retries, args.address, args.num_cpus)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    busy = f", {len(result.busy)} trained by another process" if result.busy else ""
    print(f"{len(result.finished)} finished, {len(result.skipped)} already done, {len(result.failed)} failed{busy}")
    for run, error in result.failed.items():
        print(f"  failed: {run.name}: {error}")
    root = Path(spec.get("log_folder", "logs/sweep"))
    if len(result.finished) + len(result.skipped):
        from sparse_rl.analysis import find_runs
        from sparse_rl.analysis.report import write_report

        paths = write_report(find_runs(root), root / "report")
        print(f"report: {paths['html']}")
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
