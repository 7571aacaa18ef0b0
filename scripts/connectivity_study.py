"""Connectivity of sparse masks: how often a plain random mask leaves an input or a unit unconnected, and what the
guarantee (every input and unit keeps >= 1 connection, :func:`sparse_rl.nn.masks.random_mask`) changes in learning.

1. Mask statistics (no training): for the benchmark networks, the fraction of seeds whose initial masks leave an
   input feature or a hidden unit without any connection, with plain uniform masks (the behaviour before the
   guarantee) and with the guarantee.
2. Learning, 5 seeds each: SB3's own HER test (DQN + HER on BitFlippingEnv, 10 bits, 5000 steps, success rate of the
   last training episodes) and TD3 on Pendulum-v1 with net_arch [16, 16] (20k steps, final evaluation return), for
   dense, 90 % with uniform masks, 90 % with the guarantee, and 90 % with the guarantee and a dense input layer.

    python scripts/connectivity_study.py --seeds 5

Writes ``scripts/results/connectivity.{md,json}``. "uniform" replaces the mask builder of
:mod:`sparse_rl.sb3.builders` by the uniform draw for the duration of a run (a study-only switch).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch as th

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = {  # name -> (sparsity, connected masks, dense_layers)
    "dense": (0.0, True, None),
    "90% uniform masks": (0.9, False, None),
    "90% connected masks": (0.9, True, None),
    "90% connected + dense input": (0.9, True, ("input", "output")),
}


@contextlib.contextmanager
def mask_builder(connected: bool):
    """Build the policies' masks with or without the connectivity guarantee."""
    import sparse_rl.sb3.builders as builders
    from sparse_rl.nn.masks import random_mask

    original = builders.random_mask
    builders.random_mask = functools.partial(random_mask, connected=connected)
    try:
        yield
    finally:
        builders.random_mask = original


def _networks():
    import gymnasium as gym
    from stable_baselines3 import DQN, PPO, SAC, TD3
    from stable_baselines3.common.envs import BitFlippingEnv

    from sparse_rl.harness.envs import register_optional_envs

    register_optional_envs()
    ppo_arch = dict(net_arch=dict(pi=[256, 256], vf=[256, 256]), ortho_init=False)
    return {
        "PPO HalfCheetah [256, 256]": lambda seed, kw: PPO("SparseMlpPolicy", gym.make("HalfCheetah-v4"), seed=seed,
                                                         policy_kwargs={**ppo_arch, **kw}),
        "SAC HalfCheetah [256, 256]": lambda seed, kw: SAC("SparseMlpPolicy", gym.make("HalfCheetah-v4"), seed=seed,
                                                         buffer_size=10, policy_kwargs=kw),
        "DQN+HER BitFlipping-10 [64, 64]": lambda seed, kw: DQN("SparseMultiInputPolicy", BitFlippingEnv(n_bits=10),
                                                              seed=seed, buffer_size=10, policy_kwargs=kw),
        "TD3 Pendulum [16, 16]": lambda seed, kw: TD3("SparseMlpPolicy", gym.make("Pendulum-v1"), seed=seed, buffer_size=10,
                                                    policy_kwargs=dict(net_arch=[16, 16], **kw)),
        "DQN MinAtar Breakout": lambda seed, kw: DQN("SparseMinAtarPolicy", gym.make("MinAtar/Breakout-v1"), seed=seed,
                                                   buffer_size=10, policy_kwargs=kw),
    }


def mask_statistics(seeds: int) -> dict:
    from sparse_rl.nn.masks import uncovered
    from sparse_rl.sb3.builders import sparse_layers

    result = {}
    for name, build in _networks().items():
        row = {}
        for connected in (False, True):
            inputs = units = 0
            layers_hit: dict[str, int] = {}
            for seed in range(seeds):
                with mask_builder(connected):
                    model = build(seed, dict(sparsity=0.9))
                any_input = any_unit = False
                for layer_name, layer in sparse_layers(model.policy).items():
                    rows, cols = uncovered(layer.mask.reshape(layer.matrix_shape))
                    if rows or cols:
                        layers_hit[layer_name] = layers_hit.get(layer_name, 0) + 1
                    any_input |= cols > 0
                    any_unit |= rows > 0
                inputs += any_input
                units += any_unit
            row["connected" if connected else "uniform"] = {
                "seeds_with_an_unconnected_input": inputs / seeds, "seeds_with_a_unit_without_inputs": units / seeds,
                "layers": layers_hit}
        result[name] = row
        print(name, json.dumps(row), flush=True)
    return result


def _her_run(seed: int, sparsity: float, dense_layers) -> float:
    from stable_baselines3 import DQN, HerReplayBuffer
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.envs import BitFlippingEnv

    from sparse_rl.sb3 import TopologyCallback

    env = make_vec_env(lambda: BitFlippingEnv(n_bits=10, continuous=False), 2)
    kwargs = dict(sparsity=sparsity) if dense_layers is None else dict(sparsity=sparsity, dense_layers=dense_layers)
    model = DQN("SparseMultiInputPolicy", env, replay_buffer_class=HerReplayBuffer,  # SB3's test_performance_her
                replay_buffer_kwargs=dict(n_sampled_goal=5, goal_selection_strategy="future"), learning_rate=5e-4,
                train_freq=1, gradient_steps=2, learning_starts=100, exploration_final_eps=0.02,
                target_update_interval=500, seed=seed, batch_size=32, buffer_size=int(1e5), policy_kwargs=kwargs)
    callback = TopologyCallback(method="rigl", update_every=500, drop_fraction=0.3, end=0.8) if sparsity else None
    model.learn(5000, callback=callback)
    return float(np.mean(model.ep_success_buffer))


def _td3_run(seed: int, sparsity: float, dense_layers) -> float:
    from sparse_rl.train import main as train_main

    root = Path("logs/connectivity") / f"td3_{sparsity}_{dense_layers}_{seed}_{time.time_ns()}"
    params = ["policy_kwargs:dict(net_arch=[16, 16]" + (f", dense_layers={list(dense_layers)}" if dense_layers else "") + ")"]
    argv = ["--algo", "td3", "--env", "Pendulum-v1", "--sparsity", str(sparsity), "--seed", str(seed), "-f", str(root),
            "--eval-freq", "20000", "--eval-episodes", "10", "-v", "0", "-params", *params]
    assert train_main(argv) == 0
    data = np.load(next(root.rglob("evaluations.npz")))
    return float(data["results"][-1].mean())


def learning(seeds: int) -> dict:
    result = {}
    for task, run in (("DQN+HER BitFlipping-10, success rate", _her_run), ("TD3 Pendulum [16, 16], return", _td3_run)):
        result[task] = {}
        for variant, (sparsity, connected, dense_layers) in VARIANTS.items():
            scores = []
            for seed in range(seeds):
                with mask_builder(connected), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    scores.append(run(seed, sparsity, dense_layers))
            result[task][variant] = scores
            print(task, variant, np.round(scores, 3).tolist(), flush=True)
    return result


def markdown(stats: dict, learned: dict, command: str) -> str:
    lines = [f"Command: `{command}`", "", "Initial masks at 90 % (ERK, heads dense): fraction of seeds with an input "
             "feature without any connection / a unit without inputs.", "",
             "| network | uniform masks: input / unit | connected masks: input / unit | layers hit (uniform) |",
             "|---|---|---|---|"]
    for name, row in stats.items():
        u, c = row["uniform"], row["connected"]
        lines.append(f"| {name} | {u['seeds_with_an_unconnected_input']:.2f} / {u['seeds_with_a_unit_without_inputs']:.2f} | "
                     f"{c['seeds_with_an_unconnected_input']:.2f} / {c['seeds_with_a_unit_without_inputs']:.2f} | "
                     f"{', '.join(f'{k} ({v})' for k, v in u['layers'].items()) or '-'} |")
    for task, variants in learned.items():
        lines += ["", f"{task}, per seed (mean):", "", "| variant | seeds | mean |", "|---|---|---|"]
        for variant, scores in variants.items():
            lines.append(f"| {variant} | {', '.join(f'{s:.2f}' for s in scores)} | {np.mean(scores):.3f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="learning seeds (mask statistics use 4x as many)")
    parser.add_argument("--skip-learning", action="store_true")
    args = parser.parse_args()
    th.set_num_threads(1)
    stats = mask_statistics(4 * args.seeds)
    learned = {} if args.skip_learning else learning(args.seeds)
    command = " ".join(["python", "scripts/connectivity_study.py", *sys.argv[1:]])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "connectivity.json").write_text(json.dumps({"command": command, "masks": stats, "learning": learned},
                                                          indent=1))
    (RESULTS / "connectivity.md").write_text(markdown(stats, learned, command))
    print(markdown(stats, learned, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
