"""When to change the topology and by how much.

- :class:`TopologySchedule`: update every ``update_every`` steps after ``start``, up to ``end`` (each an absolute step,
  or a fraction of ``total_steps`` when given as a float in [0, 1]); the drop fraction decays from
  ``drop_fraction`` as ``constant``, ``cosine`` (Evci et al. 2020) or ``linear``.
- :func:`polynomial_sparsity`: the cubic sparsity ramp of gradual magnitude pruning (Zhu and Gupta 2017).

Steps are whatever clock the caller uses; the SB3 callback uses environment steps (``model.num_timesteps``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DROP_DECAYS = ("constant", "cosine", "linear")


def resolve_step(point: int | float, total_steps: int | None, what: str) -> int:
    """An absolute step from an int, or from a float fraction in [0, 1] of ``total_steps``."""
    if isinstance(point, bool) or not isinstance(point, (int, float)) or point < 0:
        raise ValueError(f"{what} must be a non-negative step or a fraction in [0, 1], got {point!r}")
    if isinstance(point, float) and point <= 1.0:
        if total_steps is None:
            raise ValueError(f"{what}={point} is a fraction of training: give total_steps to resolve it")
        return int(round(point * total_steps))
    return int(point)


@dataclass(frozen=True)
class TopologySchedule:
    """Update times and drop fraction of dynamic sparse training.

    Updates fire at ``start + k * update_every`` for ``k >= 1`` while the step is at most ``end``.

    :param update_every: steps between topology updates (> 0)
    :param start: first step from which updates are counted (absolute, or fraction of ``total_steps``)
    :param end: last step at which an update may fire (absolute, or fraction of ``total_steps``)
    :param drop_fraction: fraction of each layer's connections replaced at the first update, in [0, 1]
    :param drop_decay: ``"constant"``, ``"cosine"`` or ``"linear"`` decay of the drop fraction from start to end
    :param total_steps: length of training, needed when ``start`` or ``end`` is a fraction
    """

    update_every: int = 1000
    start: int | float = 0
    end: int | float = 0.8
    drop_fraction: float = 0.3
    drop_decay: str = "cosine"
    total_steps: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.update_every, bool) or not isinstance(self.update_every, int) or self.update_every <= 0:
            raise ValueError(f"update_every must be a positive integer number of steps, got {self.update_every!r}")
        if not isinstance(self.drop_fraction, (int, float)) or not 0.0 <= self.drop_fraction <= 1.0:
            raise ValueError(f"drop_fraction must lie in [0, 1], got {self.drop_fraction!r}")
        if self.drop_decay not in DROP_DECAYS:
            raise ValueError(f"unknown drop_decay {self.drop_decay!r}; choose one of {list(DROP_DECAYS)}")
        if self.total_steps is not None and self.end_step < self.start_step:
            raise ValueError(f"end ({self.end}) must not come before start ({self.start})")

    @property
    def start_step(self) -> int:
        return resolve_step(self.start, self.total_steps, "start")

    @property
    def end_step(self) -> int:
        return resolve_step(self.end, self.total_steps, "end")

    def is_update_step(self, step: int) -> bool:
        """Whether ``step`` is exactly one of the update steps."""
        start, end = self.start_step, self.end_step
        return start < step <= end and (step - start) % self.update_every == 0

    def next_update_step(self, step: int) -> int | None:
        """The first update step strictly after ``step``, or ``None`` when no update is left."""
        start = self.start_step
        k = max(1, (step - start) // self.update_every + 1)
        candidate = start + k * self.update_every
        return candidate if candidate <= self.end_step else None

    def progress(self, step: int) -> float:
        """Fraction of the way from ``start`` to ``end``, clipped to [0, 1]."""
        start, end = self.start_step, self.end_step
        if end <= start:
            return 1.0
        return min(1.0, max(0.0, (step - start) / (end - start)))

    def drop_fraction_at(self, step: int) -> float:
        """The drop fraction at ``step`` after decay."""
        p = self.progress(step)
        if self.drop_decay == "cosine":
            return 0.5 * self.drop_fraction * (1.0 + math.cos(math.pi * p))
        if self.drop_decay == "linear":
            return self.drop_fraction * (1.0 - p)
        return float(self.drop_fraction)


def polynomial_sparsity(progress: float, final: float, initial: float = 0.0, power: int = 3) -> float:
    """Gradual pruning sparsity ``s_f + (s_i - s_f) * (1 - progress) ** power`` (Zhu and Gupta 2017)."""
    progress = min(1.0, max(0.0, progress))
    return final + (initial - final) * (1.0 - progress) ** power
