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
import json
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


def time_chunk(model: SAC, callback: object, steps: int) -> float:
    started = time.perf_counter()
    model.learn(steps, callback=callback, reset_num_timesteps=False)
    return steps / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 1024, 2048])
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=100, help="env steps per timed chunk")
    parser.add_argument("--warmup", type=int, default=300, help="steps before timing (learning_starts + first updates)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--distribution", default="erk", help="sparsity distribution of the sparse model (erk, uniform, er)")
    parser.add_argument("--out", default="bench_throughput", help="results file name in scripts/results (no suffix)")
    args = parser.parse_args()
    th.set_num_threads(1)
    rows = []
    for width in args.widths:
        models = make_models(width, args.sparsity, args.warmup // 2, args.seed, args.distribution)
        for model, callback in models.values():
            model.learn(args.warmup, callback=callback)  # fill the buffer, build caches, compile kernels
        speeds: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(args.rounds):  # interleaved: both models see the same machine state
            for name, (model, callback) in models.items():
                speeds[name].append(time_chunk(model, callback, args.chunk))
        dense, sparse = statistics.median(speeds["dense"]), statistics.median(speeds["sparse"])
        report = sparsity_report(models["sparse"][0])["total"]
        rows.append({"width": width, "dense_steps_per_s": dense, "sparse_steps_per_s": sparse, "speedup": sparse / dense,
                     "density": report["density"], "nnz": report["nnz"], "numel": report["numel"],
                     "dense_runs": speeds["dense"], "sparse_runs": speeds["sparse"]})
        print(f"width {width}: dense {dense:.1f} steps/s, sparse {sparse:.1f} steps/s, speedup {sparse / dense:.2f}x "
              f"(density {report['density']:.3f})", flush=True)
    command = " ".join(["python", "scripts/bench_throughput.py", *sys.argv[1:]])
    lines = [f"Command: `{command}` (SAC HalfCheetah-v4, one torch thread, median of {args.rounds} interleaved rounds of "
             f"{args.chunk} steps; sparsity distribution {args.distribution})", "",
             "| net_arch | dense steps/s | sparse steps/s | sparse / dense | policy density |", "|---|---|---|---|---|"]
    lines += [f"| [{r['width']}, {r['width']}] | {r['dense_steps_per_s']:.1f} | {r['sparse_steps_per_s']:.1f} | "
              f"{r['speedup']:.2f}x | {r['density']:.3f} |" for r in rows]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{args.out}.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
