"""Memory of dense vs sparse agents: weights, gradients, optimizer state, kernel caches, and the process's peak.

For each algorithm and hidden width, a dense model and a 90 % sparse one (``Sparse*Policy``, ERK, RigL callback) are
built and trained a few hundred steps, each in its own subprocess, so that gradients and Adam state exist and the
kernels' caches are built. Every tensor the agent holds is then counted once (shared storage counted once):

- ``weights``: every parameter of the policy (online and target networks) and the sparse layers' ``indices`` /
  ``indptr`` (the CSR topology is part of a sparse weight);
- ``grads``: the ``.grad`` of every parameter;
- ``optimizer``: the state of every optimizer of the algorithm (Adam's two moments and step counters);
- ``kernel caches``: what the sparse layers keep beside their CSR (column blocks, the CSC layout of the backward,
  row / position indices): derived, rebuilt after each topology change;
- ``peak RSS``: the subprocess's peak resident memory (``ru_maxrss``), and the same minus the peak of an identical
  process that builds the environment and the replay buffer with a width-1 network (``model peak``): the replay
  buffer, Python, torch and MuJoCo are in both. (Until 2026-11-30 the baseline process built the full dense model and
  freed it: the high-water mark kept its weights, which understated both model peaks.)

    python scripts/bench_memory.py --algos sac dqn --widths 256 1024 2048

SAC runs on HalfCheetah-v4; DQN on CartPole-v1 with an MLP of the given width and, for ``--widths`` containing 512,
on an 84x84x4 image (SB3's ``FakeImageEnv``) with the NatureCNN (its 3136x512 layer and the convolutions sparse).
Writes ``scripts/results/bench_memory.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
CATEGORIES = ("weights", "grads", "optimizer", "kernel caches")


def _tensors(obj: Any, out: list[Any]) -> None:
    """Every tensor inside nested containers, named tuples and objects with ``__slots__`` (the kernels' handles)."""
    import torch as th

    if isinstance(obj, th.Tensor):
        out.append(obj)
    elif isinstance(obj, dict):
        for value in obj.values():
            _tensors(value, out)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _tensors(value, out)
    elif hasattr(obj, "__slots__"):
        for name in obj.__slots__:
            if not name.startswith("_layer"):
                _tensors(getattr(obj, name, None), out)
    elif hasattr(obj, "__dict__") and type(obj).__module__.startswith("sparse_rl"):
        _tensors(vars(obj), out)


def count_bytes(model: Any) -> dict[str, int]:
    """Bytes per category, each storage counted once (in the first category that holds it)."""
    from sparse_rl.nn import SparseLayer
    from sparse_rl.sb3.builders import find_optimizers

    policy = model.policy
    groups: dict[str, list[Any]] = {name: [] for name in CATEGORIES}
    for param in policy.parameters():
        groups["weights"].append(param)
        if param.grad is not None:
            groups["grads"].append(param.grad)
    for module in policy.modules():
        if isinstance(module, SparseLayer):
            groups["weights"] += [module.indices, module.indptr]
            _tensors({key: value for key, (_, value) in module._cache.items()}, groups["kernel caches"])
            _tensors(module._fast, groups["kernel caches"])
    for optimizer in find_optimizers(model):
        _tensors(list(optimizer.state.values()), groups["optimizer"])
    seen: set[int] = set()
    totals = {}
    for name in CATEGORIES:
        total = 0
        for tensor in groups[name]:
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key in seen or storage.nbytes() == 0:
                continue
            seen.add(key)
            total += storage.nbytes()
        totals[name] = total
    return totals


def _make(algo: str, width: int, sparse: bool, sparsity: float, image: bool) -> tuple[Any, Any]:
    from stable_baselines3 import DQN, SAC
    from stable_baselines3.common.envs import FakeImageEnv

    from sparse_rl.sb3 import SparseDQNCnnPolicy, SparseDQNPolicy, SparseSACPolicy, TopologyCallback

    callback = TopologyCallback(method="rigl", update_every=100, drop_fraction=0.3, end=10**9) if sparse else None
    extra = dict(sparsity=sparsity) if sparse else {}
    if algo == "sac":
        kwargs = dict(net_arch=[width, width], **extra)
        model = SAC(SparseSACPolicy if sparse else "MlpPolicy", "HalfCheetah-v4", policy_kwargs=kwargs, learning_starts=100,
                    buffer_size=10_000, batch_size=256, seed=0, device="cpu")
    elif image:
        env = FakeImageEnv(screen_height=84, screen_width=84, n_channels=4, discrete=True)
        model = DQN(SparseDQNCnnPolicy if sparse else "CnnPolicy", env, policy_kwargs=dict(features_extractor_kwargs=dict(
            features_dim=width), **extra), learning_starts=100, buffer_size=2_000, batch_size=32, seed=0, device="cpu",
            optimize_memory_usage=False)
    else:
        model = DQN(SparseDQNPolicy if sparse else "MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[width, width],
                    **extra), learning_starts=100, buffer_size=10_000, batch_size=256, seed=0, device="cpu",
                    train_freq=1)
    return model, callback


def one(args: argparse.Namespace) -> dict[str, Any]:
    """Build, train and measure one model in this process (the subprocess side)."""
    import torch as th

    th.set_num_threads(1)
    if args.kind == "baseline":  # the environment and replay buffer with a width-1 network (a few KB; NatureCNN's
        # convolutions 0.3 MB): building the full dense model raised the high-water mark by its weights
        model, _ = _make(args.algo, 1, False, args.sparsity, args.image)
        return {"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    model, callback = _make(args.algo, args.width, args.kind == "sparse", args.sparsity, args.image)
    model.learn(args.steps, callback=callback)
    out: dict[str, Any] = dict(count_bytes(model))
    out["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out["params"] = sum(p.numel() for p in model.policy.parameters())
    return out


def _run_one(algo: str, width: int, kind: str, sparsity: float, steps: int, image: bool) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--one", "--algo", algo, "--width", str(width), "--kind", kind,
           "--sparsity", str(sparsity), "--steps", str(steps)] + (["--image"] if image else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mib(n: float) -> str:
    return f"{n / 2**20:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algos", nargs="+", default=["sac", "dqn"], choices=["sac", "dqn"])
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 1024, 2048])
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--steps", type=int, default=300, help="training steps before measuring")
    parser.add_argument("--out", default="bench_memory", help="results file name in scripts/results (no suffix)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--algo", default="sac", help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, default=256, help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="dense", help=argparse.SUPPRESS)
    parser.add_argument("--image", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args)))
        return 0
    cases = [(algo, width, False) for algo in args.algos for width in args.widths]
    if "dqn" in args.algos and 512 in args.widths:
        cases.append(("dqn", 512, True))
    rows = []
    for algo, width, image in cases:
        runs = {kind: _run_one(algo, width, kind, args.sparsity, args.steps, image)
                for kind in ("baseline", "dense", "sparse")}
        dense, sparse, base = runs["dense"], runs["sparse"], runs["baseline"]
        core = ("weights", "grads", "optimizer")
        row = {"algo": algo, "net": f"NatureCNN, features {width}" if image else f"[{width}, {width}]", "dense": dense,
               "sparse": sparse, "baseline_peak_rss": base["peak_rss"],
               "core_ratio": sum(sparse[k] for k in core) / sum(dense[k] for k in core),
               "with_caches_ratio": sum(sparse[k] for k in CATEGORIES) / sum(dense[k] for k in CATEGORIES),
               "model_peak_ratio": (max(sparse["peak_rss"] - base["peak_rss"], 1)
                                    / max(dense["peak_rss"] - base["peak_rss"], 1))}
        rows.append(row)
        print(json.dumps(row), flush=True)
    command = " ".join(["python", "scripts/bench_memory.py", *sys.argv[1:]])
    lines = [f"Command: `{command}` ({args.sparsity:.0%} sparse, ERK, RigL; measured after {args.steps} training steps; "
             "MiB; weights include target networks and the CSR indices; every storage counted once)", "",
             "| algo | network | weights dense / sparse | grads dense / sparse | optimizer dense / sparse | sparse kernel "
             "caches | weights+grads+optimizer sparse / dense | with caches | peak RSS dense / sparse | model peak "
             "(peak - baseline) dense / sparse |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d, s, b = r["dense"], r["sparse"], r["baseline_peak_rss"]
        lines.append(f"| {r['algo']} | {r['net']} | {_mib(d['weights'])} / {_mib(s['weights'])} | {_mib(d['grads'])} / "
                     f"{_mib(s['grads'])} | {_mib(d['optimizer'])} / {_mib(s['optimizer'])} | {_mib(s['kernel caches'])} | "
                     f"{100 * r['core_ratio']:.1f} % | {100 * r['with_caches_ratio']:.1f} % | {_mib(d['peak_rss'])} / "
                     f"{_mib(s['peak_rss'])} | {_mib(d['peak_rss'] - b)} / {_mib(s['peak_rss'] - b)} |")
    from sparse_rl.analysis.report import write_result_files

    write_result_files(RESULTS, args.out, "\n".join(lines), {"command": command, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
