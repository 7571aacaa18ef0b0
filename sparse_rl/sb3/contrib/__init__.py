"""Sparse policies and RigL's dense gradients for sb3-contrib: TQC, QR-DQN, CrossQ, RecurrentPPO and MaskablePPO.

Needs the optional ``contrib`` extra (``pip install 'sparse_rl[contrib]'``, i.e. ``sb3-contrib``). Importing
:mod:`sparse_rl.sb3` imports this package when sb3-contrib is installed, which registers the aliases
``SparseMlpPolicy``, ``SparseCnnPolicy`` and ``SparseMultiInputPolicy`` (RecurrentPPO: also ``SparseMlpLstmPolicy``,
``SparseCnnLstmPolicy``, ``SparseMultiInputLstmPolicy``; CrossQ: ``SparseMlpPolicy`` only)::

    from sb3_contrib import TQC
    import sparse_rl.sb3
    from sparse_rl.sb3 import TopologyCallback

    model = TQC("SparseMlpPolicy", "Pendulum-v1", policy_kwargs=dict(sparsity=0.9))
    model.learn(5000, callback=TopologyCallback(method="rigl"))

Without sb3-contrib those aliases are absent and importing this package raises an ``ImportError`` naming the extra.
"""

from __future__ import annotations

try:
    import sb3_contrib  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised in a subprocess without sb3_contrib
    raise ImportError("sparse_rl.sb3.contrib needs sb3-contrib: pip install 'sparse_rl[contrib]'") from error

from sparse_rl.sb3.contrib.envs import ActionMasks
from sparse_rl.sb3.contrib.networks import (
    SparseCrossQActor,
    SparseCrossQCritic,
    SparseQuantileNetwork,
    SparseTQCActor,
    SparseTQCCritic,
)
from sparse_rl.sb3.contrib.policies import (
    SparseCrossQPolicy,
    SparseMaskableActorCriticCnnPolicy,
    SparseMaskableActorCriticPolicy,
    SparseMaskableMultiInputActorCriticPolicy,
    SparseQRDQNCnnPolicy,
    SparseQRDQNMultiInputPolicy,
    SparseQRDQNPolicy,
    SparseRecurrentActorCriticCnnPolicy,
    SparseRecurrentActorCriticPolicy,
    SparseRecurrentMultiInputActorCriticPolicy,
    SparseTQCCnnPolicy,
    SparseTQCMultiInputPolicy,
    SparseTQCPolicy,
    register_policy_aliases,
)

__all__ = [
    "ActionMasks", "SparseCrossQActor", "SparseCrossQCritic", "SparseCrossQPolicy", "SparseMaskableActorCriticCnnPolicy",
    "SparseMaskableActorCriticPolicy", "SparseMaskableMultiInputActorCriticPolicy", "SparseQRDQNCnnPolicy",
    "SparseQRDQNMultiInputPolicy", "SparseQRDQNPolicy", "SparseQuantileNetwork", "SparseRecurrentActorCriticCnnPolicy",
    "SparseRecurrentActorCriticPolicy", "SparseRecurrentMultiInputActorCriticPolicy", "SparseTQCActor",
    "SparseTQCCnnPolicy", "SparseTQCCritic", "SparseTQCMultiInputPolicy", "SparseTQCPolicy", "register_policy_aliases",
]
