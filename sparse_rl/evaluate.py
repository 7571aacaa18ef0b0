"""``python -m sparse_rl.evaluate --suite SUITE --runs LOG_DIR``: evaluate saved agents across seeds on a suite.

Example::

    python -m sparse_rl.evaluate --suite mujoco --runs logs/ --episodes 10

Writes ``results.csv``/``results.json`` (raw and normalised scores, density, parameters, FLOPs, acting latency vs
dense per run) and rliable aggregates (IQM, median, mean and, for normalised scores, the optimality gap, with 95 %
stratified-bootstrap CIs; performance profiles, probability of improvement over dense; Agarwal et al. 2021) as PNGs
into ``LOG_DIR/evaluation``.
Suites: ``mujoco``, ``atari`` (the Atari-5 of Aitchison et al. 2023), ``atari26``, ``atari57``, ``minatar`` (raw
returns: no reference scores), or one env id.
"""

from __future__ import annotations

import argparse
import sys

import torch as th

from sparse_rl.analysis.aggregate import markdown_table
from sparse_rl.harness.checks import DefaultsHelpFormatter
from sparse_rl.harness.evaluation import evaluate_suite, run_table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sparse_rl.evaluate", description=__doc__.split("\n\n")[0],
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--suite", required=True, help="mujoco, atari (Atari-5), atari26, atari57, minatar or an env id")
    parser.add_argument("--runs", required=True, help="folder holding run folders (searched recursively)")
    parser.add_argument("-o", "--output", default=None, help="output folder (default: RUNS/evaluation)")
    parser.add_argument("--episodes", type=int, default=None, help="episodes per run (default: the suite's protocol)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--best", action="store_true", help="evaluate best_model.zip")
    group.add_argument("--last", action="store_true", help="evaluate the final model (default)")
    parser.add_argument("--env", default=None, help="evaluate every run on this env id instead of its own")
    parser.add_argument("--max-episode-steps", type=int, default=None,
                        help="cut episodes after this many agent steps (default: the protocol's; Atari 27000 = 108k frames)")
    parser.add_argument("--epsilon", type=float, default=None, help="random-action probability for DQN (default: protocol)")
    parser.add_argument("--backend", default=None, help="sparse kernel backend to act with (default: each layer's own)")
    parser.add_argument("--latency-steps", type=int, default=100, help="predict calls per timing round (0: no timing)")
    parser.add_argument("--reps", type=int, default=2000, help="stratified-bootstrap resamples for the rliable CIs")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the evaluation envs and the bootstrap (default: for packaged agents their stored "
                             "evaluation seed, so their returns compare with results.json; else 0)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    th.set_num_threads(1)
    try:
        result = evaluate_suite(args.suite, args.runs, args.output, args.episodes, args.best, args.env,
                                args.max_episode_steps, args.epsilon, args.backend, args.latency_steps, args.reps,
                                args.seed, not args.no_plots)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary = result["aggregate"]
    print(run_table(result["rows"]))
    kind = "normalised score" if summary["score"] == "normalized" else "raw return"
    left_out = f"; left out (no reference scores): {', '.join(summary['left_out_tasks'])}" if summary["left_out_tasks"] else ""
    print(f"suite {result['suite'].name}, {kind} over tasks {', '.join(summary['tasks'])}{left_out}; "
          f"95 % stratified-bootstrap CIs ({summary['reps']} resamples)")
    print(markdown_table(summary))
    print("latency vs dense and inference FLOPs vs dense: each run against its own network with its sparse layers made "
          "dense, not against the dense configuration (a sparse-wide run is compared with its wide network dense); "
          "P(> dense) is against the dense configuration's runs")
    print(f"results: {result['paths']['csv']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
