"""``python -m sparse_rl.train``: train a sparse (or dense baseline) SB3 agent, RL Zoo style.

Example::

    python -m sparse_rl.train --algo sac --env HalfCheetah-v4 --sparsity 0.9 --method rigl --seed 1 -tb runs/

Outputs go to ``logs/<algo>/<Env>_<n>/``: the final model ``<Env>.zip``, ``best_model.zip``, ``evaluations.npz``,
``<Env>/config.yml`` and ``<Env>/args.yml`` (RL Zoo's layout, so its ``enjoy`` and plotting scripts work),
``command.txt`` and checkpoints.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from sparse_rl import config as cfg
from sparse_rl import experiment as exp


def parse_args(argv: list[str] | None = None) -> exp.RunSpec:
    parser = argparse.ArgumentParser(prog="python -m sparse_rl.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--algo", default="sac", help=f"one of {', '.join(exp.ALGOS)}")
    parser.add_argument("--env", default="Pendulum-v1", help="gymnasium env id (Atari ids get the Atari wrappers)")
    parser.add_argument("--sparsity", default=None, help="fraction of zero weights in [0, 1); 0 trains the dense baseline")
    parser.add_argument("--method", default=None,
                        help=f"topology method: {', '.join(exp.METHODS)} (default: the config's, else rigl)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-n", "--n-timesteps", type=int, default=None, help="environment steps (default: config)")
    parser.add_argument("-conf", "--conf-file", default=None, help="RL-Zoo-style YAML (default: configs/<algo>.yml)")
    parser.add_argument("-params", "--hyperparams", nargs="+", default=[], metavar="KEY:VALUE",
                        help="override hyperparameters, e.g. -params learning_rate:0.001 buffer_size:10000")
    parser.add_argument("-f", "--log-folder", default="logs")
    parser.add_argument("-tb", "--tensorboard-log", default=None, help="TensorBoard log directory")
    parser.add_argument("--eval-freq", type=int, default=10_000, help="evaluate every N env steps (-1: never)")
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--save-freq", type=int, default=-1, help="checkpoint every N env steps (-1: never)")
    parser.add_argument("--save-replay-buffer", action="store_true", help="include the replay buffer in checkpoints")
    parser.add_argument("--resume", default=None, metavar="RUN_DIR",
                        help="continue RUN_DIR from its last complete checkpoint up to -n (or its original) steps")
    parser.add_argument("--n-envs", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: one per process; run seeds as parallel processes)")
    parser.add_argument("--backend", default=None, help="sparse kernel backend (auto, reference, cpu, ...)")
    parser.add_argument("--distribution", default=None, help="per-layer sparsity: erk, er or uniform")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    parser.add_argument("-v", "--verbose", type=int, default=1)
    args = parser.parse_args(argv)
    return exp.RunSpec(
        algo=args.algo, env=args.env, sparsity=_parse_sparsity(args.sparsity), method=args.method, seed=args.seed,
        n_timesteps=args.n_timesteps, conf_file=args.conf_file, hyperparams=_parse_overrides(args.hyperparams),
        log_folder=args.log_folder, tensorboard_log=args.tensorboard_log, eval_freq=args.eval_freq,
        eval_episodes=args.eval_episodes, save_freq=args.save_freq, n_envs=args.n_envs, device=args.device,
        backend=args.backend, distribution=args.distribution, progress=args.progress, verbose=args.verbose,
        resume=args.resume, save_replay_buffer=args.save_replay_buffer, threads=args.threads,
    )


def _parse_sparsity(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"--sparsity must be a number in [0, 1), got {text!r}") from None


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    result = {}
    for item in items:
        key, sep, value = item.partition(":")
        if not sep or not key:
            raise ValueError(f"-params expects KEY:VALUE pairs, got {item!r}")
        result[key] = cfg.parse_value(value)
    return result


def sparse_policy_class(algo: str, alias: str) -> Any:
    """The sparse policy registered under ``alias`` (``SparseMlpPolicy``/``SparseCnnPolicy``) for ``algo``."""
    import sparse_rl.sb3.policies  # noqa: F401  (registers the aliases)

    policy = exp.algo_class(algo).policy_aliases.get(alias)
    if policy is None:
        raise ValueError(f"{algo.upper()} has no sparse CNN policy: use dqn or ppo for image observations")
    return policy


def build_callbacks(spec: exp.RunSpec, hyperparams: dict[str, Any], topology: dict[str, Any] | None, run_dir: Path,
                    n_envs: int, start_step: int = 0) -> list[Any]:
    """HParams, the config's own callbacks, the TopologyCallback, evaluation (RL Zoo files) and checkpoints."""
    from stable_baselines3.common.callbacks import EvalCallback

    from sparse_rl.sb3 import TopologyCallback
    from sparse_rl.sb3.checkpoints import AtomicCheckpointCallback
    from sparse_rl.sb3.tensorboard import HParamsCallback

    method, sparsity = exp.method_and_sparsity(hyperparams, topology)
    distribution = hyperparams["policy_kwargs"].get("distribution", "erk") if topology is not None else "none"
    callbacks = [HParamsCallback(dict(algo=spec.algo, env=spec.env, method=method, sparsity=sparsity,
                                      distribution=distribution, seed=spec.seed)),
                 *cfg.build_callbacks(hyperparams["callback"])]
    if topology is not None:
        callbacks.append(TopologyCallback(**topology))
    if spec.eval_freq > 0:
        from sparse_rl.sb3.dormant import DormantNeuronCallback

        callbacks.append(DormantNeuronCallback(every=spec.eval_freq, log_dir=run_dir, seed=spec.seed))
        evaluation = EvalCallback(
            exp.build_env(spec, hyperparams, for_evaluation=True), n_eval_episodes=spec.eval_episodes,
            eval_freq=max(spec.eval_freq // n_envs, 1), log_path=str(run_dir), best_model_save_path=str(run_dir),
            deterministic=True, verbose=spec.verbose,
        )
        if start_step > 0:
            exp.restore_evaluations(evaluation, run_dir, upto=start_step)
        callbacks.append(evaluation)
    if spec.save_freq > 0:
        callbacks.append(AtomicCheckpointCallback(spec.save_freq, run_dir / "checkpoints", spec.save_replay_buffer))
    return callbacks


def train(spec: exp.RunSpec) -> Path:
    """Run one training job (or continue one with ``spec.resume``); returns its run folder."""
    import torch as th
    from stable_baselines3.common.callbacks import CallbackList

    if spec.resume:
        spec = exp.resume_spec(spec)
    exp.validate(spec)
    th.set_num_threads(spec.threads)
    hyperparams, topology, sparse = exp.resolve_hyperparams(spec)
    run_dir = Path(spec.resume) if spec.resume else exp.next_run_dir(spec.log_folder, spec.algo, spec.env)
    monitor_t_start = None
    if spec.resume:  # Monitor CSVs (RL Zoo's plots) continue from the checkpoint: later episodes are replayed
        from sparse_rl.sb3.checkpoints import checkpoint_time, rewind_monitor_logs

        monitor_t_start = rewind_monitor_logs(run_dir, checkpoint_time(run_dir / "checkpoints"))
    env = exp.build_env(spec, hyperparams, monitor_dir=run_dir, monitor_t_start=monitor_t_start)
    if spec.resume:
        model, env = exp.load_checkpoint(spec, run_dir, env)
    else:
        exp.save_run_files(run_dir, spec.env, hyperparams, spec, topology)
        policy = hyperparams["policy"]
        if sparse:
            policy = sparse_policy_class(spec.algo, policy)
        model = exp.algo_class(spec.algo)(
            policy, env, seed=spec.seed, device=spec.device, verbose=spec.verbose,
            tensorboard_log=spec.tensorboard_log, **exp.model_kwargs(hyperparams, env),
        )
    callbacks = build_callbacks(spec, hyperparams, topology, run_dir, env.num_envs, model.num_timesteps)
    total = int(hyperparams["n_timesteps"])
    started = time.perf_counter()
    if model.num_timesteps < total:
        model.learn(total - model.num_timesteps, callback=CallbackList(callbacks), progress_bar=spec.progress,
                    tb_log_name=run_dir.name, reset_num_timesteps=not spec.resume)
    wall_time = time.perf_counter() - started
    env_name = spec.env.replace("/", "-").replace(":", "-")
    exp.atomic_save(model, run_dir / f"{env_name}.zip")
    if hyperparams.get("normalize"):
        env.save(str(run_dir / env_name / "vecnormalize.pkl"))
    method, sparsity = exp.method_and_sparsity(hyperparams, topology)
    exp.write_run_summary(run_dir, spec, model, method, sparsity, wall_time)
    print(f"saved to {run_dir}")
    return run_dir


def main(argv: list[str] | None = None) -> int:
    try:
        train(parse_args(argv))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
