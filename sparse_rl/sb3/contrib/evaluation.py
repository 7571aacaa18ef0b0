"""Evaluation of MaskablePPO agents with their action masks, on the run's grid of environment steps."""

from __future__ import annotations

from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback

from sparse_rl.sb3.eval_callback import GridEvalCallback


class MaskableGridEvalCallback(GridEvalCallback, MaskableEvalCallback):
    """:class:`~sparse_rl.sb3.eval_callback.GridEvalCallback` whose evaluation episodes act with the env's action masks
    (sb3-contrib's ``MaskableEvalCallback``), as MaskablePPO acts in training; SB3's ``EvalCallback`` would ignore them."""
