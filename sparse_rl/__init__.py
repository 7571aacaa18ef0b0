"""sparse_rl: truly sparse reinforcement-learning agents.

Dynamic sparse training (static, SET, RigL, constant fan-in SRigL, gradual magnitude pruning) on layers that store
only their nonzero weights, with Stable-Baselines3 policies in :mod:`sparse_rl.sb3`.
"""

__version__ = "0.1.0"

from typing import Any

__all__ = ["load_exported", "sparsity_report"]


def __getattr__(name: str) -> Any:
    """Lazy top-level helpers, so ``import sparse_rl`` stays light (no SB3 import until needed)."""
    if name == "sparsity_report":
        from sparse_rl.sb3.report import sparsity_report

        return sparsity_report
    if name == "load_exported":
        from sparse_rl.harness.export import load_exported

        return load_exported
    raise AttributeError(f"module 'sparse_rl' has no attribute {name!r}")
