"""One training run as RL Zoo lays it out: hyperparameters resolved, env and model built, outputs in
``logs/<algo>/<Env>_<n>/``.

The dense baseline (``sparsity 0`` or ``method dense``) runs SB3's own ``MlpPolicy``/``CnnPolicy`` with every other
hyperparameter identical, so dense-vs-sparse comparisons are fair.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sparse_rl import config as cfg
from sparse_rl.envs import check_env_id, is_atari, make_env

ALGOS = ("sac", "td3", "dqn", "ppo")
METHODS = ("dense", "static", "set", "rigl", "srigl", "gmp")
SPARSE_POLICY_KWARGS = ("sparsity", "actor_sparsity", "critic_sparsity", "distribution", "dense_layers", "backend",
                        "constant_fan_in", "start_dense", "init_scale")


@dataclass
class RunSpec:
    """Everything that defines a run (the CLI flags); saved as ``args.yml``."""

    algo: str
    env: str
    sparsity: float | None = None
    method: str | None = None
    seed: int = 0
    n_timesteps: int | None = None
    conf_file: str | None = None
    hyperparams: dict[str, Any] = field(default_factory=dict)
    log_folder: str = "logs"
    tensorboard_log: str | None = None
    eval_freq: int = 10_000
    eval_episodes: int = 5
    save_freq: int = -1
    n_envs: int | None = None
    device: str = "auto"
    backend: str | None = None
    distribution: str | None = None
    progress: bool = False
    verbose: int = 1
    env_kwargs: dict[str, Any] | None = None
    resume: str | None = None
    save_replay_buffer: bool = False
    threads: int = 1


def algo_class(algo: str) -> Any:
    import stable_baselines3 as sb3

    if algo not in ALGOS:
        raise ValueError(f"unknown algo {algo!r}; choose one of {list(ALGOS)}")
    return getattr(sb3, algo.upper())


def resolve_hyperparams(spec: RunSpec) -> tuple[dict[str, Any], dict[str, Any] | None, bool]:
    """The run's hyperparameters, the TopologyCallback kwargs (``None`` for dense) and whether the run is sparse."""
    if spec.method is not None and spec.method not in METHODS:
        raise ValueError(f"unknown method {spec.method!r}; choose one of {list(METHODS)}")
    atari = is_atari(spec.env)
    conf = spec.conf_file or cfg.default_config_file(spec.algo)
    hyperparams = cfg.load_entry(conf, spec.env, atari)
    hyperparams.update(spec.hyperparams)
    if spec.n_timesteps is not None:
        hyperparams["n_timesteps"] = spec.n_timesteps
    if spec.n_envs is not None:
        hyperparams["n_envs"] = spec.n_envs
    policy_kwargs = cfg.policy_kwargs_dict(hyperparams.get("policy_kwargs"))
    topology, other_callbacks = cfg.topology_callback_kwargs(hyperparams.get("callback"))
    sparsity = spec.sparsity if spec.sparsity is not None else policy_kwargs.get("sparsity", 0.0)
    from sparse_rl.nn.layers import check_sparsity

    sparsity = check_sparsity(sparsity)
    method = spec.method or (topology or {}).get("method", "rigl" if sparsity > 0 else "dense")
    sparse = sparsity > 0 and method != "dense"
    if sparse:
        policy_kwargs["sparsity"] = sparsity
        for key, value in (("backend", spec.backend), ("distribution", spec.distribution)):
            if value is not None:
                policy_kwargs[key] = value
        if method == "srigl":
            policy_kwargs["constant_fan_in"] = True
        if method == "gmp":
            policy_kwargs["start_dense"] = True
        topology = {**(topology or {}), "method": method}
        topology.setdefault("seed", spec.seed)
        hyperparams["policy"] = "SparseCnnPolicy" if atari else "SparseMlpPolicy"
    else:
        policy_kwargs = {k: v for k, v in policy_kwargs.items() if k not in SPARSE_POLICY_KWARGS}
        topology = None
        hyperparams["policy"] = "CnnPolicy" if atari else "MlpPolicy"
    hyperparams["policy_kwargs"] = policy_kwargs
    hyperparams["callback"] = other_callbacks
    return hyperparams, topology, sparse


def next_run_dir(log_folder: str, algo: str, env_id: str) -> Path:
    """``<log_folder>/<algo>/<Env>_<n>`` with the next free ``n`` (RL Zoo's numbering)."""
    base = Path(log_folder) / algo
    env_name = env_id.replace("/", "-").replace(":", "-")
    taken = [int(p.name.rsplit("_", 1)[1]) for p in base.glob(f"{env_name}_*") if p.name.rsplit("_", 1)[1].isdigit()]
    return base / f"{env_name}_{max(taken, default=0) + 1}"


def save_run_files(run_dir: Path, env_id: str, hyperparams: dict[str, Any], spec: RunSpec, topology: dict | None) -> None:
    """``config.yml`` and ``args.yml`` as RL Zoo writes them (OrderedDicts), and ``command.txt``."""
    params_dir = run_dir / env_id.replace("/", "-").replace(":", "-")
    params_dir.mkdir(parents=True, exist_ok=True)
    saved = {k: v for k, v in hyperparams.items() if not callable(v)}
    saved["policy_kwargs"] = str(hyperparams.get("policy_kwargs") or {})
    if topology is not None:
        saved["callback"] = [*hyperparams.get("callback", []), {cfg.TOPOLOGY_CALLBACK: topology}]
    with open(params_dir / "config.yml", "w") as f:
        yaml.dump(OrderedDict(sorted(saved.items())), f)
    args = asdict(spec) | {"env_kwargs": spec.env_kwargs, "folder": spec.log_folder}
    with open(params_dir / "args.yml", "w") as f:
        yaml.dump(OrderedDict(sorted(args.items())), f)
    command = [os.path.basename(sys.executable), "-m", "sparse_rl.train", *sys.argv[1:]]
    (run_dir / "command.txt").write_text(" ".join(command) + "\n")


def build_env(spec: RunSpec, hyperparams: dict[str, Any], for_evaluation: bool = False,
              monitor_dir: Path | None = None, monitor_t_start: float | None = None) -> Any:
    """The training (or evaluation) VecEnv, normalised when the config says ``normalize``.

    ``monitor_t_start``: continue the Monitor CSVs in ``monitor_dir`` (append, on the clock of their ``t_start``).
    """
    n_envs = 1 if for_evaluation else int(hyperparams.get("n_envs", 1))
    seed = spec.seed + (10_000 if for_evaluation else 0)
    env = make_env(spec.env, n_envs=n_envs, seed=seed, env_kwargs=spec.env_kwargs or hyperparams.get("env_kwargs"),
                   frame_stack=hyperparams.get("frame_stack"), for_evaluation=for_evaluation,
                   monitor_dir=str(monitor_dir) if monitor_dir is not None else None,
                   monitor_kwargs=None if monitor_t_start is None else {"override_existing": False})
    if monitor_t_start is not None:
        _set_monitor_start(env, monitor_t_start)
    normalize = hyperparams.get("normalize", False)
    if normalize:
        from stable_baselines3.common.vec_env import VecNormalize

        kwargs = normalize if isinstance(normalize, dict) else {}
        if for_evaluation:
            kwargs = {**kwargs, "training": False, "norm_reward": False}
        env = VecNormalize(env, **kwargs)
    return env


def _set_monitor_start(venv: Any, t_start: float) -> None:
    """Put every Monitor wrapper of ``venv`` on the clock ``t_start`` (rows appended to a resumed run's CSVs)."""
    from stable_baselines3.common.monitor import Monitor

    while hasattr(venv, "venv"):
        venv = venv.venv
    for env in getattr(venv, "envs", []):
        while env is not None and not isinstance(env, Monitor):
            env = getattr(env, "env", None)
        if env is not None:
            env.t_start = t_start


def check_action_space(algo: str, env_id: str) -> None:
    """A clear error when the algorithm cannot handle the env's action space (checked before any file is written)."""
    import gymnasium as gym
    from gymnasium import spaces

    probe = gym.make(env_id)
    space = probe.action_space
    probe.close()
    if algo == "dqn" and not isinstance(space, spaces.Discrete):
        raise ValueError(f"DQN needs a discrete action space, but this env's is {space}: use --algo sac, td3 or ppo")
    if algo in ("sac", "td3") and not isinstance(space, spaces.Box):
        raise ValueError(f"{algo.upper()} needs a continuous (Box) action space, but this env's is {space}: use dqn or ppo")


def model_kwargs(hyperparams: dict[str, Any], env: Any) -> dict[str, Any]:
    """The SB3 constructor arguments: RL Zoo's own keys removed, ``lin_`` schedules and ``noise_type`` resolved."""
    kwargs = cfg.resolve_schedules({k: v for k, v in hyperparams.items() if k not in cfg.RL_ZOO_KEYS})
    noise_type = hyperparams.get("noise_type")
    if noise_type is not None:
        import numpy as np
        from stable_baselines3.common.noise import NormalActionNoise, OrnsteinUhlenbeckActionNoise

        noises = {"normal": NormalActionNoise, "ornstein-uhlenbeck": OrnsteinUhlenbeckActionNoise}
        if noise_type not in noises:
            raise ValueError(f"unknown noise_type {noise_type!r}; choose one of {list(noises)}")
        n_actions = env.action_space.shape[0]
        std = float(hyperparams.get("noise_std", 0.1))
        kwargs["action_noise"] = noises[noise_type](mean=np.zeros(n_actions), sigma=std * np.ones(n_actions))
    return kwargs


def validate(spec: RunSpec) -> None:
    """Fail fast with one clear line on bad flags, before anything is built."""
    algo_class(spec.algo)
    check_env_id(spec.env)
    check_action_space(spec.algo, spec.env)
    if spec.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {spec.threads}")
    if spec.n_timesteps is not None and spec.n_timesteps <= 0:
        raise ValueError(f"-n must be a positive number of steps, got {spec.n_timesteps}")
    if spec.backend is not None:
        from sparse_rl.nn import backends

        backends.check_name(spec.backend)
    if spec.distribution is not None:
        from sparse_rl.topology.distributions import DISTRIBUTIONS

        if spec.distribution not in DISTRIBUTIONS:
            raise ValueError(f"unknown distribution {spec.distribution!r}; choose one of {list(DISTRIBUTIONS)}")


def write_run_summary(run_dir: Path, spec: RunSpec, model: Any, method: str, sparsity: float, wall_time_s: float) -> dict:
    """``run.json``: who the run is (algo, env, method, sparsity, seed) and what it cost (nnz, FLOPs, time)."""
    from sparse_rl.analysis.flops import policy_flops
    from sparse_rl.sb3.report import sparsity_report

    total = sparsity_report(model)["total"]
    import numpy as np

    space = model.observation_space
    flops = policy_flops(model.policy, np.zeros(space.shape, dtype=space.dtype))
    summary = {
        "algo": spec.algo, "env": spec.env, "method": method, "sparsity": sparsity, "seed": spec.seed,
        "n_timesteps": int(model.num_timesteps), "nnz": total["nnz"], "numel": total["numel"], "density": total["density"],
        "inference_flops_vs_dense": flops["inference_vs_dense"], "training_flops_vs_dense": flops["training_vs_dense"],
        "wall_time_s": wall_time_s, "steps_per_s": model.num_timesteps / max(wall_time_s, 1e-9),
        "tensorboard_dir": model.logger.get_dir() if model.logger is not None else None, "finished": time.time(),
    }
    tmp = run_dir / "run.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(run_dir / "run.json")
    return summary


def method_and_sparsity(hyperparams: dict[str, Any], topology: dict[str, Any] | None) -> tuple[str, float]:
    """The run's topology method (``dense`` for the baseline) and its sparsity."""
    if topology is None:
        return "dense", 0.0
    return topology["method"], float(hyperparams["policy_kwargs"].get("sparsity", 0.0))


def atomic_save(model: Any, path: Path) -> None:
    """``model.save`` to a temporary file, then rename: a crash never leaves a half-written model."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.zip")
    model.save(tmp)
    os.replace(tmp, path)


def resume_spec(spec: RunSpec) -> RunSpec:
    """The saved run's own spec (``args.yml``), with this invocation's ``-n``, ``--progress`` and ``--resume``."""
    run_dir = Path(spec.resume)
    args_files = list(run_dir.glob("*/args.yml"))
    if not run_dir.is_dir() or not args_files:
        raise ValueError(f"--resume {str(run_dir)!r} is not a run folder written by python -m sparse_rl.train")
    saved = yaml.load(args_files[0].read_text(), Loader=yaml.UnsafeLoader)
    if saved["algo"] != spec.algo:
        raise ValueError(f"--resume {str(run_dir)!r} is a {saved['algo']} run, but --algo {spec.algo} was given: "
                         f"pass --algo {saved['algo']}")
    fields = {k: v for k, v in dict(saved).items() if k in RunSpec.__dataclass_fields__}
    fields.update(resume=str(run_dir), progress=spec.progress, threads=spec.threads)
    if spec.n_timesteps is not None:
        fields["n_timesteps"] = spec.n_timesteps
    return RunSpec(**fields)


def load_checkpoint(spec: RunSpec, run_dir: Path, env: Any) -> tuple[Any, Any]:
    """The model (and env, with its VecNormalize statistics) of the last complete checkpoint of ``run_dir``."""
    from stable_baselines3.common.vec_env import VecNormalize

    from sparse_rl.sb3.checkpoints import latest_checkpoint, restore_rng_state

    for stale in (run_dir / "checkpoints").glob(".tmp_step_*"):  # a write interrupted by a crash: never committed
        import shutil

        shutil.rmtree(stale, ignore_errors=True)
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    if checkpoint is None:
        raise ValueError(f"{run_dir} has no complete checkpoint (train with --save-freq N to write them): "
                         "start the run again without --resume")
    if (checkpoint / "vecnormalize.pkl").is_file():
        env = VecNormalize.load(str(checkpoint / "vecnormalize.pkl"), env.venv if isinstance(env, VecNormalize) else env)
    import torch as th

    try:
        model = algo_class(spec.algo).load(checkpoint / "model.zip", env=env, device=spec.device,
                                           tensorboard_log=spec.tensorboard_log, verbose=spec.verbose)
    except (RuntimeError, KeyError) as error:
        first_line = str(error).splitlines()[0]
        raise ValueError(f"checkpoint {checkpoint} does not fit this policy architecture: {first_line}") from None
    if (checkpoint / "replay_buffer.pkl").is_file():
        model.load_replay_buffer(checkpoint / "replay_buffer.pkl")
    restore_rng_state(model, th.load(checkpoint / "rng.pt", weights_only=False))
    print(f"resuming {run_dir} from step {model.num_timesteps}")
    return model, env


def restore_evaluations(evaluation: Any, run_dir: Path, upto: int) -> None:
    """Carry a resumed run's evaluations up to step ``upto`` into its new ``EvalCallback`` (none lost, none doubled)."""
    path = run_dir / "evaluations.npz"
    if not path.is_file():
        return
    import numpy as np

    data = np.load(path)
    keep = data["timesteps"] <= upto
    evaluation.evaluations_timesteps = data["timesteps"][keep].tolist()
    evaluation.evaluations_results = data["results"][keep].tolist()
    evaluation.evaluations_length = data["ep_lengths"][keep].tolist()
    if keep.any():
        evaluation.best_mean_reward = float(np.max(np.mean(data["results"][keep], axis=1)))
