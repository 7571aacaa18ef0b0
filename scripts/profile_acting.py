"""Where acting time goes at batch 1, dense vs sparse agent: SB3's ``predict``, the policy's forward, and each weight
layer alone on the input it receives while acting (the breakdown behind the agents' "acting time vs dense").

    python scripts/profile_acting.py --pairs sac/HalfCheetah-v4/dense:sac/HalfCheetah-v4/rigl90

Each pair is two agent folders under ``agents/`` (or any run folders). One torch thread; every measurement is the
median over ``--rounds`` rounds in which the two agents alternate, so both see the same machine load; a part's ratio
is sparse time / dense time (under 1: sparse is faster). The row "policy forward, dense layer stacks" times the sparse
policy with its fused sparse layer stacks swapped for the dense agent's (:func:`swapped_stacks`): level with dense's
forward, the sparse forward's extra time is in the stacks, not in the policy code around them; "dense layers in the
fused container" keeps the dense layers in a ``SparseSequential`` (the container's own cost). Writes
``scripts/results/profile_acting.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch as th
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sparse_rl.harness.runs import load_agent  # noqa: E402
from sparse_rl.nn.base import SparseLayer  # noqa: E402
from sparse_rl.nn.fused import SparseSequential  # noqa: E402

WEIGHT_LAYERS = (nn.Linear, nn.Conv2d, SparseLayer)
SWAPPED, SWAPPED_FUSED = "policy forward, dense layer stacks", "policy forward, dense layers in the fused container"


def _per_call_us(fn: Callable[[], Any], calls: int) -> float:
    for _ in range(calls // 10):
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def parts(model: Any, observation: Any) -> dict[str, tuple[Callable[[], Any], str]]:
    """``part -> (call, description)``: predict, the policy forward, and each weight layer that acting runs, called on
    the input it got during one ``predict`` (captured with forward hooks)."""
    seen: list[tuple[str, nn.Module, th.Tensor]] = []
    hooks = [module.register_forward_hook(lambda m, args, out, name=name: seen.append((name, m, args[0].detach())))
             for name, module in model.policy.named_modules() if isinstance(module, WEIGHT_LAYERS)]
    with th.no_grad():
        model.predict(observation, deterministic=True)
    for hook in hooks:
        hook.remove()
    tensor, _ = model.policy.obs_to_tensor(observation)
    result = {"predict": (lambda: model.predict(observation, deterministic=True), "SB3 predict, numpy in and out"),
              "policy forward": (lambda: model.policy._predict(tensor, deterministic=True), "policy._predict on a tensor")}
    for name, module, inputs in seen:
        density = f", density {module.density:.3f}" if isinstance(module, SparseLayer) else ""
        shape = "x".join(str(d) for d in getattr(module, "weight_shape", None) or module.weight.shape)
        result[name] = (lambda m=module, x=inputs: m(x), f"{type(module).__name__} {shape}{density}")
    return result


def swapped_stacks(sparse_policy: nn.Module, dense_policy: nn.Module, container: type[nn.Sequential] = nn.Sequential
                   ) -> tuple[nn.Module, int]:
    """A copy of the sparse policy in which every fused sparse layer stack (``SparseSequential``) is replaced by a copy
    of the dense agent's ``nn.Sequential`` at the same path, its layers held in ``container`` (``SparseSequential``:
    the fused container's own cost): the sparse policy's own classes and code around dense layer stacks. Returns the
    copy and how many stacks were swapped."""
    policy = copy.deepcopy(sparse_policy)
    dense_modules = dict(dense_policy.named_modules())
    swapped = 0
    for name, module in list(policy.named_modules()):
        if name and isinstance(module, SparseSequential) and type(dense_modules.get(name)) is nn.Sequential:
            parent, _, child = name.rpartition(".")
            setattr(policy.get_submodule(parent), child, container(*copy.deepcopy(list(dense_modules[name]))))
            swapped += 1
    return policy, swapped


def profile(dense_dir: Path, sparse_dir: Path, rounds: int, calls: int) -> dict[str, Any]:
    models = {kind: load_agent(path)[0] for kind, path in (("dense", dense_dir), ("sparse", sparse_dir))}
    observation = models["dense"].observation_space.sample()
    table = {kind: parts(model, observation) for kind, model in models.items()}
    # is the forward's extra time in the sparse layer stacks, or in the policy around them? (the dense agent has nothing
    # to swap: its row repeats its policy forward)
    tensor, _ = models["dense"].policy.obs_to_tensor(observation)
    for part, container, held in ((SWAPPED, nn.Sequential, ""), (SWAPPED_FUSED, SparseSequential,
                                                                  " (in the fused container)")):
        hybrid, swapped = swapped_stacks(models["sparse"].policy, models["dense"].policy, container)
        table["sparse"][part] = (lambda h=hybrid: h._predict(tensor, deterministic=True),  # type: ignore[operator]
                                 f"policy._predict with the dense agent's {swapped} layer stack(s) swapped in{held}")
        table["dense"][part] = (table["dense"]["policy forward"][0], "policy._predict (nothing to swap)")
    times: dict[str, dict[str, list[float]]] = {kind: {part: [] for part in table[kind]} for kind in table}
    with th.no_grad():
        for _ in range(rounds):
            for kind in ("dense", "sparse"):
                for part, (call, _) in table[kind].items():
                    times[kind][part].append(_per_call_us(call, calls))
    rows = []
    for part in {**table["dense"], **table["sparse"]}:  # layers of either agent, in calling order
        us = {kind: statistics.median(times[kind][part]) if part in table[kind] else float("nan") for kind in table}
        rows.append({"part": part, "dense": table["dense"].get(part, (None, "-"))[1],
                     "sparse": table["sparse"].get(part, (None, "-"))[1], "dense_us": us["dense"],
                     "sparse_us": us["sparse"], "ratio": us["sparse"] / us["dense"]})
    return {"dense_agent": str(dense_dir), "sparse_agent": str(sparse_dir), "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", nargs="+", default=["sac/HalfCheetah-v4/dense:sac/HalfCheetah-v4/rigl90",
                                                       "dqn/MinAtar-Breakout-v1/dense:dqn/MinAtar-Breakout-v1/rigl90"],
                        help="DENSE:SPARSE agent folders, relative to agents/ or absolute")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=1000, help="calls per part and round")
    parser.add_argument("--out", default="profile_acting")
    args = parser.parse_args()
    th.set_num_threads(1)
    results = []
    for pair in args.pairs:
        dense, sparse = (Path(p) if Path(p).is_absolute() else ROOT / "agents" / p for p in pair.split(":"))
        for path in (dense, sparse):
            if not path.is_dir():
                print(f"error: --pairs {pair}: {path} is not a folder", file=sys.stderr)
                return 2
        results.append(profile(dense, sparse, args.rounds, args.calls))
    command = "python scripts/profile_acting.py " + " ".join(sys.argv[1:])
    lines = [f"Command: `{command.strip()}` (one torch thread, batch 1, median of {args.rounds} interleaved rounds of "
             f"{args.calls} calls; microseconds per call; ratio = sparse / dense)"]
    for result in results:
        dense, sparse = Path(result["dense_agent"]), Path(result["sparse_agent"])
        where = sparse.parent.relative_to(ROOT / "agents") if ROOT / "agents" in sparse.parents else sparse.parent
        lines += ["", f"**{dense.name} vs {sparse.name}** ({where})", "",
                  "| part | dense layer | sparse layer | dense (us) | sparse (us) | sparse / dense |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['part']} | {r['dense']} | {r['sparse']} | {r['dense_us']:.1f} | {r['sparse_us']:.1f} | "
                  f"{r['ratio']:.2f} |" for r in result["rows"]]
    out = ROOT / "scripts" / "results" / args.out
    Path(f"{out}.md").write_text("\n".join(lines) + "\n")
    Path(f"{out}.json").write_text(json.dumps({"command": command, "results": results}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
