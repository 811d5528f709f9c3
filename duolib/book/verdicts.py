"""The scorecard's verdict words and interval logic: where a 95% interval lies against a rule's bounds,
and how per-holdout (or per-budget) verdicts combine into one (:mod:`duolib.book.scorecard`)."""

from __future__ import annotations

from typing import NamedTuple

HOLDS, PARTLY, FAILS = "holds", "partly", "does not hold"
INCONCLUSIVE, UNTESTABLE, MISSING = "inconclusive", "not testable", "not measured"
VERDICTS = (HOLDS, PARTLY, FAILS, INCONCLUSIVE, UNTESTABLE, MISSING)


class Ci(NamedTuple):
    """A number and its interval; ``point`` when the result file held a bare number (no interval)."""

    value: float
    low: float
    high: float
    point: bool = False


def read_ci(d: dict, key: str) -> Ci:
    """The interval dict ``d[key]`` (a bare number: a point, low = high = value)."""
    x = d[key]
    if isinstance(x, dict):
        return Ci(float(x["value"]), float(x["low"]), float(x["high"]))
    return Ci(float(x), float(x), float(x), True)


def ci_text(t: Ci, spec: str = ".2f") -> str:
    point = f"{t.value:{spec}}"
    return f"{point} (no interval)" if t.point else f"{point} [{t.low:{spec}}, {t.high:{spec}}]"


def above(t: tuple[float, float, float], bound: float) -> bool | None:
    """True if the interval lies above ``bound``, False if at or below it, None if it straddles it."""
    lo, hi = t.low, t.high
    if lo > bound:
        return True
    if hi <= bound:
        return False
    return None


def below(t: tuple[float, float, float], bound: float) -> bool | None:
    """True if the interval lies below ``bound``, False if at or above it, None if it straddles it."""
    lo, hi = t.low, t.high
    if hi < bound:
        return True
    if lo >= bound:
        return False
    return None


def any_true(flags: list[bool | None]) -> bool | None:
    """Some flag is True -> True; all False -> False; else (unknowns, no True) None."""
    return True if True in flags else False if all(f is False for f in flags) else None


def graded(t: tuple[float, float, float], cuts: list[float], zones: list[str]) -> str:
    """The zone (``zones[i]`` between ``cuts[i-1]`` and ``cuts[i]``) holding the whole interval, else
    inconclusive; ``zones`` has one more entry than ``cuts`` (ascending)."""
    lo, hi = t.low, t.high
    z_lo = sum(lo >= c for c in cuts)
    z_hi = sum(hi >= c for c in cuts)
    return zones[z_lo] if z_lo == z_hi else INCONCLUSIVE


def two_part(a: bool | None, b: bool | None) -> str:
    """Both parts true -> holds, one -> partly, none -> does not hold; an unknown part that could
    change the verdict -> inconclusive."""
    if a is None or b is None:
        return INCONCLUSIVE
    return HOLDS if a and b else PARTLY if a or b else FAILS


def combine(verdicts: list[str]) -> str:
    """Per-holdout (or per-budget) verdicts -> one: see the module docstring."""
    verdicts = [v for v in verdicts if v != MISSING]
    if not verdicts:
        return MISSING
    if set(verdicts) == {UNTESTABLE}:
        return UNTESTABLE
    verdicts = [v for v in verdicts if v != UNTESTABLE]  # judged on the parts whose precondition holds
    if len(set(verdicts)) == 1:
        return verdicts[0]
    rest = {v for v in verdicts if v != INCONCLUSIVE}
    return INCONCLUSIVE if len(rest) <= 1 else PARTLY
