"""Benchmark the sparse kernel backends against dense ``nn.Linear`` (not a test).

Speedup = dense median time / sparse median time, for the forward (under ``torch.no_grad()``, i.e. acting) and for
forward + backward (gradients to input, values and bias, as in training). Shapes are ``in x out``. All
implementations of a cell are interleaved in rounds inside one run and medians are reported, so machine noise hits
them alike. Writes ``scripts/results/bench_kernels.json`` and ``.md`` (the exact command is at the top of the .md).

    python scripts/bench_kernels.py                 # full grid, 1 and 2 threads
    python scripts/bench_kernels.py --quick         # target cells only, 1 thread, a couple of minutes
    python scripts/bench_kernels.py --shapes 256x256 1024x1024 --batches 256 --sparsities 0.9 --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch as th
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sparse_rl.nn import backends  # noqa: E402
from sparse_rl.nn.layers import SparseLinear  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SHAPES = ["17x256", "256x256", "1024x1024", "2048x2048", "3136x512"]
# (kind, shape, batch, sparsity, minimum speedup) at 1 thread
TARGETS = [("fwd+bwd", "256x256", 256, 0.9, 4.0), ("fwd+bwd", "1024x1024", 256, 0.9, 6.0),
           ("fwd+bwd", "1024x1024", 256, 0.99, 25.0), ("fwd", "256x256", 1, 0.9, 1.0), ("fwd", "1024x1024", 1, 0.9, 2.0)]


def _reps(fn: Callable[[], object], min_s: float) -> int:
    """Repetitions per measurement so that one lasts about ``min_s`` seconds."""
    fn()
    start = time.perf_counter()
    fn()
    one = max(time.perf_counter() - start, 1e-7)
    return max(1, int(min_s / one))


def _measure(fn: Callable[[], object], reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def bench_cell(n_in: int, n_out: int, batch: int, sparsity: float, names: list[str], rounds: int,
               min_s: float) -> dict:
    """Median seconds of every implementation for one cell, interleaved in rounds."""
    th.manual_seed(0)
    dense = nn.Linear(n_in, n_out)
    sparse = {name: SparseLinear(n_in, n_out, sparsity=sparsity, backend=name) for name in names}
    x = th.randn(batch, n_in)
    xg = x.clone().requires_grad_(True)
    g = th.randn(batch, n_out)
    modules: dict[str, nn.Module] = {"dense": dense, **sparse}

    def fwd(m: nn.Module) -> Callable[[], object]:
        def run() -> object:
            with th.no_grad():
                return m(x)
        return run

    def fwd_bwd(m: nn.Module) -> Callable[[], object]:
        params = list(m.parameters())

        def run() -> None:
            for p in params:
                p.grad = None
            xg.grad = None
            m(xg).backward(g)
        return run

    fns = {(kind, name): make(m) for name, m in modules.items() for kind, make in (("fwd", fwd), ("fwd+bwd", fwd_bwd))}
    reps = {key: _reps(fn, min_s) for key, fn in fns.items()}
    times: dict[tuple[str, str], list[float]] = {key: [] for key in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            times[key].append(_measure(fn, reps[key]))
    med = {key: statistics.median(v) for key, v in times.items()}
    dense_bytes = sum(p.numel() * p.element_size() for p in dense.parameters())
    out = {"shape": f"{n_in}x{n_out}", "in": n_in, "out": n_out, "batch": batch, "sparsity": sparsity,
           "dense_bytes": dense_bytes, "impl": {}}
    for name in names:
        out["impl"][name] = {
            "stored_bytes": sparse[name].stored_bytes(),
            "stored_frac": sparse[name].stored_bytes() / dense_bytes,
            "fwd_us": med[("fwd", name)] * 1e6, "fwd_dense_us": med[("fwd", "dense")] * 1e6,
            "fwd_speedup": med[("fwd", "dense")] / med[("fwd", name)],
            "fb_us": med[("fwd+bwd", name)] * 1e6, "fb_dense_us": med[("fwd+bwd", "dense")] * 1e6,
            "fb_speedup": med[("fwd+bwd", "dense")] / med[("fwd+bwd", name)],
        }
    return out


def _markdown(command: str, meta: dict, rows: list[dict], names: list[str]) -> str:
    lines = [f"Command: `{command}`", "", f"Machine: {meta['machine']}; torch {meta['torch']}; "
             f"{meta['rounds']} interleaved rounds, medians; speedup = dense `nn.Linear` time / sparse time; "
             "shape = in x out; fwd is under `torch.no_grad()`; fwd+bwd computes grads to input, weights and bias.", ""]
    if meta.get("note"):
        lines += [f"Note: {meta['note']}", ""]
    target_rows = []
    for kind, shape, batch, sparsity, need in TARGETS:
        for r in rows:
            if r["threads"] == 1 and r["shape"] == shape and r["batch"] == batch and r["sparsity"] == sparsity:
                got = r["impl"][names[0]]["fwd_speedup" if kind == "fwd" else "fb_speedup"]
                verdict = "met" if got >= need else "MISSED"
                target_rows.append(f"| {kind} | {shape} | {batch} | {sparsity} | >= {need}x | {got:.2f}x | {verdict} |")
    if target_rows:
        lines += [f"## Targets (1 thread, backend `{names[0]}`)", "",
                  "| kind | shape | batch | sparsity | target | measured | |", "|---|---|---|---|---|---|---|",
                  *target_rows, ""]
    for name in names:
        lines += [f"## Backend `{name}`", "", "| threads | shape | sparsity | batch | fwd dense us | fwd sparse us | fwd x "
                  "| fwd+bwd dense us | fwd+bwd sparse us | fwd+bwd x | stored bytes (% of dense) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            m = r["impl"][name]
            lines.append(f"| {r['threads']} | {r['shape']} | {r['sparsity']} | {r['batch']} | {m['fwd_dense_us']:.1f} | "
                         f"{m['fwd_us']:.1f} | {m['fwd_speedup']:.2f} | {m['fb_dense_us']:.1f} | {m['fb_us']:.1f} | "
                         f"{m['fb_speedup']:.2f} | {m['stored_bytes']} ({100 * m['stored_frac']:.1f}%) |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="target cells only (256x256, 1024x1024), 1 thread")
    parser.add_argument("--threads", type=int, nargs="+", default=None, help="torch thread counts (default 1 2)")
    parser.add_argument("--shapes", nargs="+", default=None, help=f"in x out shapes (default {' '.join(SHAPES)})")
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (default 1 32 256)")
    parser.add_argument("--sparsities", type=float, nargs="+", default=None, help="default 0.8 0.9 0.95 0.99")
    parser.add_argument("--backends", nargs="+", default=["cpu"], help="sparse backends to time (first is the headline)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per cell (median reported)")
    parser.add_argument("--min-time", type=float, default=0.01, help="seconds per single measurement")
    parser.add_argument("--out", default=str(RESULTS / "bench_kernels"), help="output path without extension")
    parser.add_argument("--note", default="", help="free text written under the header of the .md")
    parser.add_argument("--render", metavar="JSON", help="only re-render the .md of an earlier run (with --note)")
    args = parser.parse_args(argv)
    if args.render:
        data = json.loads(Path(args.render).read_text())
        data["meta"]["note"] = args.note or data["meta"].get("note", "")
        Path(args.render).write_text(json.dumps(data, indent=1))
        names = list(data["results"][0]["impl"])
        Path(args.render).with_suffix(".md").write_text(_markdown(data["meta"]["command"], data["meta"], data["results"],
                                                                  names) + "\n")
        return
    quick = args.quick
    threads = args.threads or ([1] if quick else [1, 2])
    shapes = args.shapes or (["256x256", "1024x1024"] if quick else SHAPES)
    batches = args.batches or ([1, 256] if quick else [1, 32, 256])
    sparsities = args.sparsities or ([0.9, 0.99] if quick else [0.8, 0.9, 0.95, 0.99])
    for name in args.backends:
        if not backends.get(name).available("cpu"):
            parser.error(f"backend {name!r} is not available on this machine")
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    meta = {"machine": f"{platform.processor() or platform.machine()}, {th.get_num_threads()} torch threads available",
            "torch": th.__version__, "rounds": args.rounds, "command": command, "note": args.note}
    rows = []
    start = time.time()
    for n_threads in threads:
        th.set_num_threads(n_threads)
        for shape in shapes:
            n_in, n_out = (int(v) for v in shape.lower().split("x"))
            for sparsity in sparsities:
                for batch in batches:
                    row = {"threads": n_threads, **bench_cell(n_in, n_out, batch, sparsity, args.backends, args.rounds,
                                                               args.min_time)}
                    rows.append(row)
                    m = row["impl"][args.backends[0]]
                    print(f"threads={n_threads} {shape} sparsity={sparsity} batch={batch}: fwd x{m['fwd_speedup']:.2f} "
                          f"({m['fwd_us']:.1f}us vs {m['fwd_dense_us']:.1f}us), fwd+bwd x{m['fb_speedup']:.2f} "
                          f"({m['fb_us']:.1f}us vs {m['fb_dense_us']:.1f}us), stored {100 * m['stored_frac']:.1f}% "
                          f"[{time.time() - start:.0f}s]", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
    md = _markdown(command, meta, rows, args.backends)
    out.with_suffix(".md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
