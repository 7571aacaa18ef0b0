"""One training run, fresh or resumed: settings resolved and checked, folder claimed, env and model built, callbacks
wired, outputs written in RL Zoo's layout.

The dense baseline (``sparsity 0`` or ``method dense``) runs SB3's own ``MlpPolicy``/``CnnPolicy`` with every other
hyperparameter identical, so dense-vs-sparse comparisons are fair. Nothing is written before the settings are
checked, and a run that fails while being set up removes the folder it claimed.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from sparse_rl.harness import hyperparams as hp
from sparse_rl.harness.checks import error_line, run_device
from sparse_rl.harness.envs import EVAL_SEED_OFFSET, check_action_space, evaluation_env, training_env
from sparse_rl.harness.resolve import Resolved, RunSpec, algo_class, policy_class, resolve
from sparse_rl.harness.runs import RunFolder, code_version, run_summary, saved_hyperparams
from sparse_rl.harness.schedule import topology_schedule
from sparse_rl.harness.tensorboard_logs import claim_tensorboard_dir, run_name, set_logger

#: flags a resumed run takes from this invocation; every other flag comes from the run's own args.yml
RESUME_FLAGS = ("n_timesteps", "progress", "threads", "verbose", "device", "resume")


def model_kwargs(hyperparams: dict[str, Any], env: Any) -> dict[str, Any]:
    """The SB3 constructor arguments: RL Zoo's own keys removed; ``lin_`` schedules, ``noise_type``, ``train_freq``
    lists and ``replay_buffer_class`` names resolved."""
    kwargs = hp.resolve_schedules({k: v for k, v in hyperparams.items() if k not in hp.RL_ZOO_KEYS})
    for key, value in kwargs.items():  # SB3 writes into policy_kwargs (use_sde...): the resolved settings stay ours
        if key.endswith("_kwargs") and isinstance(value, dict):
            kwargs[key] = dict(value)
    if isinstance(kwargs.get("train_freq"), list):
        kwargs["train_freq"] = tuple(kwargs["train_freq"])
    buffer_class = kwargs.get("replay_buffer_class")
    if isinstance(buffer_class, str):
        import stable_baselines3

        kwargs["replay_buffer_class"] = (hp.import_object(buffer_class, "replay_buffer_class") if "." in buffer_class
                                         else getattr(stable_baselines3, buffer_class, None))
        if kwargs["replay_buffer_class"] is None:
            raise ValueError(f"replay_buffer_class {buffer_class!r} is not an SB3 buffer: give 'package.module.Class'")
    noise_type = hyperparams.get("noise_type")
    if noise_type is not None:
        import numpy as np
        from stable_baselines3.common.noise import NormalActionNoise, OrnsteinUhlenbeckActionNoise

        noises = {"normal": NormalActionNoise, "ornstein-uhlenbeck": OrnsteinUhlenbeckActionNoise}
        n_actions = env.action_space.shape[0]
        std = float(hyperparams.get("noise_std", 0.1))
        kwargs["action_noise"] = noises[noise_type](mean=np.zeros(n_actions), sigma=std * np.ones(n_actions))
    return kwargs


def build_callbacks(spec: RunSpec, resolved: Resolved, folder: RunFolder, n_envs: int, start_step: int,
                    clock: Any, name: str | None = None) -> list[Any]:
    """HParams, the config's own callbacks, the TopologyCallback, dormant neurons, evaluation on the grid of
    ``--eval-freq`` env steps (RL Zoo files) and checkpoints; ``name``: the run's name (default :func:`run_name`)."""
    from sparse_rl.sb3 import TopologyCallback
    from sparse_rl.sb3.checkpoints import AtomicCheckpointCallback
    from sparse_rl.sb3.comparison import ComparisonCallback
    from sparse_rl.sb3.dormant import DormantNeuronCallback
    from sparse_rl.sb3.eval_callback import GridEvalCallback
    from sparse_rl.sb3.tensorboard import HParamsCallback

    hyper = resolved.hyperparams
    callbacks = [HParamsCallback(dict(run=name or run_name(resolved), algo=spec.algo, env=spec.env, method=resolved.method,
                                      sparsity=resolved.sparsity, distribution=resolved.distribution, seed=spec.seed)),
                 *hp.build_callbacks(hyper["callback"])]
    topology = TopologyCallback(**resolved.topology) if resolved.topology is not None else None
    if topology is not None:
        topology.announce_shared_checks = False  # the printed topology schedule says how many updates run
        callbacks.append(topology)
    if spec.eval_freq > 0:  # the comparable scalars and dormant fractions are recorded just before each evaluation
        callbacks.append(ComparisonCallback(every=spec.eval_freq, topology=topology, clock=clock))
        callbacks.append(DormantNeuronCallback(every=spec.eval_freq, log_dir=folder.path, seed=spec.seed))
        evaluation_class = GridEvalCallback
        if spec.algo == "ppo_mask":  # MaskablePPO evaluates with its action masks, as it trains
            from sparse_rl.sb3.contrib.evaluation import MaskableGridEvalCallback as evaluation_class
        evaluation = evaluation_class(
            evaluation_env(spec.env, hyper, spec.seed + EVAL_SEED_OFFSET, env_kwargs=spec.env_kwargs), grid=spec.eval_freq,
            clock=clock, seed=spec.seed + EVAL_SEED_OFFSET, n_eval_episodes=spec.eval_episodes, log_path=str(folder.path),
            best_model_save_path=str(folder.path), deterministic=True, verbose=spec.verbose)
        if start_step > 0:
            evaluation.restore(folder.path / "evaluations.npz", upto=start_step)
        callbacks.append(evaluation)
    if spec.save_freq > 0:
        callbacks.append(AtomicCheckpointCallback(spec.save_freq, folder.checkpoints, spec.save_replay_buffer, clock=clock))
    return callbacks


def _resolve_checked(spec: RunSpec) -> Resolved:
    _check_flags(spec)
    try:
        resolved = resolve(spec)
    except ValueError:  # an env the algorithm cannot act in (MaskablePPO on Pendulum) is the clearer error
        check_action_space(spec.algo, spec.env, spec.env_kwargs)
        raise
    check_action_space(spec.algo, spec.env, spec.env_kwargs or resolved.hyperparams.get("env_kwargs"))
    return resolved


def _build(spec: RunSpec, resolved: Resolved, monitor_dir: Path | None) -> tuple[Any, Any]:
    """The training env and the model (SB3's own errors on a setting: one ``ValueError`` line)."""
    env = None
    try:
        env = training_env(spec.env, resolved.hyperparams, spec.seed, monitor_dir=monitor_dir, env_kwargs=spec.env_kwargs)
        hyper = resolved.hyperparams
        policy = policy_class(spec.algo, hyper["policy"]) if resolved.sparse else hyper["policy"]
        model = algo_class(spec.algo)(policy, env, seed=spec.seed, device=spec.device, verbose=spec.verbose,
                                      **model_kwargs(hyper, env))
        # SB3's agent samples random actions from env 0's own action space object; its own copy (same generator state,
        # so the same draws) leaves env 0's generators to env 0, whose episodes a checkpoint records
        model.action_space = copy.deepcopy(model.action_space)
        return env, model
    except BaseException as error:
        if env is not None:
            env.close()
        if not isinstance(error, (TypeError, AssertionError, KeyError, ValueError)):
            raise
        first = error_line(error, type(error).__name__)  # SB3 rejected a setting
        raise ValueError(f"SB3 cannot build {spec.algo.upper()} with these settings: {type(error).__name__}: "
                         f"{first} (check policy_kwargs, net_arch and the *_kwargs values)") from None


def check(spec: RunSpec) -> Resolved:
    """What :func:`train` would train, checked as far as building the env and the model, with nothing written
    (``python -m sparse_rl.train --dry-run``; sweeps check their grid points with it)."""
    if spec.resume:
        raise ValueError("--dry-run checks the settings of a new run: --resume continues a run with its own settings")
    resolved = _resolve_checked(spec)
    env, _ = _build(spec, resolved, None)
    env.close()
    return resolved


def train(spec: RunSpec, argv: list[str] | None = None) -> Path:
    """Run one training job (or continue one with ``spec.resume``); returns its run folder. ``argv``: the command-line
    arguments that asked for it (``command.txt``; default the process's own)."""
    if spec.resume:
        return _resume(spec)
    resolved = _resolve_checked(spec)
    _set_threads(spec.threads)
    folder = RunFolder.claim(spec.log_folder, spec.algo, spec.env)
    tb_dir = None
    try:
        # absolute: a --resume from another working directory logs into the same TensorBoard run
        tb_dir = str(claim_tensorboard_dir(spec.tensorboard_log, resolved).resolve()) if spec.tensorboard_log else None
        folder.write_run_files(spec, resolved.hyperparams, resolved.topology, {**resolved.saved(), "tensorboard_dir": tb_dir},
                               argv)
        env, model = _build(spec, resolved, folder.path)
    except BaseException:
        folder.remove()
        if tb_dir is not None:
            Path(tb_dir).rmdir()
        raise
    for line in resolved.describe():
        print(line)
    set_logger(model, tb_dir, spec.verbose)
    try:
        return _learn(spec, resolved, folder, model, env, tb_dir, train_seconds=0.0)
    finally:
        folder.unlock()


def _check_flags(spec: RunSpec) -> None:
    if spec.n_timesteps is not None and spec.n_timesteps <= 0:
        raise ValueError(f"-n must be a positive number of steps, got {spec.n_timesteps}")
    for flag, value, low in (("--eval-episodes", spec.eval_episodes, 1), ("--threads", spec.threads, 1)):
        if value < low:
            raise ValueError(f"{flag} must be at least {low}, got {value}")
    if spec.seed < 0:
        raise ValueError(f"--seed must be 0 or more (Gymnasium seeds), got {spec.seed}")
    if spec.save_replay_buffer and spec.save_freq <= 0:
        raise ValueError(f"--save-replay-buffer stores the replay buffer in checkpoints, but --save-freq {spec.save_freq} "
                         "writes none: pass --save-freq N as well")
    run_device(spec.device)
    if spec.backend is not None:
        from sparse_rl.nn import backends

        backends.check_name(spec.backend)


def _set_threads(threads: int) -> None:
    import torch as th

    th.set_num_threads(threads)


def _learn(spec: RunSpec, resolved: Resolved, folder: RunFolder, model: Any, env: Any, tb_dir: str | None,
           train_seconds: float, resume: dict[str, Any] | None = None) -> Path:
    """Train to ``n_timesteps``, save the model and the summary; ``resume``: what :func:`load_checkpoint` says SB3's
    ``learn`` would reset (the action noise, the gSDE matrices), put back by the first callback."""
    from stable_baselines3.common.callbacks import CallbackList

    from sparse_rl.sb3.checkpoints import atomic_save
    from sparse_rl.sb3.eval_callback import TrainingClock

    clock = TrainingClock(offset=train_seconds)
    code = code_version()  # the code that trains from here (a checkout edited meanwhile is not what trained)
    start = model.num_timesteps
    name = Path(tb_dir).name if tb_dir else run_name(resolved)  # the TensorBoard run's name, "_2" when taken
    callbacks = build_callbacks(spec, resolved, folder, env.num_envs, start, clock, name)
    if resume is not None:  # first: the other callbacks' on_rollout_start see the state of the uninterrupted run
        from sparse_rl.sb3.env_state import ResumeState

        callbacks.insert(0, ResumeState(resume["action_noise"], resume["rng"]))
    total = int(resolved.hyperparams["n_timesteps"])
    if start < total:
        try:
            model.learn(total - start, callback=CallbackList(callbacks), progress_bar=spec.progress,
                        reset_num_timesteps=start == 0)
        except ValueError as error:  # a failure inside training is a bug or a diverged run, not bad input
            raise RuntimeError(f"training failed at step {model.num_timesteps} (run folder {folder.path}; "
                               f"--resume continues from the last checkpoint): {error}") from error
    atomic_save(model, folder.model_path)
    if resolved.normalize is not None:
        tmp = folder.vecnormalize_path.with_name(f".vecnormalize.{os.getpid()}.pkl")
        env.save(str(tmp))
        os.replace(tmp, folder.vecnormalize_path)
    summary = run_summary(spec, model, resolved.method, resolved.sparsity, clock.seconds(), tb_dir, code)
    folder.write_summary({"name": name, **summary, "resumes": folder.resumes()})
    print(f"saved to {folder.path}")
    return folder.path


# ----------------------------------------------------------------------------------------------------- resuming
def resume_spec(spec: RunSpec, folder: RunFolder) -> RunSpec:
    """The saved run's own spec (``args.yml``) with this invocation's ``-n``, ``--progress``, ``--threads``, ``-v`` and
    ``--device``; any other flag given with ``--resume`` is an error (it cannot change a running experiment)."""
    saved = folder.read_args()
    for flag, key in (("--algo", "algo"), ("--env", "env")):  # "" when the flag was not given
        if getattr(spec, key) and getattr(spec, key) != saved[key]:
            raise ValueError(f"--resume {str(folder.path)!r} is a {saved['algo']} run on {saved['env']}, but {flag} "
                             f"{getattr(spec, key)} was given: drop {flag} (the run's own is used)")
    defaults = RunSpec(algo=spec.algo, env=spec.env)
    changed = [f.name for f in fields(RunSpec) if f.name not in (*RESUME_FLAGS, "algo", "env")
               and getattr(spec, f.name) != getattr(defaults, f.name) and getattr(spec, f.name) != saved.get(f.name)]
    if changed:
        raise ValueError(f"--resume continues {str(folder.path)!r} with its own settings; these flags cannot change: "
                         f"{', '.join(changed)} (only -n, --progress, --threads, -v and --device can)")
    kept = {k: v for k, v in saved.items() if k in RunSpec.__dataclass_fields__ and k not in RESUME_FLAGS}
    taken = {k: getattr(spec, k) for k in RESUME_FLAGS if k != "n_timesteps"}
    n = spec.n_timesteps if spec.n_timesteps is not None else saved.get("n_timesteps")
    return replace(RunSpec(**{**kept, "algo": saved["algo"], "env": saved["env"]}), n_timesteps=n, **taken)


def resolved_from_folder(spec: RunSpec, folder: RunFolder) -> Resolved:
    """The settings a run was started with (its saved files; the config file may have changed since), with this
    invocation's ``-n``."""
    config = folder.read_config()
    hyper = saved_hyperparams(config)
    topology, others = hp.topology_callback_kwargs(hyper.get("callback"))
    hyper["callback"] = others
    notes = [f"resumed: the settings saved in {folder.params_dir}"]
    if spec.n_timesteps is not None and int(hyper["n_timesteps"]) != spec.n_timesteps:
        notes.append(f"n_timesteps: -n replaces {hyper['n_timesteps']} with {spec.n_timesteps}")
        hyper["n_timesteps"] = spec.n_timesteps
    saved = folder.read_resolved()
    method = topology["method"] if topology is not None else "dense"
    sparsity = float(saved.get("sparsity", hyper["policy_kwargs"].get("sparsity", 0.0))) if topology is not None else 0.0
    distribution = str(saved.get("distribution", hyper["policy_kwargs"].get("distribution", "erk")))
    schedule = topology_schedule(topology, hyper, algo_class(spec.algo)) if topology is not None else None
    return Resolved(spec, hyper, topology, method, sparsity, distribution if topology is not None else "none", notes, {},
                    schedule=schedule)


def _resume(spec: RunSpec) -> Path:
    folder = RunFolder.open(spec.resume)
    folder.lock()
    try:
        return _resume_locked(spec, folder)
    finally:
        folder.unlock()


def _resume_locked(spec: RunSpec, folder: RunFolder) -> Path:
    from sparse_rl.sb3.checkpoints import checkpoint_record, checkpoint_time, rewind_monitor_logs

    spec = resume_spec(spec, folder)
    _check_flags(spec)
    _set_threads(spec.threads)
    resolved = resolved_from_folder(spec, folder)
    total = int(resolved.hyperparams["n_timesteps"])
    summary = folder.read_summary()
    if summary is not None and summary["n_timesteps"] >= total and folder.model_path.is_file():
        print(f"nothing to do: {folder.path} already reached {summary['n_timesteps']} of {total} env steps")
        return folder.path
    _latest_checkpoint(folder)  # no checkpoint: an error before any file of the run changes
    record = checkpoint_record(folder.checkpoints)
    if total < int(record.get("step", 0)):
        raise ValueError(f"-n {total}: the last checkpoint of {folder.path} is at step {record.get('step')}; a resume "
                         "continues from there, so give -n at or above it")
    for line in resolved.describe():
        print(line)
    if int(saved_hyperparams(folder.read_config())["n_timesteps"]) != total:  # the run's target is now this -n
        folder.update_target(total, resolved.schedule)
        if resolved.schedule is not None:
            print(f"note: the topology schedule now resolves against n_timesteps {total} (above); the updates before "
                  f"step {record.get('step')} followed the run's earlier target")
    elif int(folder.read_args().get("n_timesteps") or 0) != total:
        folder.update_args(n_timesteps=total)
    if summary is not None and int(record.get("step", 0)) < int(summary["n_timesteps"]):
        print(f"note: {folder.path} finished at step {summary['n_timesteps']}, but its last checkpoint is at step "
              f"{record.get('step')}: training continues from there, so the steps in between are trained again, under "
              f"the schedules of n_timesteps {total} (lin_ rates, the topology end): not the run that finished")
    monitor_t_start = rewind_monitor_logs(folder.path, checkpoint_time(folder.checkpoints))
    env = training_env(spec.env, resolved.hyperparams, spec.seed, monitor_dir=folder.path, monitor_t_start=monitor_t_start,
                       env_kwargs=spec.env_kwargs)
    model, env, resume = load_checkpoint(spec, folder, env)
    tb_dir = folder.read_resolved().get("tensorboard_dir")
    set_logger(model, tb_dir, spec.verbose, purge_step=int(model.num_timesteps) + 1)
    return _learn(spec, resolved, folder, model, env, tb_dir, train_seconds=float(record.get("train_seconds", 0.0)),
                  resume=resume)


def _latest_checkpoint(folder: RunFolder) -> Path:
    from sparse_rl.sb3.checkpoints import latest_checkpoint

    checkpoint = latest_checkpoint(folder.checkpoints)
    if checkpoint is None:
        raise ValueError(f"{folder.path} has no complete checkpoint (train with --save-freq N to write them): "
                         "start the run again without --resume")
    return checkpoint


def load_checkpoint(spec: RunSpec, folder: RunFolder, env: Any) -> tuple[Any, Any, dict[str, Any]]:
    """The model (and env, with its VecNormalize statistics and episodes under way) of the last complete checkpoint of
    a run folder, and what SB3's ``learn`` would reset that the resume must put back (``action_noise``: ``None`` when
    the episodes restart; ``rng``: the checkpoint's random state, with the gSDE matrices)."""
    import shutil

    import torch as th
    from stable_baselines3.common.vec_env import VecNormalize

    from sparse_rl.sb3.checkpoints import ENV_STATE, restore_rng_state
    from sparse_rl.sb3.env_state import restore_env_state

    for stale in folder.checkpoints.glob(".tmp_step_*"):  # a write interrupted by a crash: never committed
        shutil.rmtree(stale, ignore_errors=True)
    checkpoint = _latest_checkpoint(folder)
    if (checkpoint / "vecnormalize.pkl").is_file():
        env = VecNormalize.load(str(checkpoint / "vecnormalize.pkl"), env.venv if isinstance(env, VecNormalize) else env)
    env_state = th.load(checkpoint / ENV_STATE, weights_only=False) if (checkpoint / ENV_STATE).is_file() else \
        {"exact": False, "reason": "the checkpoint was written by a version that did not store the environments"}
    try:  # force_reset=False keeps the checkpoint's last observations, which the replayed episodes continue
        model = algo_class(spec.algo).load(checkpoint / "model.zip", env=env, device=spec.device, verbose=spec.verbose,
                                           force_reset=not env_state["exact"])
    except (RuntimeError, KeyError) as error:
        first_line = str(error).splitlines()[0]
        raise ValueError(f"checkpoint {checkpoint} does not fit this policy architecture: {first_line}") from None
    # replayed before the RNG states are restored: an environment drawing from the global generators draws again
    reason = restore_env_state(model.get_env(), env_state)
    if (checkpoint / "replay_buffer.pkl").is_file():  # HER: the episode under way stays open when it continues
        model.load_replay_buffer(checkpoint / "replay_buffer.pkl", truncate_last_traj=reason is not None)
    elif getattr(model, "replay_buffer", None) is not None:
        print(f"note: {checkpoint.name} holds no replay buffer (train with --save-replay-buffer to keep it): training "
              "continues from an empty buffer, so the resumed run differs from an uninterrupted one")
    if reason is None:
        print(f"environments: the episodes under way at step {model.num_timesteps} replayed and continued")
    else:
        model._last_obs = None  # SB3 resets the environments when training starts
        print(f"note: the environments start new episodes ({reason}), so the resumed run differs from an "
              "uninterrupted one")
    rng = th.load(checkpoint / "rng.pt", weights_only=False)
    restore_rng_state(model, rng)
    folder.record_resume({"step": int(model.num_timesteps), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                          "environments": "replayed" if reason is None else f"new episodes: {reason}",
                          "code": code_version()})
    print(f"resuming {folder.path} from step {model.num_timesteps}")
    return model, env, {"action_noise": getattr(model, "action_noise", None) if reason is None else None, "rng": rng}
