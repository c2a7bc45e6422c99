"""The checks every numeric setting passes, wherever it comes from (a flag, a --config file, an experiment
plan, a Python call): of the right type (an integer is not a bool, a float is finite), in its range, or one
PnlmError naming the setting and what was expected."""

from __future__ import annotations

import math
from typing import Any

from pnlm.errors import PnlmError

MAX_SEED = 2**32 - 1  # numpy's and torch's seeds


def whole(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """An integer (not a bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise PnlmError(f"{name} must be an integer, got {value!r}")
    _range(name, value, low, high, f"{value:,}")
    return value


def real(name: str, value: Any, low: float | None = None, high: float | None = None, above: bool = False) -> float:
    """A finite number (not a bool) in [low, high] (above: strictly above low)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PnlmError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise PnlmError(f"{name} must be a finite number, got {value!r}")
    if above and low is not None and value <= low:
        raise PnlmError(f"{name} must be above {low:g}, got {value:g}")
    _range(name, value, None if above else low, high, f"{value:g}")
    return float(value)


def seed(value: Any, name: str = "--seed") -> int:
    return whole(name, value, 0, MAX_SEED)


def _range(name: str, value: float, low: float | None, high: float | None, shown: str) -> None:
    if low is not None and high is not None and not low <= value <= high:
        raise PnlmError(f"{name} must be between {low:,} and {high:,}, got {shown}")
    if low is not None and value < low:
        raise PnlmError(f"{name} must be at least {low:,}, got {shown}")
    if high is not None and value > high:
        raise PnlmError(f"{name} must be at most {high:,}, got {shown}")
