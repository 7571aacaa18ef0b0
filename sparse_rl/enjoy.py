"""``python -m sparse_rl.enjoy RUN_DIR``: replay a trained agent headless, optionally writing a video.

Example::

    python -m sparse_rl.enjoy logs/sac/HalfCheetah-v4_1 --episodes 3 --video cheetah.mp4

Uses the run's own settings (Atari wrappers, frame stack, VecNormalize statistics) with full episodes and unclipped
rewards. MuJoCo renders headless through EGL (``MUJOCO_GL=egl`` unless set).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from sparse_rl.harness.agents import stored_evaluation
from sparse_rl.harness.replay import replay


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparse_rl.enjoy", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run folder, e.g. logs/sac/HalfCheetah-v4_1")
    parser.add_argument("--episodes", type=int, default=3)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--best", action="store_true", help="load best_model.zip")
    group.add_argument("--last", action="store_true", help="load the final model (default)")
    parser.add_argument("-n", "--max-steps", type=int, default=None, help="stop after this many steps")
    parser.add_argument("--video", default=None, help="write an MP4 video of the episodes to this path")
    parser.add_argument("--video-size", type=int, default=None, help="frame size of MuJoCo videos (default: the env's)")
    parser.add_argument("--seed", type=int, default=None,
                        help="env seed (default: an agent folder's stored evaluation seed, so its returns reproduce "
                             "results.json; else 0)")
    parser.add_argument("--stochastic", action="store_true", help="sample actions instead of deterministic ones")
    args = parser.parse_args(argv)
    if not Path(args.run_dir).is_dir():
        print(f"error: run_dir {args.run_dir}: no such folder (give a run or agent folder, e.g. "
              "agents/sac/HalfCheetah-v4/rigl90)", file=sys.stderr)
        return 2
    try:
        stored = stored_evaluation(args.run_dir)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.seed is None:
        args.seed = stored[0] if stored else 0
        origin = "the agent's stored evaluation seed" if stored else "default"
        print(f"seed: {args.seed} ({origin})")
    try:
        returns = replay(Path(args.run_dir), args.episodes, args.best, args.video, args.seed, not args.stochastic,
                         args.max_steps, args.video_size)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    mean = f"{np.mean(returns):.2f}" if returns else "n/a"
    print(f"returns over {len(returns)} episodes: mean {mean}, each {[round(r, 2) for r in returns]}")
    if len(returns) < args.episodes:  # only -n stops early
        print(f"-n {args.max_steps}: stopped after {args.max_steps} steps with {len(returns)} of {args.episodes} "
              "episodes finished (an unfinished episode's return is not counted)")
    if stored and args.seed == stored[0] and not (args.best or args.stochastic) and returns:
        _compare(returns, stored[1])
    if args.video:
        print(f"video: {args.video}")
    return 0


def _compare(returns: list[float], stored: list[float]) -> None:
    """Say whether the replayed episodes reproduce the agent's stored ones (the first ``min`` of both)."""
    n = min(len(returns), len(stored))
    same = np.allclose(returns[:n], stored[:n], rtol=1e-6, atol=1e-6)
    print(f"results.json, first {n} episodes: {[round(r, 2) for r in stored[:n]]} "
          f"({'reproduced' if same else 'NOT reproduced'})")


if __name__ == "__main__":
    sys.exit(main())
