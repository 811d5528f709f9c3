"""Words chosen from numbers, for the book's prose templates.

A template must never say "1.00 times as often ... i.e. less often": the word has to follow from the
number the reader sees.  Every helper here therefore compares the numbers *as displayed* (rounded to
``digits`` decimals) when ``digits`` is given, and treats differences within ``tol`` as equality.
"""

from __future__ import annotations

import math
import numbers

#: (word when above, word when below, word when equal) for the usual comparisons.
HIGHER = ("higher", "lower", "equal")
MORE_OFTEN = ("more often", "less often", "as often")
LARGER = ("larger", "smaller", "the same")
ABOVE = ("above", "below", "level with")
WORSE = ("worse than", "better than", "as good as")  # for losses and perplexities: higher is worse


def _check(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(float(value)):
        raise ValueError(f"{name}={value!r} must be a number (not NaN) to be put into words")
    return float(value)


def _shown(value: float, digits: int | None) -> float:
    return value if digits is None else float(f"{value:.{digits}f}")


def direction(value, reference, *, tol: float = 0.0, digits: int | None = None) -> int:
    """+1 if ``value`` is above ``reference``, -1 if below, 0 if they are equal: within ``tol``, and
    after rounding both to ``digits`` decimals (the precision the prose shows) when ``digits`` is given."""
    value, reference = _check("value", value), _check("reference", reference)
    if tol < 0:
        raise ValueError(f"tol={tol!r} must be at least 0")
    diff = _shown(value, digits) - _shown(reference, digits)
    if abs(diff) <= tol:
        return 0
    return 1 if diff > 0 else -1


def compare(value, reference, words: tuple[str, str, str] = HIGHER, *, tol: float = 0.0,
            digits: int | None = None) -> str:
    """The word of ``words`` = (above, below, equal) that describes ``value`` against ``reference``
    (see :func:`direction` for ``tol`` and ``digits``)."""
    if len(words) != 3:
        raise ValueError(f"words={words!r} must be three words: (above, below, equal)")
    return words[{1: 0, -1: 1, 0: 2}[direction(value, reference, tol=tol, digits=digits)]]


def times_as(ratio, what: str = "", *, digits: int = 2, tol: float = 0.0,
             words: tuple[str, str, str] = MORE_OFTEN) -> str:
    """A ratio in words, e.g. ``times_as(1.32, "the others")`` -> "1.32 times as often as the others,
    i.e. more often"; a ratio that shows as 1.00 reads "as often as the others (ratio 1.00)".

    ``words`` = (above, below, equal) phrases; the equal one starts the sentence (e.g. "as often")."""
    ratio = _check("ratio", ratio)
    if ratio < 0:
        raise ValueError(f"ratio={ratio!r} must be at least 0")
    shown = f"{ratio:.{digits}f}"
    than = f" as {what}" if what else ""
    d = direction(ratio, 1.0, tol=tol, digits=digits)
    if d == 0:
        return f"{words[2]}{than} (ratio {shown})"
    return f"{shown} times {words[2]}{than}, i.e. {words[0] if d > 0 else words[1]}"


def relative_change(value, reference, *, digits: int = 1, words: tuple[str, str, str] = HIGHER) -> str:
    """``value`` against ``reference`` as a percentage in words: "12.3% lower", "4.0% higher" or
    "equal" when the change shows as 0.0% (``digits`` decimals of the percentage)."""
    value, reference = _check("value", value), _check("reference", reference)
    if reference == 0:
        raise ValueError("reference=0: a relative change needs a non-zero reference")
    change = 100.0 * (value / reference - 1.0)
    d = direction(change, 0.0, digits=digits)
    if d == 0:
        return words[2]
    return f"{abs(change):.{digits}f}% {words[0] if d > 0 else words[1]}"


def ordering(values: dict, *, digits: int | None = None, tol: float = 0.0) -> str:
    """Names sorted by value, joined by " < " or " = " as the displayed numbers require,
    e.g. ``{"a": 2.0, "b": 1.0, "c": 1.0}`` -> "b = c < a"."""
    if not values:
        raise ValueError("ordering needs at least one value")
    items = sorted(values.items(), key=lambda kv: _check(str(kv[0]), kv[1]))
    out = str(items[0][0])
    for (_, prev), (name, value) in zip(items, items[1:]):
        out += (" = " if direction(value, prev, tol=tol, digits=digits) == 0 else " < ") + str(name)
    return out


def signed(value, above: str, below: str, equal: str, *, fmt: str = "{:.0%}") -> str:
    """One of three phrases by the sign of ``value`` *as formatted with* ``fmt``, its size put into the
    phrase's ``{}``: ``signed(-0.05, "saves {} of the time", "takes {} longer", "takes as long")`` ->
    "takes 5% longer" (never "saves -5%")."""
    value = _check("value", value)
    shown = fmt.format(abs(value))
    if float(fmt.format(0.0).strip("%+")) == float(shown.strip("%+").replace(",", "")):
        return equal.format(shown)
    return (above if value > 0 else below).format(shown)


def interval_reading(ci, above: str, below: str, straddles: str, bound: float = 0.0) -> str:
    """One of three phrases by where the interval ``ci`` (``{"value", "low", "high"}``) lies against
    ``bound``: wholly above (low > bound), at or below (high <= bound: the scorecard's zones), or across it."""
    low, high = _check("low", ci["low"]), _check("high", ci["high"])
    if low > high:
        raise ValueError(f"interval low={low} is above high={high}")
    return above if low > bound else below if high <= bound else straddles
