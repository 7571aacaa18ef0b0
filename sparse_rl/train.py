"""``python -m sparse_rl.train``: train a sparse (or dense baseline) SB3 agent, RL Zoo style.

Example::

    python -m sparse_rl.train --algo sac --env HalfCheetah-v4 --sparsity 0.9 --method rigl --seed 1 -tb runs/

Outputs go to ``logs/<algo>/<Env>_<n>/`` (:mod:`sparse_rl.harness.runs`): the final model ``<Env>.zip``,
``best_model.zip``, ``evaluations.npz``, ``<Env>/config.yml`` and ``<Env>/args.yml`` (RL Zoo's layout, so its
``enjoy`` and plotting scripts work), ``<Env>/resolved.yml``, ``command.txt`` and checkpoints. How settings are
merged and defaulted: :mod:`sparse_rl.harness.resolve` (printed at start).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sparse_rl.harness.checks import DefaultsHelpFormatter
from sparse_rl.harness.hyperparams import merge_overrides, parse_value
from sparse_rl.harness.resolve import ALGOS, METHODS, RunSpec
from sparse_rl.harness.training import RESUME_FLAGS, check, train


def parse_args(argv: list[str] | None = None) -> RunSpec:
    return _parse(argv)[0]


def _parse(argv: list[str] | None) -> tuple[RunSpec, bool]:
    """The run's spec and whether ``--dry-run`` was given."""
    parser = argparse.ArgumentParser(prog="python -m sparse_rl.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--algo", default=None, help=f"one of {', '.join(ALGOS)} (default: sac; with --resume: the run's)")
    parser.add_argument("--env", default=None,
                        help="gymnasium env id (Atari ids get the Atari wrappers); default Pendulum-v1 (--resume: the run's)")
    parser.add_argument("--sparsity", default=None, help="fraction of zero weights in [0, 1); 0 trains the dense baseline")
    parser.add_argument("--method", default=None,
                        help=f"topology method: {', '.join(METHODS)} (default: the config's, else rigl)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (evaluations use seed + 10000)")
    parser.add_argument("-n", "--n-timesteps", type=int, default=None, help="environment steps (default: config)")
    parser.add_argument("-conf", "--conf-file", default=None, help="RL-Zoo-style YAML (default: configs/<algo>.yml)")
    parser.add_argument("-params", "--hyperparams", nargs="+", action="extend", default=[], metavar="KEY:VALUE",
                        help="override hyperparameters, e.g. -params learning_rate:0.001 buffer_size:10000 "
                             "(a *_kwargs value is merged into the config's, other keys replace theirs; -params may "
                             "be given several times)")
    parser.add_argument("-f", "--log-folder", default="logs", help="runs go to <folder>/<algo>/<Env>_<n>")
    parser.add_argument("-tb", "--tensorboard-log", default=None, help="TensorBoard log directory")
    parser.add_argument("--eval-freq", type=int, default=10_000, help="evaluate every N env steps (0 or -1: never)")
    parser.add_argument("--eval-episodes", type=int, default=5, help="deterministic episodes per evaluation")
    parser.add_argument("--save-freq", type=int, default=-1, help="checkpoint every N env steps (0 or -1: never)")
    parser.add_argument("--save-replay-buffer", action="store_true", help="include the replay buffer in checkpoints")
    parser.add_argument("--resume", default=None, metavar="RUN_DIR",
                        help="continue RUN_DIR from its last complete checkpoint up to -n (or its original) steps")
    parser.add_argument("--n-envs", type=int, default=None)
    parser.add_argument("--device", default="auto", help="torch device (auto, cpu, cuda)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: one per process; run seeds as parallel processes)")
    parser.add_argument("--backend", default=None, help="sparse kernel backend (auto, reference, cpu, ...)")
    parser.add_argument("--distribution", default=None, help="per-layer sparsity: erk, er or uniform")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    parser.add_argument("-v", "--verbose", type=int, default=1, help="0: quiet, 1: SB3's training table")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved settings and check that SB3 builds the model, then exit; nothing is "
                             "written")
    args = parser.parse_args(argv)
    typed = _typed(parser, argv)
    if args.resume:
        _check_resume_flags(typed)
    if "eval_episodes" in typed and args.eval_freq <= 0:
        raise ValueError(f"--eval-episodes {args.eval_episodes} has no effect: --eval-freq {args.eval_freq} never "
                         "evaluates; drop one of the two")
    return RunSpec(
        algo=args.algo or ("" if args.resume else "sac"), env=args.env or ("" if args.resume else "Pendulum-v1"),
        sparsity=_parse_sparsity(args.sparsity), method=args.method, seed=args.seed,
        n_timesteps=args.n_timesteps, conf_file=args.conf_file, hyperparams=_parse_overrides(args.hyperparams),
        log_folder=args.log_folder, tensorboard_log=args.tensorboard_log, eval_freq=args.eval_freq,
        eval_episodes=args.eval_episodes, save_freq=args.save_freq, n_envs=args.n_envs, device=args.device,
        backend=args.backend, distribution=args.distribution, progress=args.progress, verbose=args.verbose,
        resume=args.resume, save_replay_buffer=args.save_replay_buffer, threads=args.threads,
    ), args.dry_run


#: the flags that may come with --resume (the run's own settings cannot change; --algo/--env must name the run's)
RESUME_OPTIONS = (*RESUME_FLAGS, "algo", "env")


def _typed(parser: argparse.ArgumentParser, argv: list[str] | None) -> dict[str, str]:
    """The flags typed on the command line (dest -> option string), whatever their values: parsed again with every
    default suppressed (the parser is not used afterwards)."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    flags = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}
    return {dest: flags[dest] for dest in vars(parser.parse_args(argv)) if dest in flags}


def _check_resume_flags(typed: dict[str, str]) -> None:
    """Every flag typed with ``--resume`` other than :data:`RESUME_OPTIONS` is an error, also one whose value equals
    the default (``--seed 0`` on a seed-3 run was silently ignored: the harness compares values, not what was typed)."""
    fixed = [flag for dest, flag in typed.items() if dest not in RESUME_OPTIONS]
    if fixed:
        raise ValueError(f"--resume continues the run with its own settings; these flags cannot change it: "
                         f"{', '.join(fixed)} (only -n, --progress, --threads, -v and --device can)")


def _parse_sparsity(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"--sparsity must be a number in [0, 1), got {text!r}") from None


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    """``-params`` pairs; a key given twice is merged by the override rule when it is a ``*_kwargs`` dict, else an error."""
    result: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition(":")
        if not sep or not key:
            raise ValueError(f"-params expects KEY:VALUE pairs, got {item!r}")
        if key in result:
            if not key.endswith("_kwargs"):
                raise ValueError(f"-params sets {key!r} twice ({result[key]!r} and {value!r}): give it once")
            merged, _ = merge_overrides({key: result[key]}, {key: parse_value(value)}, "-params")
            result[key] = merged[key]
        else:
            result[key] = parse_value(value)
    return result


def main(argv: list[str] | None = None) -> int:
    try:
        spec, dry_run = _parse(argv)
        if dry_run:
            for line in check(spec).describe():
                print(line)
            print("dry run: the settings resolve and SB3 builds the model; nothing was written")
            return 0
        train(spec, argv)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
