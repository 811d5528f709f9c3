"""Value checks shared by every config and command: each returns the value in its plain Python type or
raises ValueError naming the value, what it is and what is allowed.  Booleans are never numbers here
(``True`` would pass as 1)."""

from __future__ import annotations

import math
import numbers


def whole(name: str, value, lo: int | None = 1, hi: int | None = None) -> int:
    """``value`` as an int in ``lo..hi`` (None: unbounded on that side)."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or (lo is not None and value < lo) or (hi is not None and value > hi):
        allowed = (f"in {lo}..{hi}" if lo is not None and hi is not None else f">= {lo}" if lo is not None
                   else f"<= {hi}" if hi is not None else "")
        raise ValueError(f"{name}={value!r} must be a whole number {allowed}".rstrip())
    return int(value)


def positive(name: str, value) -> float:
    """``value`` as a finite float above 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a finite positive number")
    return float(value)


def probability(name: str, value) -> float:
    """``value`` as a float in 0..1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ValueError(f"{name}={value!r} must be a probability in 0..1")
    return float(value)


def budget(name: str, value, num_layers: int) -> int:
    """A budget: a whole number of big layers per token in ``0..num_layers``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or float(value) != int(value) \
            or not 0 <= value <= num_layers:
        raise ValueError(f"{name}={value!r} is outside 0..{num_layers}: a budget counts big layers per token of a "
                         f"{num_layers}-layer model (a whole number)")
    return int(value)


def budgets(name: str, values, num_layers: int) -> tuple[int, ...]:
    """One budget or a non-empty list of them (:func:`budget`) as a tuple."""
    values = [values] if isinstance(values, (numbers.Real, str)) else list(values)
    if not values:
        raise ValueError(f"give at least one {name} (big layers per token, 0..{num_layers})")
    return tuple(budget(name, v, num_layers) for v in values)


def one_of(name: str, value, allowed) -> str:
    """``value`` if it is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(map(str, allowed))}")
    return value


def whole_list(name: str, values, lo: int | None = 1) -> tuple[int, ...]:
    """A non-empty list of whole numbers >= ``lo`` as a tuple."""
    if isinstance(values, (str, numbers.Number)) or not len(values):
        raise ValueError(f"{name}={values!r} must be a non-empty list of whole numbers >= {lo}")
    return tuple(whole(name, v, lo) for v in values)
