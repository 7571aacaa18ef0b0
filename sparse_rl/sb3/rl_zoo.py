"""RL Zoo's hyperparameter search (``python -m rl_zoo3.train ... -optimize``) with sparse policies.

RL Zoo's samplers return a fresh ``policy_kwargs`` (``net_arch``, ``activation_fn``) that replaces the config's, so a
trial lost ``sparsity`` / ``distribution`` and the ``TopologyCallback`` pruned it ("the policy has no sparse layer").
:func:`register` wraps each entry of RL Zoo's sampler table (``rl_zoo3.hyperparams_opt.HYPERPARAMS_SAMPLER``) so that
the sampled ``policy_kwargs`` are merged into the config's by this package's override rule: the sampled keys win,
every other key of the config (the sparsity settings included) is kept. It runs when ``sparse_rl.sb3`` is imported
under RL Zoo (``--gym-packages sparse_rl.sb3``, which imports it after ``rl_zoo3``), or, when ``sparse_rl.sb3`` is
imported first (a script that uses ``sparse_rl`` before RL Zoo), as soon as RL Zoo's sampler module is imported.

RL Zoo gives samplers no access to the config: the wrapper reads the trial's hyperparameters from the
``ExperimentManager.objective`` call that invokes it; when it cannot find them it leaves the sample as it is and says
so once (the sparse policies then use their default sparsity, 0.9).
"""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping
from typing import Any

_WRAPPED = "_sparse_rl_keeps_policy_kwargs"
SAMPLER_MODULE = "rl_zoo3.hyperparams_opt"
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


def _wrap_table(module: Any) -> None:
    table = module.HYPERPARAMS_SAMPLER
    for algo, sampler in list(table.items()):
        table[algo] = keep_config_policy_kwargs(sampler)


class _WrapWhenImported(importlib.abc.MetaPathFinder):
    """Wraps RL Zoo's sampler table as soon as ``rl_zoo3.hyperparams_opt`` is imported (after ``sparse_rl.sb3``: then
    ``--gym-packages sparse_rl.sb3`` imports nothing new, and trials silently fell back to the default sparsity)."""

    marker = _WRAPPED  # one hook, also across a reload of this module (which makes a new class)

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != SAMPLER_MODULE:
            return None
        spec = None
        for finder in sys.meta_path:  # the other finders locate the module
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        execute = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            execute(module)  # a failed import leaves the hook for the next attempt
            _wrap_table(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def register() -> bool:
    """Wrap every sampler of RL Zoo's table now if ``rl_zoo3`` is imported, else as soon as it is; returns whether the
    table is wrapped now."""
    if SAMPLER_MODULE in sys.modules or "rl_zoo3" in sys.modules:
        try:
            _wrap_table(importlib.import_module(SAMPLER_MODULE))
        except ImportError:
            return False
        return True
    if importlib.util.find_spec("rl_zoo3") is not None and not any(getattr(f, "marker", None) == _WRAPPED
                                                                   for f in sys.meta_path):
        sys.meta_path.insert(0, _WrapWhenImported())
    return False
