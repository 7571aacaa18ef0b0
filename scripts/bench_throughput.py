"""Training throughput: SAC on HalfCheetah-v4, dense vs 90 % sparse, environment steps per second.

For each hidden width, a dense ``MlpPolicy`` model and a ``SparseSACPolicy`` model (``backend="auto"``, RigL
callback) train in alternation, ``--chunk`` steps at a time, for ``--rounds`` rounds in one process with one torch
thread; the median steps/s of each and their ratio are reported (sparse / dense, > 1 is faster). The sparse model
trains with its RigL callback (an update every 1000 steps); short timed windows hold no update, so
``scripts/profile_throughput.py`` times one update on its own and reports its cost amortised over 1000 steps, next to
a breakdown of where each training step spends its time.

    python scripts/bench_throughput.py --widths 256 1024 2048 --rounds 5 --chunk 100

Writes ``scripts/results/bench_throughput.json`` and ``.md`` (``--out`` renames them).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch as th
from stable_baselines3 import SAC

from sparse_rl import sparsity_report
from sparse_rl.sb3 import SparseSACPolicy, TopologyCallback

RESULTS = Path(__file__).resolve().parent / "results"


def make_models(width: int, sparsity: float, warmup: int, seed: int,
                distribution: str = "erk") -> dict[str, tuple[SAC, object]]:
    common = dict(learning_starts=warmup, buffer_size=50_000, seed=seed, device="cpu", verbose=0)
    dense = SAC("MlpPolicy", "HalfCheetah-v4", policy_kwargs=dict(net_arch=[width, width]), **common)
    sparse_kwargs = dict(net_arch=[width, width], sparsity=sparsity, distribution=distribution)
    sparse = SAC(SparseSACPolicy, "HalfCheetah-v4", policy_kwargs=sparse_kwargs, **common)
    callback = TopologyCallback(method="rigl", update_every=1000, drop_fraction=0.3, end=10**9)
    return {"dense": (dense, None), "sparse": (sparse, callback)}


CLOCKS = {"cpu": time.thread_time, "wall": time.perf_counter}


def time_chunk(model: SAC, callback: object, steps: int, clock: str = "cpu") -> float:
    """Steps per second of ``steps`` more training steps, by the thread's CPU time (``"cpu"``: immune to time slices
    lost to other processes on a shared machine; training runs on this one thread) or by wall time."""
    now = CLOCKS[clock]
    started = now()
    model.learn(steps, callback=callback, reset_num_timesteps=False)
    return steps / (now() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 1024, 2048])
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=100, help="env steps per timed chunk")
    parser.add_argument("--warmup", type=int, default=300, help="steps before timing (learning_starts + first updates)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--distribution", default="erk", help="sparsity distribution of the sparse model (erk, uniform, er)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                        help="cpu: the thread's CPU time (default; robust on a shared machine), wall: elapsed time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the wall clock is used above 1)")
    parser.add_argument("--out", default="bench_throughput", help="results file name in scripts/results (no suffix)")
    args = parser.parse_args()
    th.set_num_threads(args.threads)
    clock = "wall" if args.threads > 1 else args.clock  # other threads' CPU time is not on this thread's clock
    models: dict[tuple[int, str], tuple[SAC, object]] = {}
    for width in args.widths:  # every model is built and warmed up first, then all are timed in the same rounds
        for name, pair in make_models(width, args.sparsity, args.warmup // 2, args.seed, args.distribution).items():
            pair[0].learn(args.warmup, callback=pair[1])  # fill the buffer, build caches, compile kernels
            models[(width, name)] = pair
    speeds: dict[tuple[int, str], list[float]] = {key: [] for key in models}
    for round_ in range(args.rounds):  # interleaved: every model sees the same machine state
        for key, (model, callback) in models.items():
            speeds[key].append(time_chunk(model, callback, args.chunk, clock))
        print(f"round {round_ + 1}: " + ", ".join(f"{n} {w}: {speeds[(w, n)][-1]:.1f}" for w, n in models), flush=True)
    median = {key: statistics.median(values) for key, values in speeds.items()}
    rows = []
    for width in args.widths:
        dense, sparse = median[(width, "dense")], median[(width, "sparse")]
        report = sparsity_report(models[(width, "sparse")][0])["total"]
        rows.append({"width": width, "dense_steps_per_s": dense, "sparse_steps_per_s": sparse, "speedup": sparse / dense,
                     "density": report["density"], "nnz": report["nnz"], "numel": report["numel"],
                     "dense_runs": speeds[(width, "dense")], "sparse_runs": speeds[(width, "sparse")]})
        print(f"width {width}: dense {dense:.1f} steps/s, sparse {sparse:.1f} steps/s, speedup {sparse / dense:.2f}x "
              f"(density {report['density']:.3f})", flush=True)
    cross = [{"sparse_width": w, "dense_width": d, "ratio": median[(w, "sparse")] / median[(d, "dense")]}
             for w in args.widths for d in args.widths if d < w]
    command = " ".join(["python", "scripts/bench_throughput.py", *sys.argv[1:]])
    lines = [f"Command: `{command}` (SAC HalfCheetah-v4, {args.threads} torch thread(s), {clock} clock, median of "
             f"{args.rounds} interleaved rounds of {args.chunk} steps per model; sparsity distribution {args.distribution})",
             "", "| net_arch | dense steps/s | sparse steps/s | sparse / dense | policy density |", "|---|---|---|---|---|"]
    lines += [f"| [{r['width']}, {r['width']}] | {r['dense_steps_per_s']:.1f} | {r['sparse_steps_per_s']:.1f} | "
              f"{r['speedup']:.2f}x | {r['density']:.3f} |" for r in rows]
    if cross:
        lines += ["", "| sparse net_arch vs dense net_arch | steps/s ratio |", "|---|---|"]
        lines += [f"| [{c['sparse_width']}]² sparse vs [{c['dense_width']}]² dense | {c['ratio']:.2f}x |" for c in cross]
    from sparse_rl.analysis.report import write_result_files

    write_result_files(RESULTS, args.out, "\n".join(lines), {"command": command, "clock": clock, "threads": args.threads,
                                                             "rows": rows, "cross": cross})
    return 0


if __name__ == "__main__":
    sys.exit(main())
