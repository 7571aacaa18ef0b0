"""Stable-Baselines3 integration: sparse policies and the topology callback.

Sparse deep RL as in Graesser et al. 2022 ("The State of Sparse Training in Deep Reinforcement Learning", arXiv
2206.10369), with the DST methods of :mod:`sparse_rl.topology` (SET, RigL of Evci et al. 2020, SRigL, gradual
magnitude pruning)::

    from stable_baselines3 import SAC
    from sparse_rl.sb3 import SparseSACPolicy, TopologyCallback

    model = SAC(SparseSACPolicy, "HalfCheetah-v4", policy_kwargs=dict(sparsity=0.9))
    model.learn(100_000, callback=TopologyCallback(method="rigl"))

This package holds the SB3 integration (``nn`` and ``topology`` never import SB3). Importing it registers the
policy aliases (``SparseMlpPolicy``, ``SparseCnnPolicy``, ``SparseMultiInputPolicy``) of every algorithm, so RL Zoo's
``--gym-packages sparse_rl.sb3`` makes them available to its configs (and lets ``-optimize`` keep the sparsity, see
:mod:`sparse_rl.sb3.rl_zoo`). With sb3-contrib installed (the optional ``contrib`` extra) it also imports
:mod:`sparse_rl.sb3.contrib`, which registers the same aliases for TQC, QR-DQN, CrossQ, RecurrentPPO (plus
``SparseMlpLstmPolicy``...) and MaskablePPO; without it those aliases are simply absent.
"""

from __future__ import annotations

from sparse_rl.sb3.callbacks import TopologyCallback
from sparse_rl.sb3.minatar import MinAtarCNN, MinAtarPolicy, SparseMinAtarPolicy
from sparse_rl.sb3.networks import SparseContinuousCritic, SparseQNetwork, SparseSACActor, SparseTD3Actor
from sparse_rl.sb3.policies import (
    SparseActorCriticCnnPolicy,
    SparseActorCriticPolicy,
    SparseDQNCnnPolicy,
    SparseDQNMultiInputPolicy,
    SparseDQNPolicy,
    SparseMultiInputActorCriticPolicy,
    SparseSACMultiInputPolicy,
    SparseSACPolicy,
    SparseTD3MultiInputPolicy,
    SparseTD3Policy,
)
from sparse_rl.sb3.report import sparsity_report
from sparse_rl.sb3.rl_zoo import register as _register_rl_zoo_samplers

try:  # the optional contrib extra: sparse policies for sb3-contrib's algorithms, registered under the same aliases
    import sb3_contrib as _sb3_contrib  # noqa: F401
except ImportError:
    HAS_CONTRIB = False
else:
    import sparse_rl.sb3.contrib  # noqa: F401  (registers the aliases of TQC, QRDQN, CrossQ, RecurrentPPO, MaskablePPO)

    HAS_CONTRIB = True

_register_rl_zoo_samplers()  # under RL Zoo: its -optimize trials keep the config's policy_kwargs (sparsity included)

__all__ = [
    "MinAtarCNN", "MinAtarPolicy", "SparseActorCriticCnnPolicy", "SparseActorCriticPolicy", "SparseContinuousCritic",
    "SparseDQNCnnPolicy", "SparseDQNMultiInputPolicy", "SparseDQNPolicy", "SparseMinAtarPolicy",
    "SparseMultiInputActorCriticPolicy", "SparseQNetwork", "SparseSACActor", "SparseSACMultiInputPolicy",
    "SparseSACPolicy", "SparseTD3Actor", "SparseTD3MultiInputPolicy", "SparseTD3Policy", "TopologyCallback",
    "sparsity_report",
]
