"""Evaluating saved agents across seeds on a benchmark suite, with sparsity-aware cost columns.

Each run folder written by ``python -m sparse_rl.train`` is played for full episodes under the suite's protocol
(:mod:`sparse_rl.harness.suites`): deterministic actions; for Atari, no episodic life, unclipped rewards, a 108k-frame cap
(27k agent steps) and epsilon 0.001 for value-based agents. Scores are normalised per task, then aggregated with
rliable (Agarwal et al. 2021) in :mod:`sparse_rl.analysis.aggregate`.

Acting latency: ``model.policy.predict`` on one real observation, timed for the sparse policy and for its *dense
counterpart* (the same policy with its sparse layers swapped for ``nn.Linear``/``nn.Conv2d`` holding the same weights,
zeros included), interleaved in rounds in one process with one torch thread; the ratio of the medians is
``latency_vs_dense``. This isolates the layer kernels: observation preprocessing, architecture and weights are equal.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from torch import nn

from sparse_rl.analysis.runs import Run, find_runs, print_and_keep
from sparse_rl.harness.agents import compare_with_stored, stored_evaluation
from sparse_rl.harness.suites import Suite, load_suite
from sparse_rl.nn.layers import SparseConv2d, SparseLayer, SparseLinear

VALUE_BASED = ("dqn",)
CSV_COLUMNS = (
    "run", "algo", "env", "eval_env", "task", "method", "sparsity", "label", "group", "seed", "model", "episodes",
    "return_mean", "return_std", "normalized", "reference_low", "reference_high", "reference_name", "density", "nnz",
    "numel", "inference_flops_vs_dense", "backend", "latency_ms", "dense_latency_ms", "latency_vs_dense",
)


# ------------------------------------------------------------------------------------------------ dense counterpart
def dense_module(layer: SparseLayer) -> nn.Module:
    """An ``nn.Linear``/``nn.Conv2d`` with the sparse layer's weights (zeros at pruned positions) and bias."""
    with th.no_grad():
        weight = layer.dense_weight().detach().clone()
        bias = layer.bias.detach().clone() if layer.bias is not None else None
    if isinstance(layer, SparseLinear):
        module: nn.Module = nn.Linear(layer.in_features, layer.out_features, bias=bias is not None)
    elif isinstance(layer, SparseConv2d):
        module = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, bias=bias is not None,
                           **layer.conv_kwargs())
    else:
        raise ValueError(f"no dense counterpart for {type(layer).__name__}")
    module = module.to(device=weight.device, dtype=weight.dtype)
    with th.no_grad():
        module.weight.copy_(weight)
        if bias is not None:
            module.bias.copy_(bias)
    return module


def _swap_sparse_layers(policy: nn.Module, replacement: dict[int, nn.Module]) -> dict[int, nn.Module]:
    """Put ``replacement[id(layer)]`` in place of each layer keyed there (shared layers stay shared).

    :return: the reverse map, to swap the original layers back
    """
    reverse: dict[int, nn.Module] = {}
    for parent in list(policy.modules()):
        for name, child in list(parent.named_children()):
            if id(child) in replacement:
                new = replacement[id(child)]
                reverse[id(new)] = child
                setattr(parent, name, new)
    return reverse


def dense_replacements(policy: nn.Module) -> dict[int, nn.Module]:
    """``id(sparse layer) -> dense equivalent`` for every sparse layer of ``policy``."""
    return {id(m): dense_module(m) for m in policy.modules() if isinstance(m, SparseLayer)}


def set_backend(policy: nn.Module, backend: str) -> None:
    """Run every sparse layer of ``policy`` on ``backend`` (``auto`` or a backend available on the CPU)."""
    from sparse_rl.nn import backends

    backends.check_name(backend)
    if backend != backends.AUTO and backend not in backends.available("cpu"):
        choices = [backends.AUTO, *backends.available("cpu")]
        raise ValueError(f"backend {backend!r} is not available here; available: {choices}")
    for module in policy.modules():
        if isinstance(module, SparseLayer):
            module.backend = backend


def acting_latency(policy: Any, observation: Any, steps: int = 100, rounds: int = 5) -> dict[str, float]:
    """Seconds per ``policy.predict`` call with the sparse layers and with their dense counterparts, interleaved.

    The dense counterpart is the same policy object with each sparse layer swapped for an ``nn.Linear``/``nn.Conv2d``
    holding its weights (swapped back afterwards), so everything but the layer kernels is shared. One torch thread.

    :param policy: an SB3 policy (sparse layers are timed with their current backend)
    :param observation: one observation as ``predict`` takes it
    :param steps: calls per round and variant (after warm-up calls)
    :param rounds: alternating rounds; the median per-call time over rounds is reported
    :return: ``{"latency_ms", "dense_latency_ms", "latency_vs_dense"}``
    """
    to_dense = dense_replacements(policy)
    variants = ("sparse", "dense") if to_dense else ("sparse",)
    times: dict[str, list[float]] = {"sparse": [], "dense": []}
    threads = th.get_num_threads()
    th.set_num_threads(1)
    try:
        with th.inference_mode():
            for round_ in range(rounds + 1):  # round 0 warms both variants up
                for variant in variants:
                    to_sparse = _swap_sparse_layers(policy, to_dense) if variant == "dense" else {}
                    try:
                        started = time.perf_counter()
                        for _ in range(steps if round_ else max(steps // 5, 3)):
                            policy.predict(observation, deterministic=True)
                        if round_:
                            times[variant].append((time.perf_counter() - started) / steps)
                    finally:
                        _swap_sparse_layers(policy, to_sparse)
    finally:
        th.set_num_threads(threads)
    sparse_s = float(np.median(times["sparse"]))
    dense_s = float(np.median(times["dense"])) if to_dense else sparse_s
    return {"latency_ms": 1e3 * sparse_s, "dense_latency_ms": 1e3 * dense_s, "latency_vs_dense": sparse_s / dense_s}


# ------------------------------------------------------------------------------------------------ playing episodes
def build_eval_env(run: Run, hyperparams: dict[str, Any], env_id: str, seed: int, best: bool = False) -> Any:
    """The run's evaluation VecEnv for ``env_id`` (Atari: full episodes, unclipped), with the VecNormalize statistics of
    its final model (``best``: of ``best_model.zip``)."""
    from sparse_rl.harness.envs import evaluation_env
    from sparse_rl.harness.runs import RunFolder, saved_hyperparams

    return evaluation_env(env_id, saved_hyperparams(hyperparams), seed, RunFolder(run.path, run.env).statistics_path(best))


def play(model: Any, env: Any, episodes: int, deterministic: bool = True, epsilon: float = 0.0,
         max_episode_steps: int | None = None, seed: int = 0, max_total_steps: int | None = None,
         on_step: Callable[[Any], None] | None = None) -> list[float]:
    """Undiscounted returns of ``episodes`` episodes (the one episode loop of evaluation and replay).

    :param epsilon: probability of a uniformly random action at each step (value-based agents)
    :param max_episode_steps: an episode longer than this is cut there (its return so far counts)
    :param max_total_steps: stop after this many steps in all (unfinished episodes do not count)
    :param on_step: called with the env after every step (e.g. to record a video frame)
    """
    rng = np.random.default_rng(seed)
    env.action_space.seed(seed)
    returns: list[float] = []
    obs, total, steps, all_steps = env.reset(), 0.0, 0, 0
    while len(returns) < episodes and (max_total_steps is None or all_steps < max_total_steps):
        action, _ = model.predict(obs, deterministic=deterministic)
        if epsilon > 0 and rng.random() < epsilon:
            action = np.array([env.action_space.sample()])
        obs, reward, done, infos = env.step(action)
        if on_step is not None:
            on_step(env)
        total += float(reward[0])
        steps += 1
        all_steps += 1
        if done[0] or (max_episode_steps is not None and steps >= max_episode_steps):
            episode = infos[0].get("episode") if done[0] else None  # Monitor's return: unclipped, whole game
            returns.append(float(episode["r"]) if episode else total)
            total, steps = 0.0, 0
            if not done[0]:
                obs = env.reset()
    return returns


def group_name(run: Run, several_algos: bool) -> str:
    """Configuration of a run (``Run.config``), prefixed by the algorithm when several are evaluated together."""
    return f"{run.algo.upper()} {run.config}" if several_algos else run.config


def evaluate_run(run: Run, suite: Suite, episodes: int, best: bool = False, env_id: str | None = None,
                 max_episode_steps: int | None = None, epsilon: float = 0.0, deterministic: bool = True,
                 backend: str | None = None, latency_steps: int = 100, seed: int = 0, group: str | None = None
                 ) -> dict[str, Any]:
    """Play one run's agent and measure its costs; returns one row of ``results.csv``.

    :param env_id: evaluate on this env instead of the run's own (same spaces required)
    :param latency_steps: ``predict`` calls per round when timing latency (0: skip the timing)
    """
    from stable_baselines3.common.utils import check_for_correct_spaces

    from sparse_rl.harness.runs import load_agent
    from sparse_rl.sb3.flops import policy_flops
    from sparse_rl.sb3.report import sparsity_report

    env_id = env_id or run.env
    task = suite.task_of(env_id)
    if task is None:
        raise ValueError(f"{env_id!r} is not part of suite {suite.name!r} (tasks: {suite.tasks})")
    model, _, hyperparams = load_agent(run.path, best)
    if backend is not None:
        set_backend(model.policy, backend)
    env = build_eval_env(run, hyperparams, env_id, seed, best)
    try:
        try:
            check_for_correct_spaces(env, model.observation_space, model.action_space)
        except ValueError as error:
            raise ValueError(f"the agent of {run.path} does not fit {env_id}: {error}") from None
        eps = epsilon if run.algo in VALUE_BASED else 0.0
        returns = play(model, env, episodes, deterministic, eps, max_episode_steps, seed)
        observation = env.reset()
    finally:
        env.close()
    total = sparsity_report(model)["total"]
    flops = policy_flops(model.policy, observation)  # one real observation, batch of one
    low, high, high_name = suite.reference(task, run.algo)
    mean = float(np.mean(returns))
    row: dict[str, Any] = {
        "run": str(run.path), "algo": run.algo, "env": run.env, "eval_env": env_id, "task": task, "method": run.method,
        "sparsity": run.sparsity, "label": run.config, "group": group or run.config, "seed": run.seed,
        "model": "best" if best else "last", "episodes": len(returns), "returns": returns, "return_mean": mean,
        "return_std": float(np.std(returns)), "normalized": suite.normalize(task, mean, run.algo), "reference_low": low,
        "reference_high": high, "reference_name": high_name, "density": total["density"], "nnz": total["nnz"],
        "numel": total["numel"], "inference_flops_vs_dense": flops["inference_vs_dense"],
        "backend": backend or "auto",
    }
    if latency_steps > 0:
        row.update(acting_latency(model.policy, observation, steps=latency_steps))
    else:
        row.update(latency_ms=math.nan, dense_latency_ms=math.nan, latency_vs_dense=math.nan)
    return row


# ------------------------------------------------------------------------------------------------ a whole suite
def select_runs(suite: Suite, runs_dir: str | Path, env_id: str | None = None, say: Any = print) -> list[Run]:
    """The runs under ``runs_dir`` that belong to the suite (every run when ``env_id`` overrides their env);
    ``say`` receives the notes on what was left out or differs."""
    runs: list[Run] = []

    def belongs(run: Run) -> bool:  # runs of other envs are left out before grouping (no notes about them)
        runs.append(run)
        return env_id is not None or suite.task_of(run.env) is not None

    selected = find_runs(runs_dir, say=say, keep=belongs)
    if not runs:
        raise ValueError(f"no runs under {str(runs_dir)!r}: point --runs at a folder written by python -m sparse_rl.train")
    if not selected:
        envs = sorted({r.env for r in runs})
        raise ValueError(f"none of the runs under {str(runs_dir)!r} (envs {envs}) belongs to suite {suite.name!r} "
                         f"(tasks: {suite.tasks})")
    return selected


def write_results(rows: list[dict[str, Any]], out_dir: Path, extra: dict[str, Any]) -> dict[str, Path]:
    """``results.csv`` (one row per run, the cost columns included) and ``results.json`` (rows, returns, aggregates)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, np.generic):
            return clean(value.item())
        return value

    (out_dir / "results.json").write_text(json.dumps(clean({**extra, "runs": rows}), indent=2))
    return {"csv": out_dir / "results.csv", "json": out_dir / "results.json"}


def evaluate_suite(suite_name: str, runs_dir: str | Path, out_dir: str | Path | None = None, episodes: int | None = None,
                   best: bool = False, env_id: str | None = None, max_episode_steps: int | None = None,
                   epsilon: float | None = None, backend: str | None = None, latency_steps: int = 100, reps: int = 2000,
                   seed: int | None = None, plots: bool = True) -> dict[str, Any]:
    """Evaluate every run of a suite under ``runs_dir``, write ``results.csv``/``results.json`` and the rliable plots.

    :param suite_name: ``mujoco``, ``atari`` (Atari-5), ``atari26``, ``atari57`` or one env id
    :param episodes: episodes per run (default: the suite's protocol)
    :param max_episode_steps: cap on agent steps per episode (default: the protocol's; 27000 for Atari)
    :param reps: stratified-bootstrap resamples of the rliable confidence intervals
    :param seed: seed of the evaluation envs and the bootstrap (``None``: the stored evaluation seed when every run is
        a packaged agent storing the same one, else 0); agents evaluated as they were packaged (their seed,
        deterministic, the final model on their own env, no cut) are compared with their ``results.json``
    :return: ``{"rows", "aggregate", "paths", "suite"}``
    """
    from sparse_rl.analysis.aggregate import aggregate

    suite = load_suite(suite_name)
    if env_id is not None:
        from sparse_rl.harness.envs import check_env_id

        check_env_id(env_id)
        if suite.task_of(env_id) is None:
            raise ValueError(f"--env {env_id!r} is not part of suite {suite.name!r} (tasks: {suite.tasks})")
    if backend is not None:
        from sparse_rl.nn import backends

        backends.check_name(backend)
    protocol = suite.protocol
    overridden = [flag for flag, value in (("--episodes", episodes), ("--max-episode-steps", max_episode_steps),
                                           ("--epsilon", epsilon)) if value is not None]
    episodes = int(episodes or protocol.get("episodes", 10))
    if episodes <= 0:
        raise ValueError(f"--episodes must be positive, got {episodes}")
    max_steps = max_episode_steps if max_episode_steps is not None else protocol.get("max_episode_steps")
    eps = float(protocol.get("epsilon", 0.0) if epsilon is None else epsilon)
    notes: list[str] = []  # printed now and kept in results.json
    say = print_and_keep(notes)
    runs = select_runs(suite, runs_dir, env_id, say=say)
    stored = {run.path: stored_evaluation(run.path) for run in runs}
    if seed is None:
        seeds = {value[0] for value in stored.values() if value is not None}
        seed = seeds.pop() if len(seeds) == 1 and all(stored.values()) else 0
        if seed:
            say(f"env seed {seed}: the agents' stored evaluation seed (results.json); --seed chooses another")
    deterministic = bool(protocol.get("deterministic", True))
    print(f"protocol ({suite.name}'s{', with ' + ' '.join(overridden) if overridden else ''}): "
          f"{episodes} episodes per run, {'deterministic' if deterministic else 'stochastic'} actions, epsilon {eps:g}, "
          f"episodes cut at {max_steps or 'the env limit'} agent steps, the {'best' if best else 'final'} model, "
          f"env seed {seed}; {len(runs)} runs")
    several = len({r.algo for r in runs}) > 1
    rows = [evaluate_run(run, suite, episodes, best, env_id, max_steps, eps, deterministic, backend, latency_steps, seed,
                         group_name(run, several)) for run in runs]
    as_packaged = deterministic and eps == 0 and not best and env_id is None and max_steps is None and backend is None
    for run, row in zip(runs, rows):
        agent = stored[run.path]
        if agent is not None and as_packaged and seed == agent[0]:
            say(f"{run.path}: {compare_with_stored(row['returns'], agent[1])[1]}")
        elif agent is not None:
            say(f"{run.path}: results.json not compared (evaluated otherwise than it was packaged: seed {agent[0]}, "
                "deterministic, epsilon 0, the final model on its own env, no episode cut, each layer's own backend)")
    for task in sorted({r["task"] for r in rows}):
        references = sorted({(r["algo"], r["reference_name"], r["reference_high"]) for r in rows if r["task"] == task})
        if len({name for _, name, _ in references}) > 1:
            say(f"{task}: each algorithm is normalised against its own reference ("
                + ", ".join(f"{algo}: {name} {high:g}" for algo, name, high in references if high is not None)
                + "), so normalised scores do not compare across algorithms")
    out = Path(out_dir) if out_dir is not None else Path(runs_dir) / "evaluation"
    summary = aggregate(rows, out, reps=reps, seed=seed, plots=plots)
    few = sorted(group for group, values in summary.get("groups", {}).items() if values.get("runs", 3) < 3)
    if few:
        say(f"fewer than 3 runs in {', '.join(few)}: their 95 % CIs are bootstrap ranges of so few runs (a point for "
            "one run), not intervals to judge by")
    extra = {"suite": suite.name, "tasks": suite.tasks, "protocol": {**protocol, "episodes": episodes,
             "max_episode_steps": max_steps, "epsilon": eps}, "model": "best" if best else "last", "aggregate": summary,
             "notes": notes}
    paths = {**write_results(rows, out, extra), **summary.get("plots", {})}
    return {"rows": rows, "aggregate": summary, "paths": paths, "suite": suite}


def run_table(rows: list[dict]) -> str:
    """One line per evaluated run: env, configuration, seed, return, normalised score and latency ratio."""
    lines = ["| env | config | seed | episodes | return | normalized | latency vs dense |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        norm = "n/a" if r["normalized"] is None or math.isnan(r["normalized"]) else f"{r['normalized']:.3f}"
        ratio = "n/a" if math.isnan(r["latency_vs_dense"]) else f"{r['latency_vs_dense']:.2f}"
        lines.append(f"| {r['eval_env']} | {r['group']} | {r['seed']} | {r['episodes']} | {r['return_mean']:.1f} "
                     f"± {r['return_std']:.1f} | {norm} | {ratio} |")
    return "\n".join(lines) + "\n"
