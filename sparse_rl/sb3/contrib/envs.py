"""Action masks for MaskablePPO on any env with a discrete action space.

sb3-contrib's MaskablePPO asks its env for ``action_masks()`` at every step (``ActionMasker`` provides it from a
function). :class:`ActionMasks` is a wrapper an RL Zoo config can name without code (``env_wrapper:
[sparse_rl.sb3.contrib.envs.ActionMasks]``): it passes the env's own ``action_masks()`` through when the env has one,
and otherwise declares every action valid, which turns MaskablePPO into PPO on classic-control tasks (what
``configs/ppo_mask.yml`` does for CartPole-v1 and Acrobot-v1).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["ActionMasks", "all_valid_mask"]


def all_valid_mask(space: spaces.Space) -> np.ndarray:
    """The mask that allows every action of a Discrete, MultiDiscrete or MultiBinary space, in MaskablePPO's layout."""
    if isinstance(space, spaces.Discrete):
        return np.ones(int(space.n), dtype=bool)
    if isinstance(space, spaces.MultiDiscrete):
        return np.ones(int(np.sum(space.nvec)), dtype=bool)
    if isinstance(space, spaces.MultiBinary):
        return np.ones(2 * int(np.prod(space.shape)), dtype=bool)
    raise ValueError(f"MaskablePPO masks Discrete, MultiDiscrete or MultiBinary actions, not {space}: use ppo")


class ActionMasks(gym.Wrapper):
    """Gives an env the ``action_masks()`` method MaskablePPO needs: the env's own when it has one, else all valid.

    :param env: an env with a Discrete, MultiDiscrete or MultiBinary action space
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        try:
            self._own = env.get_wrapper_attr("action_masks")
        except AttributeError:
            self._own = None
        self._all_valid = None if callable(self._own) else all_valid_mask(env.action_space)

    def action_masks(self) -> Any:
        """The env's own mask, or every action valid."""
        if self._all_valid is not None:
            return self._all_valid.copy()
        return self._own()  # type: ignore[misc]
