"""Type checks for validating settings up front (`bool` is an `int` to Python, never to us)."""

from __future__ import annotations

import math
from typing import TypeGuard

__all__ = ["is_count", "is_finite", "is_int", "is_number"]


def is_int(value: object) -> bool:
    """An `int`, and not a `bool`."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_count(value: object) -> bool:
    """An `int` of at least 1 (not a `bool`)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def is_number(value: object) -> TypeGuard[int | float]:
    """An `int` or a `float`, and not a `bool`."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_finite(value: object) -> bool:
    """An `int` or a finite `float` (neither NaN nor infinite), and not a `bool`."""
    return is_number(value) and math.isfinite(value)
