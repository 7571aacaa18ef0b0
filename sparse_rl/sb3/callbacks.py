"""``TopologyCallback``: dynamic sparse training of a ``Sparse*Policy`` on SB3's environment-step clock.

Methods: ``static``, ``set`` (Mocanu et al. 2018, arXiv 1707.04780), ``rigl`` (Evci et al. 2020, "Rigging the
Lottery", arXiv 1911.11134), ``srigl`` (Lasby et al. 2024, arXiv 2305.02299) and ``gmp`` (gradual magnitude pruning,
Zhu and Gupta 2017, arXiv 1710.01878), in the deep-RL setting of Graesser et al. 2022, "The State of Sparse Training
in Deep Reinforcement Learning" (arXiv 2206.10369). The DST logic lives in :mod:`sparse_rl.topology`; this module
only wires it to SB3. Units: ``update_every``, ``start`` and ``end`` count environment steps (``model.num_timesteps``),
not gradient steps.

When updates run:

- The clock is ``model.num_timesteps`` (environment steps, all envs counted). An update fires at the first check
  where ``num_timesteps`` has reached the next scheduled step; the following one is the first scheduled step after
  the current ``num_timesteps``. With ``n_envs > 1`` the clock jumps by ``n_envs``, so a scheduled step is never
  repeated nor skipped (scheduled steps closer together than one check collapse into one update).
- Off-policy (SAC, TD3, DQN): in ``_on_step``, called in ``collect_rollouts`` right after ``env.step``. ``train()``
  runs only after ``collect_rollouts`` returns, so the update falls between two optimizer steps, never inside one.
- On-policy (PPO, A2C): in ``_on_rollout_end``, once the rollout buffer is full and its advantages computed, before
  ``train()``; never mid-rollout (the buffer's stored values and log-probs belong to one network).

After each update: the optimizer state of changed entries is remapped (kept entries keep their moments, dropped and
grown ones restart from 0) in every optimizer that owns the parameter, target networks get the online masks (pruned
target weights are not stored, i.e. 0), and ``sparsity/density``, ``sparsity/updates``, ``sparsity/drop_fraction``
and ``sparsity/changed_fraction`` are logged.

Saved state and continued training. The updater's state (updates done, last update step, next scheduled step, random
generator, the resolved schedule) is written to ``policy.topology_state``, which the policy stores in its state dict as
tensors (:mod:`sparse_rl.sb3.policy_state`), so ``model.save`` / ``Algo.load`` and checkpoints carry it. The saved state
records what happened; the ``TopologyCallback`` passed to each ``learn`` call defines the schedule from the current
clock on:

- ``learn(n, callback=TopologyCallback(...), reset_num_timesteps=False)`` (in memory or after ``Algo.load``) runs the
  updates of the new callback's schedule that fall after the current ``num_timesteps`` and after the last update; an
  absolute ``end`` beyond the clock means more updates. Fractions (``start`` / ``end`` given as floats <= 1) resolve
  against this ``learn`` call's end, ``model._total_timesteps`` (steps already done plus the new ones), as SB3's own
  learning-rate schedules do. The updates done, the generator and the method carry over (another method is an
  error). When the resolved schedule differs from the saved one, or no update is left, one line says so.
- Crash-resume (``python -m sparse_rl.train --resume``: the same arguments and the same total) gives the same schedule:
  no repeated and no skipped update; an update that was due when the checkpoint was written still runs.
- ``learn(..., reset_num_timesteps=True)`` restarts the clock: a new schedule from step 0 (the same method keeps its
  generator).
"""

from __future__ import annotations

import warnings
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

from sparse_rl.sb3.builders import find_optimizers, sparse_layers, sync_targets
from sparse_rl.sb3.report import sparsity_report
from sparse_rl.sb3.tensorboard import SparsityLog
from sparse_rl.topology import SPARSE_METHODS, DropSchedule, Method
from sparse_rl.topology.schedules import DROP_SCHEDULES, TopologySchedule, resolve_step
from sparse_rl.topology.updaters import UPDATERS, BaseUpdater, check_seed, create_updater

METHODS = SPARSE_METHODS  # the topology methods a sparse policy trains with (the updater registry, but "dense")


def _describe(schedule: dict[str, Any]) -> str:
    return (f"every {schedule['update_every']} steps from {schedule['start']} to {schedule['end']}, drop fraction "
            f"{schedule['drop_fraction']} {schedule['drop_schedule']}")


class TopologyCallback(BaseCallback):
    """Drop and regrow (or prune) the connections of a ``Sparse*Policy`` during ``learn``.

    :param method: ``"rigl"``, ``"set"``, ``"static"``, ``"srigl"`` (needs ``policy_kwargs=dict(constant_fan_in=True)``)
        or ``"gmp"`` (needs ``policy_kwargs=dict(start_dense=True)``; prunes to the policy's ``sparsity``)
    :param update_every: environment steps (``model.num_timesteps``) between topology updates
    :param drop_fraction: fraction of each layer's connections replaced at ``start``, decayed from there by
        ``drop_schedule`` (so under cosine or linear the first update already replaces a little less)
    :param drop_schedule: decay of the drop fraction: ``"cosine"``, ``"constant"`` or ``"linear"``
    :param start: first step of the schedule (default: ``learning_starts``, 0 for on-policy algorithms)
    :param end: last step at which an update may fire: an absolute step, or a fraction (float <= 1) of the total
        steps of this ``learn`` call (``model._total_timesteps``: with ``reset_num_timesteps=False`` the steps already
        done plus the new ones)
    :param seed: seed of the random grow criterion (SET) and tie-breaking
    :param ablation_threshold: SRigL's neuron ablation threshold (0 disables it)
    :param verbose: 1 prints a line per update

    ``announce_shared_checks`` (default ``True``): print one line at the start of ``learn`` when scheduled updates fall
    closer together than the clock is checked (fewer run); the CLI sets it ``False``, its schedule line says so already.
    """

    announce_shared_checks = True

    def __init__(
        self,
        method: Method = "rigl",
        update_every: int = 1000,
        drop_fraction: float = 0.3,
        drop_schedule: DropSchedule = "cosine",
        start: int | float | None = None,
        end: int | float = 0.8,
        seed: int | None = None,
        ablation_threshold: float = 0.0,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        if method not in METHODS or method not in UPDATERS:
            raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
        if drop_schedule not in DROP_SCHEDULES:
            raise ValueError(f"unknown drop_schedule {drop_schedule!r}; choose one of {list(DROP_SCHEDULES)}")
        # Validate the numbers now (fractions resolve once the total is known).
        TopologySchedule(update_every=update_every, start=0 if start is None else start, end=end,
                         drop_fraction=drop_fraction, drop_schedule=drop_schedule)
        if not 0.0 <= ablation_threshold <= 1.0:
            raise ValueError(f"ablation_threshold must lie in [0, 1], got {ablation_threshold!r}")
        if ablation_threshold and method != "srigl":
            raise ValueError(f"ablation_threshold={ablation_threshold} is SRigL's neuron ablation: method='srigl' uses it, "
                             f"method={method!r} has none")
        seed = check_seed(seed)
        self.method = method
        self.update_every = update_every
        self.drop_fraction = drop_fraction
        self.drop_schedule = drop_schedule
        self.start = start
        self.end = end
        self.seed = seed
        self.ablation_threshold = ablation_threshold
        self.updater: BaseUpdater | None = None
        self.next_update_step: int | None = None
        self.total_steps: int | None = None
        self.last_stats: Any = None

    # ------------------------------------------------------------------------------------------------- set-up
    def _check_policy(self, layers: dict[str, Any]) -> None:
        config = getattr(self.model.policy, "sparse_config", None)
        if config is None:
            raise ValueError(
                f"TopologyCallback needs a sparse_rl policy (SparseSACPolicy, SparseTD3Policy, SparseDQNPolicy, "
                f"SparseActorCriticPolicy...), got {type(self.model.policy).__name__}"
            )
        if not layers:
            raise ValueError("the policy has no sparse layer (sparsity=0 is the dense baseline): pass "
                             "policy_kwargs=dict(sparsity=0.9) (any value in (0, 1)), or leave sparsity out (default 0.9)")
        if self.method == "gmp" and not config.start_dense:
            raise ValueError("method='gmp' prunes from dense: build the policy with policy_kwargs=dict(start_dense=True, ...)")
        if self.method != "gmp" and config.start_dense:
            raise ValueError(f"method={self.method!r} keeps nnz constant but the policy starts dense (start_dense=True): "
                             "use method='gmp' or drop start_dense")
        if self.method == "srigl" and not config.constant_fan_in:
            raise ValueError("method='srigl' needs constant fan-in masks: pass policy_kwargs=dict(constant_fan_in=True, ...)")

    def _init_callback(self) -> None:
        policy = self.model.policy
        self.layers = sparse_layers(policy)
        self._check_policy(self.layers)
        clock = self.model.num_timesteps
        saved = dict(getattr(policy, "topology_state", None) or {})
        updater_state = saved.get("updater") or None
        last = (updater_state or {}).get("last_update_step")
        if saved and (clock == 0 or (last is not None and clock < last)):
            # learn(reset_num_timesteps=True) restarted the clock: a new schedule; the same method keeps its generator.
            same = saved.get("method") == self.method and updater_state
            updater_state = {**updater_state, "last_update_step": None} if same else None
            saved = {}
        elif saved and saved.get("method") != self.method:
            raise ValueError(f"this model was trained with method={saved.get('method')!r}; pass the same method to "
                             f"TopologyCallback to continue its schedule (got {self.method!r})")
        # Fractions resolve against this learn call's end (with reset_num_timesteps=False: the steps already done plus
        # the new ones), like SB3's own learning-rate schedules.
        self.total_steps = int(self.model._total_timesteps)
        with warnings.catch_warnings():  # said below in this callback's own words
            warnings.filterwarnings("ignore", message=".*no update fits the schedule")
            self.updater = create_updater(self.method, **self._updater_kwargs(policy))
        if updater_state:
            self.updater.load_state_dict(updater_state)
        self.next_update_step = self._first_update_step(clock, saved, last)
        if saved:
            if self._inverted:
                warnings.warn(f"TopologyCallback: {self._inverted}: no topology update will happen", stacklevel=2)
            self._announce_continuation(saved, clock)
        elif self.next_update_step is None and UPDATERS[self.method].rewires:
            why = self._inverted or f"{_describe(self.resolved_schedule())}, training ends at step {self.total_steps}"
            advice = "move end after start" if self._inverted else "lower update_every or train longer"
            stays = "the network stays dense" if self.method == "gmp" else "the topology stays as initialised"
            print(f"TopologyCallback: no {self.method} update fits this run ({why}): {stays}; {advice}")
        self._announce_shared_checks(clock)
        self._save_state()
        self.sparsity_log = SparsityLog(self.layers)

    def _updater_kwargs(self, policy: Any) -> dict[str, Any]:
        """The updater's arguments: this callback's schedule, resolved against ``total_steps``."""
        start = resolve_step(self.start if self.start is not None else getattr(self.model, "learning_starts", 0),
                             self.total_steps, "start")
        end = resolve_step(self.end, self.total_steps, "end")
        origin = "learning_starts by default" if self.start is None else "start"
        self._inverted = (f"the schedule ends (end={self.end} -> step {end}) before it starts (step {start}, {origin})"
                          if end < start and UPDATERS[self.method].rewires else "")
        kwargs: dict[str, Any] = dict(update_every=self.update_every, start=start, end=max(end, start),
                                      drop_fraction=self.drop_fraction, drop_schedule=self.drop_schedule,
                                      total_steps=self.total_steps, seed=self.seed)
        if self.method == "gmp":
            kwargs["final_sparsity"] = {name: policy.sparse_config.target_sparsity[name] for name in self.layers}
        if self.method == "srigl":
            kwargs["ablation_threshold"] = self.ablation_threshold
        return kwargs

    def _first_update_step(self, clock: int, saved: dict[str, Any], last: int | None) -> int | None:
        """The first step of this callback's schedule still to run.

        A fresh schedule: the first scheduled step at or after the clock (one equal to the clock has not been checked
        yet). A continued one: the first scheduled step after the clock (SB3 checked the clock's step before the last
        ``learn`` returned) and after the last update, except that an update that was due and had not run when the
        state was saved (a checkpoint written between the two) still runs.
        """
        assert self.updater is not None
        if not self.updater.rewires:
            return None
        after = clock - 1
        if saved:
            pending = saved.get("next_update_step")
            after = pending - 1 if pending is not None and pending <= clock else clock
            if last is not None:
                after = max(after, last)
        return self.updater.schedule.next_update_step(after)

    def resolved_schedule(self) -> dict[str, Any]:
        """The schedule in absolute steps (what ``topology_state["schedule"]`` records)."""
        assert self.updater is not None
        schedule = self.updater.schedule
        return dict(update_every=schedule.update_every, start=schedule.start_step, end=schedule.end_step,
                    drop_fraction=schedule.drop_fraction, drop_schedule=schedule.drop_schedule)

    def _announce_continuation(self, saved: dict[str, Any], clock: int) -> None:
        """One line when a continued run follows another schedule than the saved one, or has no update left."""
        if not UPDATERS[self.method].rewires:
            return
        new, old = self.resolved_schedule(), saved.get("schedule")
        if self.next_update_step is None:
            print(f"TopologyCallback: no topology update left after step {clock} (the schedule ends at step "
                  f"{new['end']}): pass a later end to continue rewiring")
        elif old is not None and old != new:
            print(f"TopologyCallback: continuing at step {clock} with this callback's schedule ({_describe(new)}; saved: "
                  f"{_describe(old)}): next update at step {self.next_update_step}")

    def _announce_shared_checks(self, clock: int) -> None:
        """One line when scheduled updates fall closer together than the clock is checked, so that fewer run: PPO/A2C
        check at rollout ends (every ``n_steps * n_envs`` env steps), off-policy algorithms every ``n_envs``."""
        assert self.updater is not None
        on_policy = isinstance(self.model, OnPolicyAlgorithm)
        every = self.model.n_envs * (self.model.n_steps if on_policy else 1)
        if every <= 1 or self.next_update_step is None or not self.announce_shared_checks:
            return
        runs, scheduled = self.updater.schedule.updates_at_checks(self.next_update_step, clock, every, self.total_steps)
        if len(runs) < scheduled:
            where = (f"at rollout ends (every {every} env steps: n_steps {self.model.n_steps} x n_envs "
                     f"{self.model.n_envs})" if on_policy else f"every {every} env steps (n_envs)")
            print(f"TopologyCallback: {type(self.model).__name__} checks the schedule {where}: {len(runs)} of the {scheduled} "
                  f"updates scheduled ({_describe(self.resolved_schedule())}) run, scheduled steps within one check "
                  f"sharing an update; make update_every a multiple of {every} to run them all")

    def _on_training_start(self) -> None:
        self.sparsity_log.record(self.logger, self.model)
        self.logger.record("sparsity/updates", self.updater.num_updates if self.updater else 0)

    def _save_state(self) -> None:
        assert self.updater is not None
        self.model.policy.topology_state = {
            "method": self.method,
            "total_steps": self.total_steps,
            "next_update_step": self.next_update_step,
            "schedule": self.resolved_schedule(),
            "updater": self.updater.state_dict(),
        }

    # ------------------------------------------------------------------------------------------------ updates
    def _due(self) -> bool:
        return self.next_update_step is not None and self.model.num_timesteps >= self.next_update_step

    def _on_step(self) -> bool:
        if not isinstance(self.model, OnPolicyAlgorithm) and self._due():
            self.update_topology()
        return True

    def _on_rollout_end(self) -> None:
        if isinstance(self.model, OnPolicyAlgorithm) and self._due():
            self.update_topology()

    def update_topology(self) -> None:
        """Run one topology update now (dense gradients, drop/grow, optimizer state, target masks, logs)."""
        assert self.updater is not None, "the callback is not initialised: call it through model.learn(callback=...)"
        step = self.model.num_timesteps
        # The drop fraction follows the scheduled step (the clock may have run past it by up to one check).
        scheduled = step if self.next_update_step is None else min(self.next_update_step, step)
        before = self.sparsity_log.masks()
        if self.updater.needs_dense_grad:
            from sparse_rl.sb3.losses import compute_dense_gradients

            compute_dense_gradients(self.model, self.layers)
        stats = self.updater.update(self.layers, scheduled, find_optimizers(self.model))  # uses up the dense gradients
        sync_targets(self.model.policy)
        self.next_update_step = self.updater.schedule.next_update_step(step)
        self._save_state()
        self.last_stats = stats
        self.sparsity_log.record(self.logger, self.model, before)
        self.logger.record("sparsity/updates", self.updater.num_updates)
        self.logger.record("sparsity/drop_fraction", stats.drop_fraction)
        self.logger.record("sparsity/changed_fraction", stats.changed_fraction)
        self.logger.dump(step)  # one dump per update, so no update's images are overwritten before SB3's next dump
        if self.verbose >= 1:
            density = sparsity_report(self.model.policy)["total"]["density"]
            print(f"topology update {self.updater.num_updates} ({self.method}) at step {step} (scheduled {scheduled}): "
                  f"density {density:.4f}, changed {stats.changed_fraction:.4f}")
