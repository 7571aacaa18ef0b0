"""When to change the topology and by how much.

- :class:`TopologySchedule`: update every ``update_every`` steps after ``start``, up to ``end`` (each an absolute step,
  or a fraction of ``total_steps`` when given as a float in [0, 1]); the drop fraction follows ``drop_schedule`` from
  ``drop_fraction``: ``constant``, ``cosine`` (Evci et al. 2020, "Rigging the Lottery", arXiv:1911.11134) or ``linear``.
- :func:`polynomial_sparsity`: the cubic sparsity ramp of gradual magnitude pruning (Zhu and Gupta 2017, "To prune,
  or not to prune", arXiv:1710.01878).

Units: a step is one tick of the caller's clock. :class:`~sparse_rl.sb3.callbacks.TopologyCallback` counts
environment steps (``model.num_timesteps``, all parallel environments together), not gradient steps, so with
``train_freq=1, gradient_steps=1`` and one environment the two coincide, and otherwise they do not.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal, get_args

from sparse_rl.topology._deprecation import renamed

DropSchedule = Literal["constant", "cosine", "linear"]
"""How the drop fraction decays from ``start`` to ``end``."""
DROP_SCHEDULES: tuple[str, ...] = get_args(DropSchedule)
DROP_DECAYS = DROP_SCHEDULES
"""Former name of :data:`DROP_SCHEDULES`."""


def resolve_step(point: int | float, total_steps: int | None, what: str) -> int:
    """An absolute step from an int, or from a float fraction in [0, 1] of ``total_steps``.

    :param point: a step (int, or a float above 1), or a fraction of training (float in [0, 1])
    :param total_steps: length of training in steps, needed for a fraction
    :param what: the name of the quantity, for the error messages
    :raises ValueError: for a negative or non-numeric point, a float above 1 with a fractional part (``1.5``: neither
        a fraction nor a step), or a fraction without ``total_steps``
    """
    if isinstance(point, bool) or not isinstance(point, (int, float)) or not point >= 0 or \
            (isinstance(point, float) and point > 1.0 and not point.is_integer()):
        raise ValueError(f"{what} must be a whole number of steps or a fraction in [0, 1], got {point!r}")
    if isinstance(point, float) and point <= 1.0:
        if total_steps is None:
            raise ValueError(f"{what}={point} is a fraction of training: give total_steps to resolve it")
        return int(round(point * total_steps))
    return int(point)


@dataclass(frozen=True, init=False)
class TopologySchedule:
    """Update times and drop fraction of dynamic sparse training.

    Updates fire at ``start + k * update_every`` for ``k >= 1`` while the step is at most ``end``. All steps are in
    the caller's clock: environment steps (``model.num_timesteps``) under the SB3 ``TopologyCallback``.

    :param update_every: steps between topology updates (> 0)
    :param start: first step from which updates are counted (absolute, or fraction of ``total_steps``)
    :param end: last step at which an update may fire (absolute, or fraction of ``total_steps``)
    :param drop_fraction: fraction of each layer's connections replaced at ``start``, in [0, 1], decayed from there
        by ``drop_schedule`` (the first update, ``update_every`` later, replaces a little less unless constant)
    :param drop_schedule: ``"constant"``, ``"cosine"`` or ``"linear"`` decay of the drop fraction from start to end
    :param total_steps: length of training in steps, needed when ``start`` or ``end`` is a fraction
    :param drop_decay: former name of ``drop_schedule`` (deprecated: it warns, and goes in the next release)
    :raises ValueError: for a non-positive ``update_every``, a ``drop_fraction`` outside [0, 1], an unknown
        ``drop_schedule``, or an ``end`` before ``start``
    """

    update_every: int
    start: int | float
    end: int | float
    drop_fraction: float
    drop_schedule: DropSchedule
    total_steps: int | None

    def __init__(
        self,
        update_every: int = 1000,
        start: int | float = 0,
        end: int | float = 0.8,
        drop_fraction: float = 0.3,
        drop_schedule: DropSchedule = "cosine",
        total_steps: int | None = None,
        *,
        drop_decay: DropSchedule | None = None,
    ) -> None:
        drop_schedule = renamed("drop_decay", "drop_schedule", drop_decay, drop_schedule, "cosine")
        for name, value in (("update_every", update_every), ("start", start), ("end", end),
                            ("drop_fraction", drop_fraction), ("drop_schedule", drop_schedule),
                            ("total_steps", total_steps)):
            object.__setattr__(self, name, value)  # frozen
        self.__post_init__()

    def __post_init__(self) -> None:
        if isinstance(self.update_every, bool) or not isinstance(self.update_every, int) or self.update_every <= 0:
            raise ValueError(f"update_every must be a positive integer number of steps, got {self.update_every!r}")
        if not isinstance(self.drop_fraction, (int, float)) or not 0.0 <= self.drop_fraction <= 1.0:
            raise ValueError(f"drop_fraction must lie in [0, 1], got {self.drop_fraction!r}")
        if self.drop_schedule not in DROP_SCHEDULES:
            raise ValueError(f"unknown drop_schedule {self.drop_schedule!r}; choose one of {list(DROP_SCHEDULES)}")
        for name in ("start", "end"):  # checked now; a fraction resolves once total_steps is known
            resolve_step(getattr(self, name), 1 if self.total_steps is None else self.total_steps, name)
        if self.resolvable and self.end_step < self.start_step:
            raise ValueError(f"end ({self.end}) must not come before start ({self.start})")

    @property
    def resolvable(self) -> bool:
        """Whether ``start`` and ``end`` are absolute steps (given as such, or through ``total_steps``)."""
        return self.total_steps is not None or not any(isinstance(p, float) and p <= 1.0 for p in (self.start, self.end))

    @property
    def drop_decay(self) -> DropSchedule:
        """Former name of :attr:`drop_schedule` (deprecated: it warns, and goes in the next release)."""
        warnings.warn("TopologySchedule.drop_decay is deprecated and will be removed in the next release: use "
                      "drop_schedule", DeprecationWarning, stacklevel=2)
        return self.drop_schedule

    @property
    def start_step(self) -> int:
        """``start`` as an absolute step."""
        return resolve_step(self.start, self.total_steps, "start")

    @property
    def end_step(self) -> int:
        """``end`` as an absolute step."""
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

    def updates_at_checks(self, first: int | None, clock: int, every: int, total: int) -> tuple[list[int], int]:
        """The steps at which updates run when the clock is checked every ``every`` steps after ``clock`` until the
        first check at or after ``total`` (SB3's loop: each env step of the vector env, on-policy each rollout end),
        and how many scheduled steps fall in that span. An update runs at the first check at or after its scheduled
        step (one already due: the first check); scheduled steps passed by one check share its update.

        :param first: the first scheduled step still to run (``None``: none)
        """
        last = clock + -(-(total - clock) // every) * every
        runs: list[int] = []
        due, scheduled = first, 0
        while due is not None and due <= last:
            scheduled += 1
            at = max(clock + -(-(due - clock) // every) * every, clock + every)
            if not runs or at > runs[-1]:
                runs.append(at)
            due = self.next_update_step(due)
        return runs, scheduled

    def progress(self, step: int) -> float:
        """Fraction of the way from ``start`` to ``end``, clipped to [0, 1]."""
        start, end = self.start_step, self.end_step
        if end <= start:
            return 1.0
        return min(1.0, max(0.0, (step - start) / (end - start)))

    def drop_fraction_at(self, step: int) -> float:
        """The drop fraction at ``step`` after decay."""
        p = self.progress(step)
        if self.drop_schedule == "cosine":
            return 0.5 * self.drop_fraction * (1.0 + math.cos(math.pi * p))
        if self.drop_schedule == "linear":
            return self.drop_fraction * (1.0 - p)
        return float(self.drop_fraction)


def polynomial_sparsity(progress: float, final: float, initial: float = 0.0, power: int = 3) -> float:
    """Gradual pruning sparsity ``s_f + (s_i - s_f) * (1 - progress) ** power`` (Zhu and Gupta 2017, arXiv:1710.01878).

    :param progress: fraction of the pruning period done (clipped to [0, 1])
    :param final: sparsity at the end, ``s_f``
    :param initial: sparsity at the start, ``s_i``
    :param power: exponent of the ramp (3: the cubic schedule of the paper)
    """
    progress = min(1.0, max(0.0, progress))
    return final + (initial - final) * (1.0 - progress) ** power
