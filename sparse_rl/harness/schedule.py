"""The topology schedule a run will follow, in environment steps, computed before it trains (printed and saved), and
what the step budget itself will train (:func:`budget_notes`).

It follows :class:`~sparse_rl.sb3.callbacks.TopologyCallback`'s own rule: the callback checks its clock every env step
of the vector env (on-policy: at rollout ends), an update runs at the first check at or after its scheduled step, and
scheduled steps passed by one check merge into one update.
"""

from __future__ import annotations

from typing import Any


def topology_schedule(topology: dict[str, Any], hyperparams: dict[str, Any], algo: Any) -> dict[str, Any]:
    """The TopologyCallback's schedule of a fresh run in env steps: its defaults filled in (``start``: the
    algorithm's ``learning_starts``; fractions of ``n_timesteps``), the first and last update and their count."""
    import inspect

    from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

    from sparse_rl.sb3.callbacks import TopologyCallback
    from sparse_rl.topology.schedules import TopologySchedule, resolve_step

    signature = inspect.signature(TopologyCallback.__init__).parameters
    defaults = [k for k in ("update_every", "drop_fraction", "drop_schedule", "start", "end") if k not in topology]
    full = {k: topology.get(k, signature[k].default) for k in ("update_every", "drop_fraction", "drop_schedule", "start",
                                                                 "end")}
    total = int(hyperparams["n_timesteps"])
    if full["start"] is None:
        algo_default = inspect.signature(algo.__init__).parameters.get("learning_starts")
        full["start"] = hyperparams.get("learning_starts", algo_default.default if algo_default else 0)
        defaults[defaults.index("start")] = "start = learning_starts" if algo_default else "start = 0"
    start, end = resolve_step(full["start"], total, "start"), resolve_step(full["end"], total, "end")
    schedule = TopologySchedule(update_every=full["update_every"], start=start, end=max(end, start),
                                drop_fraction=full["drop_fraction"], drop_schedule=full["drop_schedule"])
    from sparse_rl.topology import UPDATERS

    rewires = UPDATERS[topology.get("method", signature["method"].default)].rewires  # static: masks never change
    # the callback checks the clock every env step of the vector env (n_envs steps), on-policy at rollout ends
    # (n_steps x n_envs): an update runs at the first check at or after its step, and steps passed by one check merge
    n_envs = int(hyperparams.get("n_envs", 1))
    n_steps = _setting(hyperparams, algo, "n_steps", 1)
    tick = n_envs * (int(n_steps) if issubclass(algo, OnPolicyAlgorithm) else 1)
    first = schedule.next_update_step(start - 1) if end >= start and rewires else None
    ticks, scheduled = schedule.updates_at_checks(first, 0, tick, total)  # SB3 stops at the first check >= n_timesteps
    per_step = _gradient_steps_per_env_step(hyperparams, algo, n_envs, tick)
    # without merging, the last update runs at its scheduled step: at ``end`` a decayed drop fraction is 0 (RigL's rule)
    idle_end = bool(ticks) and scheduled == len(ticks) and schedule.next_update_step(end - 1) == end and (
        ticks[-1] >= end and schedule.drop_fraction_at(end) == 0)
    return {"update_every": full["update_every"], "start": start, "end": end, "drop_fraction": full["drop_fraction"],
            "drop_schedule": full["drop_schedule"], "first_update": ticks[0] if ticks else None,
            "last_update": ticks[-1] if ticks else None, "updates": len(ticks), "merged": scheduled - len(ticks),
            "check_every": tick, "defaults": defaults, "last_update_drops_nothing": idle_end,
            "gradient_steps_between": None if per_step is None else round(full["update_every"] * per_step, 1)}


def _gradient_steps_per_env_step(hyperparams: dict[str, Any], algo: Any, n_envs: int, rollout: int) -> float | None:
    """Gradient steps per environment step (``None`` when episodes set the pace: ``train_freq`` in episodes), so a
    schedule in env steps can be read in gradient steps: ``--n-envs 4`` makes SAC's 1000 env steps 250 gradient
    steps."""
    from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

    if issubclass(algo, OnPolicyAlgorithm):  # PPO: epochs x minibatches per rollout; A2C: one step per rollout
        epochs, batch = _setting(hyperparams, algo, "n_epochs"), int(_setting(hyperparams, algo, "batch_size", rollout))
        per_rollout = 1 if epochs is None else int(epochs) * -(-rollout // batch)
        return per_rollout / rollout
    frequency = _setting(hyperparams, algo, "train_freq", 1)
    gradient_steps = int(_setting(hyperparams, algo, "gradient_steps", 1))
    if isinstance(frequency, (list, tuple)):
        if frequency[1] != "step":
            return None
        frequency = frequency[0]
    return 1.0 if gradient_steps == -1 else gradient_steps / (int(frequency) * n_envs)


def _setting(hyperparams: dict[str, Any], algo: Any, key: str, fallback: Any = None) -> Any:
    """A hyperparameter as the algorithm will use it: the given value, else its constructor's default, else
    ``fallback`` (a key the algorithm does not take)."""
    import inspect

    default = inspect.signature(algo.__init__).parameters.get(key)
    return hyperparams.get(key, default.default if default is not None else fallback)


def budget_notes(hyperparams: dict[str, Any], algo: Any) -> list[str]:
    """Where SB3 trains another budget than ``n_timesteps`` says: on-policy algorithms collect whole rollouts (``-n
    1000`` with 16 x 256-step rollouts trains 4096 env steps); off-policy ones take no gradient step before
    ``learning_starts``."""
    from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

    total, notes = int(hyperparams["n_timesteps"]), []
    if issubclass(algo, OnPolicyAlgorithm):
        n_steps, n_envs = int(_setting(hyperparams, algo, "n_steps")), int(hyperparams.get("n_envs", 1))
        rollout = n_steps * n_envs
        if total % rollout:
            notes.append(f"n_timesteps: {algo.__name__} collects whole rollouts of {rollout} env steps (n_steps {n_steps} "
                         f"x n_envs {n_envs}), so {total} trains {-(-total // rollout) * rollout} env steps")
    else:
        starts = _setting(hyperparams, algo, "learning_starts")
        if starts is not None and int(starts) >= total:
            notes.append(f"learning_starts {int(starts)} >= n_timesteps {total}: no gradient step is taken, the agent "
                         "stays as initialised (lower learning_starts or train longer)")
    return notes
