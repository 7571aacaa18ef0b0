"""Renamed keywords: the old name keeps working for one release, with a ``DeprecationWarning``."""

from __future__ import annotations

import warnings
from typing import TypeVar

T = TypeVar("T")


def renamed(old: str, new: str, old_value: T | None, new_value: T, default: T, stacklevel: int = 3) -> T:
    """The value of a keyword renamed from ``old`` to ``new``, warning when the old name was used.

    :param old: the former keyword
    :param new: its current name
    :param old_value: what the caller passed as ``old`` (``None`` when not passed)
    :param new_value: what the caller passed as ``new`` (its default when not passed)
    :param default: the default of ``new``, to tell whether both names were given
    :param stacklevel: frames between the warning and the caller to blame (3: the caller of the function calling this)
    :raises TypeError: when both names were given with different values
    """
    if old_value is None:
        return new_value
    warnings.warn(f"the keyword {old!r} is deprecated and will be removed in the next release: use {new!r}",
                  DeprecationWarning, stacklevel=stacklevel)
    if new_value != default and new_value != old_value:
        raise TypeError(f"got both {new}={new_value!r} and its former name {old}={old_value!r}: pass only {new!r}")
    return old_value
