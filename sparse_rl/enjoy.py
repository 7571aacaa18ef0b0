"""``python -m sparse_rl.enjoy RUN_DIR``: replay a trained agent headless, optionally writing a video.

Example::

    python -m sparse_rl.enjoy logs/sac/HalfCheetah-v4_1 --episodes 3 --video cheetah.mp4

Uses the run's own settings (Atari wrappers, frame stack, VecNormalize statistics) with full episodes and unclipped
rewards. MuJoCo renders headless through EGL (``MUJOCO_GL=egl`` unless set). On an agent folder (``agents/...``) the env
is seeded with the agent's stored evaluation seed and the returns are compared with its ``results.json``: exit status 1
when they do not reproduce it, 2 for bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from sparse_rl.harness.agents import compare_with_stored, stored_evaluation
from sparse_rl.harness.replay import check_video_path, replay


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparse_rl.enjoy", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run folder (logs/sac/HalfCheetah-v4_1) or an agent folder "
                                        "(agents/sac/HalfCheetah-v4/rigl90)")
    parser.add_argument("--episodes", type=int, default=3, help="episodes to play (default 3; agents store 10)")
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
    bad = [f"{flag} {value}: {allowed}" for flag, value, allowed, wrong in (
        ("--episodes", args.episodes, "give 1 or more", args.episodes < 1),
        ("-n", args.max_steps, "give 1 or more steps", args.max_steps is not None and args.max_steps < 1),
        ("--video-size", args.video_size, "give a positive size in pixels",
         args.video_size is not None and args.video_size < 1),
        ("--video-size", args.video_size, "it sizes a video: add --video PATH", args.video_size and not args.video))
        if wrong]
    try:
        if bad:
            raise ValueError(bad[0])
        if args.video is not None:
            check_video_path(args.video)  # before the agent is loaded
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
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
    if args.video:
        print(f"video: {args.video}")
    if not stored:
        return 0
    differs = [why for why, wrong in ((f"--seed {args.seed}, stored seed {stored[0]}", args.seed != stored[0]),
                                      ("--best", args.best), ("--stochastic", args.stochastic),
                                      ("no episode finished", not returns)) if wrong]
    if differs:
        print(f"results.json not compared: {', '.join(differs)}")
        return 0
    same, line = compare_with_stored(returns, stored[1])
    print(line)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
