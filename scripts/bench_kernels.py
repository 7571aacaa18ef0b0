"""Benchmark the sparse kernel backends against dense ``nn.Linear``, with SparseProp beside them (not a test).

Speedup = dense median time / sparse median time, for the forward (under ``torch.no_grad()``, i.e. acting) and for
forward + backward (gradients to input, values and bias, as in training). Shapes are ``in x out``. All
implementations of a cell are interleaved in rounds inside one run and medians are reported, so machine noise hits
them alike. With one thread the clock is the thread's CPU time (``--clock cpu``, the default): time slices lost to
other processes on a shared machine do not count; with more threads it is wall time. When SparseProp (Nikdan et al.,
ICML 2023, ``pip install sparseprop`` or the ``bench`` extra) is installed, its ``SparseLinear`` on the same mask is
timed in the same rounds. Writes ``scripts/results/bench_kernels.json`` and ``.md`` (the exact command is at the top
of the .md).

    python scripts/bench_kernels.py                 # full grid, 1 and 2 threads
    python scripts/bench_kernels.py --quick         # target cells only, 1 thread, a couple of minutes
    python scripts/bench_kernels.py --shapes 256x256 1024x1024 --batches 256 --sparsities 0.9 --threads 1
"""

from __future__ import annotations

import argparse
import importlib.util
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
           ("fwd+bwd", "1024x1024", 256, 0.99, 25.0), ("fwd", "256x256", 1, 0.9, 1.5), ("fwd", "1024x1024", 1, 0.9, 3.0)]
SPARSEPROP = "sparseprop"
CLOCKS = {"cpu": time.thread_time, "wall": time.perf_counter}
_clock = [time.perf_counter]


def _reps(fn: Callable[[], object], min_s: float) -> int:
    """Repetitions per measurement so that one lasts about ``min_s`` seconds."""
    fn()
    start = time.perf_counter()
    fn()
    one = max(time.perf_counter() - start, 1e-7)
    return max(1, int(min_s / one))


def _measure(fn: Callable[[], object], reps: int) -> float:
    now = _clock[0]
    start = now()
    for _ in range(reps):
        fn()
    return (now() - start) / reps


def _sparseprop_layer(layer: SparseLinear) -> nn.Module:
    """SparseProp's ``SparseLinear`` holding the same weights (its float32 CSR built from the dense weight)."""
    from sparseprop.modules import SparseLinear as SpLinear

    with th.no_grad():
        dense = nn.Linear(layer.in_features, layer.out_features)
        dense.weight.copy_(layer.dense_weight())
        dense.bias.copy_(layer.bias)
    return SpLinear.from_dense(dense)


def _tensor_bytes(module: nn.Module) -> int:
    """Bytes of every tensor a module holds (parameters, buffers, tensor attributes and tensors in tuple / list
    attributes, such as SparseProp's ``W_idx``), each storage counted once: SparseProp's own CSR, not ours."""
    held = [v for value in vars(module).values() for v in (value if isinstance(value, (tuple, list)) else (value,))]
    tensors = [*module.parameters(), *module.buffers(), *(v for v in held if isinstance(v, th.Tensor))]
    return sum(t.untyped_storage().nbytes() for t in {t.untyped_storage().data_ptr(): t for t in tensors}.values())


def bench_cell(n_in: int, n_out: int, batch: int, sparsity: float, names: list[str], rounds: int,
               min_s: float) -> dict:
    """Median seconds of every implementation for one cell, interleaved in rounds."""
    th.manual_seed(0)
    dense = nn.Linear(n_in, n_out)
    sparse: dict[str, nn.Module] = {name: SparseLinear(n_in, n_out, sparsity=sparsity, backend=name)
                                    for name in names if name != SPARSEPROP}
    if SPARSEPROP in names:
        sparse[SPARSEPROP] = _sparseprop_layer(sparse[names[0]])  # type: ignore[arg-type]
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
        stored = _tensor_bytes(sparse[name]) if name == SPARSEPROP else sparse[name].stored_bytes()  # type: ignore[operator]
        out["impl"][name] = {
            "stored_bytes": stored,
            "stored_frac": stored / dense_bytes,
            "fwd_us": med[("fwd", name)] * 1e6, "fwd_dense_us": med[("fwd", "dense")] * 1e6,
            "fwd_speedup": med[("fwd", "dense")] / med[("fwd", name)],
            "fb_us": med[("fwd+bwd", name)] * 1e6, "fb_dense_us": med[("fwd+bwd", "dense")] * 1e6,
            "fb_speedup": med[("fwd+bwd", "dense")] / med[("fwd+bwd", name)],
        }
    return out


def _markdown(command: str, meta: dict, rows: list[dict], names: list[str]) -> str:
    lines = [f"Command: `{command}`", "", f"Machine: {meta['machine']}; torch {meta['torch']}; "
             f"{meta['rounds']} interleaved rounds, medians; clock: {meta.get('clock', 'wall')} (1 thread; wall above); "
             "speedup = dense `nn.Linear` time / sparse time; shape = in x out; fwd is under `torch.no_grad()`; "
             "fwd+bwd computes grads to input, weights and bias.", ""]
    if meta.get("note"):
        lines += [f"Note: {meta['note']}", ""]
    target_rows = []
    peer = SPARSEPROP in names
    for kind, shape, batch, sparsity, need in TARGETS:
        for r in rows:
            if r["threads"] == 1 and r["shape"] == shape and r["batch"] == batch and r["sparsity"] == sparsity:
                key = "fwd_speedup" if kind == "fwd" else "fb_speedup"
                got = r["impl"][names[0]][key]
                verdict = "met" if got >= need else f"MISSED by {100 * (1 - got / need):.0f} %"
                theirs = f" {r['impl'][SPARSEPROP][key]:.2f}x |" if peer else ""
                target_rows.append(f"| {kind} | {shape} | {batch} | {sparsity} | >= {need}x | {got:.2f}x |{theirs} "
                                   f"{verdict} |")
    if target_rows:
        lines += [f"## Targets (1 thread, backend `{names[0]}`)", "",
                  "| kind | shape | batch | sparsity | target | measured |" + (" SparseProp |" if peer else "") + " verdict |",
                  "|---|---|---|---|---|---|" + ("---|" if peer else "") + "---|", *target_rows, ""]
    if peer:
        lines += [f"## `{names[0]}` vs SparseProp (speed-up over dense, same mask, same rounds)", "",
                  "| threads | shape | sparsity | batch | fwd ours | fwd SparseProp | fwd+bwd ours | fwd+bwd SparseProp "
                  "| ahead |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            a, b = r["impl"][names[0]], r["impl"][SPARSEPROP]
            ahead = "yes" if a["fwd_speedup"] > b["fwd_speedup"] and a["fb_speedup"] > b["fb_speedup"] else "NO"
            lines.append(f"| {r['threads']} | {r['shape']} | {r['sparsity']} | {r['batch']} | {a['fwd_speedup']:.2f} | "
                         f"{b['fwd_speedup']:.2f} | {a['fb_speedup']:.2f} | {b['fb_speedup']:.2f} | {ahead} |")
        lines.append("")
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
    parser.add_argument("--no-sparseprop", action="store_true", help="leave SparseProp out even when it is installed")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                        help="cpu: the thread's CPU time at 1 thread (default, robust on a shared machine); wall")
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
    names = list(args.backends)
    if not args.no_sparseprop and importlib.util.find_spec(SPARSEPROP) is not None:
        names.append(SPARSEPROP)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    meta = {"machine": f"{platform.processor() or platform.machine()}, {th.get_num_threads()} torch threads available",
            "torch": th.__version__, "rounds": args.rounds, "command": command, "note": args.note, "clock": args.clock}
    rows = []
    start = time.time()
    for n_threads in threads:
        th.set_num_threads(n_threads)
        _clock[0] = CLOCKS[args.clock] if n_threads == 1 else time.perf_counter  # others' CPU time is not on this clock
        for shape in shapes:
            n_in, n_out = (int(v) for v in shape.lower().split("x"))
            for sparsity in sparsities:
                for batch in batches:
                    row = {"threads": n_threads, **bench_cell(n_in, n_out, batch, sparsity, names, args.rounds,
                                                               args.min_time)}
                    rows.append(row)
                    m = row["impl"][args.backends[0]]
                    print(f"threads={n_threads} {shape} sparsity={sparsity} batch={batch}: fwd x{m['fwd_speedup']:.2f} "
                          f"({m['fwd_us']:.1f}us vs {m['fwd_dense_us']:.1f}us), fwd+bwd x{m['fb_speedup']:.2f} "
                          f"({m['fb_us']:.1f}us vs {m['fb_dense_us']:.1f}us), stored {100 * m['stored_frac']:.1f}% "
                          f"[{time.time() - start:.0f}s]", flush=True)
    out = Path(args.out)  # without extension: "bench_0.9" gives bench_0.9.json (with_suffix would cut it to bench_0)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.parent.joinpath(f"{out.name}.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
    md = _markdown(command, meta, rows, names)
    out.parent.joinpath(f"{out.name}.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
