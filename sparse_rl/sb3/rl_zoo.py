"""RL Zoo's hyperparameter search (``python -m rl_zoo3.train ... -optimize``) with sparse policies.

RL Zoo's samplers return a fresh ``policy_kwargs`` (``net_arch``, ``activation_fn``) that replaces the config's, so a
trial lost ``sparsity`` / ``distribution`` and the ``TopologyCallback`` pruned it ("the policy has no sparse layer").
:func:`register` wraps each entry of RL Zoo's sampler table (``rl_zoo3.hyperparams_opt.HYPERPARAMS_SAMPLER``) so that
the sampled ``policy_kwargs`` are merged into the config's by this package's override rule: the sampled keys win,
every other key of the config (the sparsity settings included) is kept. It runs when ``sparse_rl.sb3`` is imported
under RL Zoo (``--gym-packages sparse_rl.sb3``, which imports it after ``rl_zoo3``); a script that imports
``sparse_rl.sb3`` first calls :func:`register` itself once RL Zoo is imported.

RL Zoo gives samplers no access to the config: the wrapper reads the trial's hyperparameters from the
``ExperimentManager.objective`` call that invokes it; when it cannot find them it leaves the sample as it is and says
so once (the sparse policies then use their default sparsity, 0.9).
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Mapping
from typing import Any

_WRAPPED = "_sparse_rl_keeps_policy_kwargs"
_warned = False


def _trial_hyperparams() -> Mapping[str, Any] | None:
    """The config hyperparameters of the RL Zoo trial being sampled (``ExperimentManager._hyperparams``)."""
    frame = inspect.currentframe()
    while frame is not None:
        owner = frame.f_locals.get("self")
        if frame.f_code.co_name == "objective" and type(owner).__name__ == "ExperimentManager":
            return getattr(owner, "_hyperparams", None)
        frame = frame.f_back
    return None


def keep_config_policy_kwargs(sampler: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """Wrap an RL Zoo sampler so that its ``policy_kwargs`` are merged into the config's (sampled keys win)."""
    if getattr(sampler, _WRAPPED, False):
        return sampler

    @functools.wraps(sampler)
    def sample(*args: Any, **kwargs: Any) -> dict[str, Any]:
        global _warned
        params = sampler(*args, **kwargs)
        config = _trial_hyperparams()
        if config is None:
            if not _warned:
                print("sparse_rl: could not read the RL Zoo trial's config; sampled policy_kwargs replace the config's "
                      "(sparse policies then use their default sparsity 0.9)")
                _warned = True
            return params
        base = config.get("policy_kwargs") or {}
        if isinstance(base, Mapping) and base:
            params["policy_kwargs"] = {**base, **(params.get("policy_kwargs") or {})}
        return params

    setattr(sample, _WRAPPED, True)
    return sample


def register() -> bool:
    """Wrap every sampler of RL Zoo's table (only when ``rl_zoo3`` is already imported); returns whether it did."""
    if "rl_zoo3" not in sys.modules:
        return False
    try:
        from rl_zoo3.hyperparams_opt import HYPERPARAMS_SAMPLER
    except ImportError:
        return False
    for algo, sampler in list(HYPERPARAMS_SAMPLER.items()):
        HYPERPARAMS_SAMPLER[algo] = keep_config_policy_kwargs(sampler)
    return True
