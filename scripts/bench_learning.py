"""Learning benchmarks: dense vs sparse agents on the mission's tasks, several fixed seeds, rliable aggregates.

Each benchmark trains ``python -m sparse_rl.train`` for every (configuration, seed) in parallel processes (one torch
thread each, seed-major order so that a partial benchmark still compares configurations on the same seeds), skips
finished runs, resumes interrupted ones from their checkpoint, and reports the final score (mean return of the last
evaluation, >= 10 deterministic episodes) per configuration: IQM and mean with 95 % stratified-bootstrap CIs and the
probability of improvement over dense (rliable, Agarwal et al. 2021, arXiv 2108.13264), learning curves with CI bands
(PNG), and the dormant-neuron fraction (Sokar et al. 2023) over training.

    python scripts/bench_learning.py --bench sac-halfcheetah                 # 5 seeds x dense / rigl 90 % / static 90 %
    python scripts/bench_learning.py --bench dqn-minatar-breakout --jobs 2
    python scripts/bench_learning.py --bench sac-halfcheetah --report-only   # the table from what has finished

Writes ``scripts/results/bench_learning_<bench>.{json,md,png}`` (``--out`` renames them). The JSON keeps every finished
run's record (curve, final score, wall time, dormant fractions): a run recorded there is not trained again, so a
benchmark continues across sessions and machines from its committed results (unfinished runs resume from their
checkpoints while their log folder exists).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sparse_rl.harness.sweeps import GridRun, RunLocked, run_one  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SEEDS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9)  # fixed in advance; --seeds N takes the first N, the same for every configuration
EVAL = ["--eval-episodes", "10"]


@dataclass(frozen=True)
class Config:
    """One configuration of a benchmark: a method at a sparsity, with extra ``train`` flags."""

    method: str
    sparsity: float = 0.9
    flags: tuple[str, ...] = ()
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or ("dense" if self.method == "dense" else f"{self.method}{round(100 * self.sparsity)}")


@dataclass(frozen=True)
class Bench:
    algo: str
    env: str
    steps: int
    flags: tuple[str, ...]
    configs: tuple[Config, ...]
    note: str = ""
    extra: dict = field(default_factory=dict)


DENSE = Config("dense", 0.0)
RIGL, STATIC, SET = Config("rigl"), Config("static"), Config("set")
MINATAR = ("--eval-freq", "25000", *EVAL, "--save-freq", "50000", "--save-replay-buffer")
def _ablation(label: str, method: str = "rigl", policy_kwargs: str = "", callback: str = "", params: tuple[str, ...] = ()
              ) -> Config:
    """A labelled configuration whose ``-params`` change one thing (policy_kwargs are merged into the config's)."""
    flags = list(params)
    if policy_kwargs:
        flags.append(f"policy_kwargs:dict({policy_kwargs})")
    if callback:
        flags.append(f"callback:[{{sparse_rl.sb3.TopologyCallback: {{{callback}}}}}]")
    return Config(method, 0.0 if method == "dense" else 0.9, ("-params", *flags) if flags else (), label)


PPO_TOPOLOGY = "method: rigl, update_every: {every}, drop_fraction: {drop}, drop_schedule: cosine, end: 0.75"
PPO_ADAM_WD = "optimizer_kwargs=dict(eps=1e-5, weight_decay=1e-4)"  # SB3's PPO Adam eps, plus Graesser et al.'s decay
PPO_ABLATIONS = (
    _ablation("dense", "dense"), _ablation("rigl90"),
    _ablation("rigl90-init-dense", policy_kwargs="init_scale='dense'"),
    _ablation("rigl90-input-dense", policy_kwargs="dense_layers=['input', 'output']"),
    _ablation("rigl90-actor95-critic85", policy_kwargs="actor_sparsity=0.95, critic_sparsity=0.85"),
    _ablation("dense-wd1e-4", "dense", policy_kwargs=PPO_ADAM_WD), _ablation("rigl90-wd1e-4", policy_kwargs=PPO_ADAM_WD),
    _ablation("rigl90-every4096", callback=PPO_TOPOLOGY.format(every=4096, drop=0.3)),
    _ablation("rigl90-drop0.1", callback=PPO_TOPOLOGY.format(every=1024, drop=0.1)),
    _ablation("dense-lr3x", "dense", params=("learning_rate:6.1899e-05",)),
    _ablation("rigl90-lr3x", params=("learning_rate:6.1899e-05",)),
)


BENCHES: dict[str, Bench] = {
    "sac-pendulum": Bench("sac", "Pendulum-v1", 10_000, ("--eval-freq", "2000", *EVAL), (DENSE, STATIC, SET, RIGL)),
    "sac-halfcheetah": Bench("sac", "HalfCheetah-v4", 150_000,
                             ("--eval-freq", "10000", *EVAL, "--save-freq", "25000", "--save-replay-buffer"),
                             (DENSE, RIGL, STATIC), "the main command's configuration (configs/sac.yml)"),
    "ppo-halfcheetah": Bench("ppo", "HalfCheetah-v4", 300_000, ("--eval-freq", "20000", *EVAL, "--save-freq", "50000"),
                             (DENSE, RIGL, STATIC), "RL Zoo's settings (configs/ppo.yml)"),
    # Graesser et al.'s claim at equal parameters: a RigL 90 % network whose hidden width (816) gives the nonzero count
    # of dense [256, 256] (216,322 vs 216,320 weights, biases not counted; density 0.105 with the dense heads); dense and wide
    # runs of a seed train at the same time (seed-major order, 2 jobs), so their wall clocks compare
    "sac-halfcheetah-wide": Bench("sac", "HalfCheetah-v4", 100_000,
                                  ("--eval-freq", "10000", *EVAL, "--save-freq", "25000", "--save-replay-buffer"),
                                  (DENSE, Config("rigl", 0.9, ("-params", "policy_kwargs:dict(net_arch=[816, 816])"),
                                                 "rigl90-wide816")),
                                  "sparse-wide at equal parameters: dense [256, 256] vs RigL 90 % [816, 816]",
                                  {"equal_wall_clock": True}),
    # PPO diagnosis: each change alone against rigl90 (>= 5 seeds, 100k steps rank them); lr3x is 3 x 2.0633e-5
    "ppo-halfcheetah-ablations": Bench("ppo", "HalfCheetah-v4", 100_000, ("--eval-freq", "20000", *EVAL, "--save-freq",
                                                                         "50000"), PPO_ABLATIONS, "PPO ablations"),
    "dqn-minatar-breakout": Bench("dqn", "MinAtar/Breakout-v1", 500_000, MINATAR, (DENSE, RIGL),
                                  "the MinAtar network (Young & Tian 2019), configs/dqn.yml"),
    "dqn-minatar-spaceinvaders": Bench("dqn", "MinAtar/SpaceInvaders-v1", 500_000, MINATAR, (DENSE, RIGL),
                                       "the MinAtar network (Young & Tian 2019), configs/dqn.yml"),
}


def grid(bench: Bench, configs: tuple[Config, ...], seeds: tuple[int, ...], root: Path) -> list[tuple[Config, GridRun]]:
    """Every (configuration, seed) run, seed-major; each in ``root/[<label>/]<algo>_<env>_<method>_<sparsity>_seed<n>``."""
    return [(config, GridRun(bench.algo, bench.env, config.method, config.sparsity, seed, bench.steps,
                             (*bench.flags, *config.flags), str(root / config.label if config.label else root)))
            for seed in seeds for config in configs]


def _config(bench: Bench, name: str) -> Config:
    """A configuration of the bench by name, or a plain method at a sparsity: ``dense``, ``set90``, ``static80``..."""
    for config in bench.configs:
        if config.name == name:
            return config
    match = re.fullmatch(r"(static|set|rigl|srigl|gmp)(\d+)", name)
    if name == "dense":
        return DENSE
    if match is None:
        print(f"error: --configs {name!r}: unknown configuration; the bench's are {[c.name for c in bench.configs]}, "
              "or dense / <method><sparsity %> such as set90", file=sys.stderr)
        raise SystemExit(2)
    return Config(match.group(1), int(match.group(2)) / 100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", choices=sorted(BENCHES), default="sac-pendulum")
    parser.add_argument("--seeds", type=int, default=5, help=f"the first N of the fixed seeds {list(SEEDS)}")
    parser.add_argument("--steps", type=int, default=None, help="environment steps per run (default: the bench's)")
    parser.add_argument("--configs", nargs="+", default=None, help="configuration names (default: the bench's)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="runs at once")
    parser.add_argument("--log-folder", default="logs/bench_learning")
    parser.add_argument("--out", default=None, help="results name in scripts/results (default bench_learning_BENCH)")
    parser.add_argument("--report-only", action="store_true", help="only write the report from the finished runs")
    args = parser.parse_args()
    bench = BENCHES[args.bench]
    steps = args.steps or bench.steps
    bench = replace(bench, steps=steps)
    configs = bench.configs if args.configs is None else tuple(_config(bench, name) for name in args.configs)
    root = Path(args.log_folder) / f"{args.bench}_{steps}"
    runs = grid(bench, configs, SEEDS[: args.seeds], root)
    out = args.out or f"bench_learning_{args.bench}"
    from learning_report import report_steps, saved_records

    try:
        earlier = report_steps(RESULTS / f"{out}.json")
    except ValueError as error:
        print(f"error: --out {out}: {error}; pass another --out (or move that file)", file=sys.stderr)
        return 2
    if earlier is not None and earlier != steps:
        print(f"error: --out {out}: {RESULTS / f'{out}.json'} holds a report of {earlier:,} steps per run, this one is "
              f"{steps:,}; pass another --out (or move that report) so that it is not overwritten", file=sys.stderr)
        return 2
    reported = {(name, r["seed"]) for name, records in saved_records(RESULTS / f"{out}.json", steps).items() for r in records}
    todo = [run for config, run in runs if not run.is_finished() and (config.name, run.seed) not in reported]
    if not args.report_only and todo:
        print(f"{len(runs)} runs, {len(todo)} to train, {args.jobs} at once", flush=True)
        started = time.time()
        with ThreadPoolExecutor(args.jobs) as pool:
            for run, status in zip(todo, pool.map(_attempt, todo)):
                print(f"  {status} {run.folder} ({time.time() - started:.0f} s)", flush=True)
    from learning_report import write_report

    command = " ".join(["python", "scripts/bench_learning.py", *(a for a in sys.argv[1:] if a != "--report-only")])
    paths = write_report(args.bench, bench, runs, root, command, out, RESULTS)
    print("\n".join(f"wrote {p}" for p in paths))
    return 0


def _attempt(run: GridRun) -> str:
    """``done``, ``skipped: ...`` (another process trains it: a second driver over the same folder) or ``FAILED: ...``."""
    try:
        run_one(run)
    except RunLocked:
        return "skipped: another process trains it"
    except RuntimeError as error:
        return f"FAILED: {error}"
    return "done"


if __name__ == "__main__":
    sys.exit(main())
