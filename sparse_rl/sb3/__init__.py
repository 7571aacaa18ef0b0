"""Stable-Baselines3 integration: sparse policies and the topology callback.

Sparse deep RL as in Graesser et al. 2022 ("The State of Sparse Training in Deep Reinforcement Learning"), with the
DST methods of :mod:`sparse_rl.topology` (SET, RigL of Evci et al. 2020, SRigL, gradual magnitude pruning)::

    from stable_baselines3 import SAC
    from sparse_rl.sb3 import SparseSACPolicy, TopologyCallback

    model = SAC(SparseSACPolicy, "HalfCheetah-v4", policy_kwargs=dict(sparsity=0.9))
    model.learn(100_000, callback=TopologyCallback(method="rigl"))

This package is the only part of ``sparse_rl`` that imports ``stable_baselines3``. Importing it registers the
policy aliases (``SparseMlpPolicy``, ``SparseCnnPolicy``, ``SparseMultiInputPolicy``) of every algorithm, so RL Zoo's
``--gym-packages sparse_rl.sb3`` makes them available to its configs (and lets ``-optimize`` keep the sparsity, see
:mod:`sparse_rl.sb3.rl_zoo`); the names below are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sparse_rl.sb3 import minatar as _minatar  # noqa: F401  (DQN's MinAtarPolicy / SparseMinAtarPolicy)
from sparse_rl.sb3 import policies as _policies  # noqa: F401  (registers the Sparse* aliases of every algorithm)
from sparse_rl.sb3 import rl_zoo as _rl_zoo

_rl_zoo.register()  # under RL Zoo: its -optimize trials keep the config's policy_kwargs (sparsity included)

if TYPE_CHECKING:
    from sparse_rl.sb3.callbacks import TopologyCallback
    from sparse_rl.sb3.policies import (
        SparseActorCriticCnnPolicy,
        SparseActorCriticPolicy,
        SparseDQNCnnPolicy,
        SparseDQNPolicy,
        SparseSACPolicy,
        SparseTD3Policy,
    )
    from sparse_rl.sb3.report import sparsity_report

_MODULE_OF = {
    "SparseActorCriticCnnPolicy": "policies",
    "SparseActorCriticPolicy": "policies",
    "SparseDQNCnnPolicy": "policies",
    "SparseDQNPolicy": "policies",
    "SparseSACPolicy": "policies",
    "SparseTD3Policy": "policies",
    "TopologyCallback": "callbacks",
    "sparsity_report": "report",
}

__all__ = [
    "SparseActorCriticCnnPolicy", "SparseActorCriticPolicy", "SparseDQNCnnPolicy", "SparseDQNPolicy", "SparseSACPolicy",
    "SparseTD3Policy", "TopologyCallback", "sparsity_report",
]


def __getattr__(name: str) -> Any:
    if name in _MODULE_OF:
        value = getattr(importlib.import_module(f"sparse_rl.sb3.{_MODULE_OF[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sparse_rl.sb3' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))
