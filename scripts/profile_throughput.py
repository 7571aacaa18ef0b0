"""Where a SAC training step spends its time, dense vs 90 % sparse (the profile behind ``bench_throughput.py``).

Builds the same models as ``bench_throughput.py`` (SAC on HalfCheetah-v4, one torch thread), warms them up, then runs
``--steps`` environment steps of each under ``cProfile`` and splits the time per environment step into:

- ``ctypes kernel calls``: the CSR kernels called through the ctypes fallback (0 when the ``torch.ops.sparse_rl``
  operators are loaded: cProfile puts their forward in ``other`` and their backward in ``autograd backward``);
- ``dense matmuls (fwd)``: ``nn.Linear`` forwards (all of the dense model; the dense-by-design layers of the sparse one);
- ``autograd backward``: the autograd engine's own time, i.e. dense layers' backward plus every other op's backward;
- ``optimizer``: Adam steps and ``zero_grad``; ``target update``: Polyak averaging; ``replay sample``;
- ``env step``: MuJoCo and the VecEnv/Monitor wrappers;
- ``topology update``: one RigL update timed on its own, divided by ``update_every`` (its amortised cost);
- ``other``: everything else (SB3 and torch Python overhead: distributions, losses, tensor ops).

A second pass of ``--steps`` steps per model under ``torch.profiler`` times the kernels themselves, forward and
backward: the ``sparse_rl::*`` operators and ATen's dense matrix products (:func:`kernel_time`).

    python scripts/profile_throughput.py --widths 1024 2048 --steps 60

Writes ``scripts/results/profile_throughput.md`` and ``.json``. cProfile adds a fixed cost per Python call, so the
absolute times are inflated (``other`` most); compare the columns, not the sums, with ``bench_throughput.md``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch as th

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_throughput import RESULTS, make_models  # noqa: E402

UPDATE_EVERY = 1000
SPARSE_OPS, DENSE_OPS = "sparse operators (fwd+bwd)", "dense matrix products (fwd+bwd)"
# (category, how) -> predicate on a pstats key (file, line, function); "tot" sums own time, "cum" sums cumulative time
CATEGORIES = [
    # the ctypes path's forward and backward only: with the operators (``torch.ops.sparse_rl.*``) cProfile does not
    # see the kernels' forward as a call of its own (it lands in ``other``), and their backward runs inside the autograd
    # engine (``autograd backward``)
    ("ctypes kernel calls", "tot", lambda f, fn: f.endswith("backends/cpu.py") and fn in ("_forward", "backward")),
    ("dense matmuls (fwd)", "tot", lambda f, fn: fn in ("<built-in method torch._C._nn.linear>",)),
    ("autograd backward", "tot", lambda f, fn: fn == "<method 'run_backward' of 'torch._C._EngineBase' objects>"),
    ("optimizer", "cum", lambda f, fn: f.endswith("torch/optim/adam.py") and fn == "step"
     or f.endswith("torch/optim/optimizer.py") and fn == "zero_grad"),
    ("target update", "cum", lambda f, fn: fn == "polyak_update"),
    ("replay sample", "cum", lambda f, fn: f.endswith("buffers.py") and fn == "sample"),
    ("env step", "cum", lambda f, fn: fn == "step_wait"),
]


def split_profile(stats: pstats.Stats, steps: int) -> dict[str, float]:
    """Milliseconds per environment step in each category (``other`` = the rest of ``learn``)."""
    raw = stats.stats  # type: ignore[attr-defined]
    out = {name: 0.0 for name, _, _ in CATEGORIES}
    total = 0.0
    for (file, _line, func), (_cc, _nc, tot, cum, _callers) in raw.items():
        if func == "learn" and file.endswith("sac/sac.py"):
            total = max(total, cum)
        for name, how, match in CATEGORIES:
            if match(file, func):
                out[name] += tot if how == "tot" else cum
                break
    out = {name: 1e3 * seconds / steps for name, seconds in out.items()}
    out["other"] = 1e3 * total / steps - sum(out.values())
    out["total"] = 1e3 * total / steps
    return out


def kernel_time(model: object, callback: object, steps: int) -> dict[str, float]:
    """Milliseconds per environment step in the matrix kernels, forward and backward, from a second pass of ``steps``
    environment steps under ``torch.profiler`` (cProfile cannot see inside the operators): self CPU time of the
    ``sparse_rl::*`` operators and of ATen's dense matrix products (``addmm``, ``mm``, ``bmm``)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model.learn(steps, callback=callback, reset_num_timesteps=False)  # type: ignore[attr-defined]
    totals = {SPARSE_OPS: 0.0, DENSE_OPS: 0.0}
    for event in prof.key_averages():
        if event.key.startswith("sparse_rl::"):
            totals[SPARSE_OPS] += event.self_cpu_time_total
        elif event.key in ("aten::addmm", "aten::mm", "aten::bmm"):
            totals[DENSE_OPS] += event.self_cpu_time_total
    return {name: us / 1e3 / steps for name, us in totals.items()}


def time_topology_update(callback: object, repeats: int = 3) -> float:
    """Median milliseconds of one RigL update (dense gradients, drop/grow, optimizer state, target masks)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        callback.update_topology()  # type: ignore[attr-defined]
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times)


def _table(rows: list[dict[str, Any]], head: str, names: list[str]) -> list[str]:
    """Markdown rows: one line per ``name``, a dense and a sparse column per width."""
    lines = [f"| {head} | " + " | ".join(f"dense {r['width']} | sparse {r['width']}" for r in rows) + " |",
             "|---|" + "---|---|" * len(rows)]
    for name in names:
        cells = [f"{r[variant][name]:.2f}" for r in rows for variant in ("dense", "sparse")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--steps", type=int, default=60, help="profiled environment steps per model")
    parser.add_argument("--warmup", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="profile_throughput", help="results file name in scripts/results (no suffix)")
    args = parser.parse_args()
    th.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    for width in args.widths:
        models = make_models(width, args.sparsity, args.warmup // 2, args.seed)
        row: dict[str, object] = {"width": width}
        for name, (model, callback) in models.items():
            model.learn(args.warmup, callback=callback)
            profiler = cProfile.Profile()
            profiler.enable()
            model.learn(args.steps, callback=callback, reset_num_timesteps=False)
            profiler.disable()
            split = split_profile(pstats.Stats(profiler), args.steps)
            split.update(kernel_time(model, callback, args.steps))
            update_ms = time_topology_update(callback) if callback is not None else 0.0
            split["topology update"] = update_ms / UPDATE_EVERY
            split["total"] += split["topology update"]
            row[name] = split
            row[f"{name}_update_ms"] = update_ms
        rows.append(row)
        print(json.dumps(row, indent=1), flush=True)
    command = " ".join(["python", "scripts/profile_throughput.py", *sys.argv[1:]])
    names = [name for name, _, _ in CATEGORIES] + ["topology update", "other", "total"]
    lines = [f"Command: `{command}` (SAC HalfCheetah-v4, one torch thread, {args.steps} profiled steps per model; "
             f"ms per environment step under cProfile; the RigL update is timed alone and divided by {UPDATE_EVERY})",
             "", *_table(rows, "part", names), "",
             f"Kernel time, ms per environment step, from a second pass of {args.steps} steps per model under "
             "torch.profiler (self CPU time of the `sparse_rl::*` operators and of ATen's dense `addmm`/`mm`/`bmm`, "
             "forward and backward; cProfile puts the operators' forward in `other` and their backward in `autograd "
             "backward`):", "", *_table(rows, "kernels", [SPARSE_OPS, DENSE_OPS])]
    lines += ["", "One RigL update: " + ", ".join(f"{r['sparse_update_ms']:.0f} ms at width {r['width']}" for r in rows)]
    from sparse_rl.analysis.report import write_result_files

    write_result_files(RESULTS, args.out, "\n".join(lines), {"command": command, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
