"""The scorecard's verdict words and interval logic: where a 95% interval lies against a rule's bounds,
one family of such tests under Holm's correction (:class:`Judge`), and how per-holdout (or per-budget)
verdicts combine into one (:mod:`duolib.book.scorecard`).

Why Holm on stored intervals.  The result files keep each number's 95% interval, not its bootstrap
draws, so a decision "the interval lies above the bound" is read as a one-sided test whose p-value comes
from the interval (:func:`duolib.stats.p_from_interval`: the half of the interval facing the bound is
its standard error).  Widening every interval to a Holm level would need the draws and would hide which
tests decided; the p-values instead give the exact Holm step-down over every decision of every claim.
A test that Holm does not reject leaves its decision unknown, which a rule reads as an interval that
straddles its bound.  A number stored without an interval is exact (p 0).  Preconditions (does the
model allow the claim to be tested at all, did the router learn) are read at the plain 95% level and
are not in the family: they decide whether a claim is judged, not what it says.
"""

from __future__ import annotations

from itertools import product
from typing import Callable, NamedTuple

from ..stats import LEVEL, holm, p_from_interval

HOLDS, PARTLY, FAILS = "holds", "partly", "does not hold"
INCONCLUSIVE, UNTESTABLE, MISSING = "inconclusive", "not testable", "not measured"
VERDICTS = (HOLDS, PARTLY, FAILS, INCONCLUSIVE, UNTESTABLE, MISSING)


class Ci(NamedTuple):
    """A number and its interval; ``point`` when the result file held a bare number (no interval);
    ``seeds``: the per-seed values where the number was measured on several training seeds."""

    value: float
    low: float
    high: float
    point: bool = False
    seeds: tuple | None = None


def read_ci(d: dict, key: str) -> Ci:
    """The interval dict ``d[key]`` (a bare number: a point, low = high = value)."""
    x = d[key]
    if isinstance(x, dict):
        seeds = x.get("seeds")
        return Ci(float(x["value"]), float(x["low"]), float(x["high"]), False,
                  None if seeds is None else tuple(float(s) for s in seeds))
    return Ci(float(x), float(x), float(x), True)


def ci_text(t: Ci, spec: str = ".2f") -> str:
    """``value [low, high]``, plus the seeds' range where there are several (``seeds a to b``)."""
    point = f"{t.value:{spec}}"
    text = f"{point} (no interval)" if t.point else f"{point} [{t.low:{spec}}, {t.high:{spec}}]"
    seeds = t.seeds if len(t) > 4 else None
    if seeds and len(seeds) > 1:  # one seed's range is its own value
        text += f" (seeds {min(seeds):{spec}} to {max(seeds):{spec}}, n={len(seeds)})"
    return text


def above(t: tuple[float, float, float], bound: float) -> bool | None:
    """True if the interval lies above ``bound``, False if at or below it, None if it straddles it."""
    lo, hi = t[1], t[2]
    if lo > bound:
        return True
    if hi <= bound:
        return False
    return None


def below(t: tuple[float, float, float], bound: float) -> bool | None:
    """True if the interval lies below ``bound``, False if at or above it, None if it straddles it."""
    lo, hi = t[1], t[2]
    if hi < bound:
        return True
    if lo >= bound:
        return False
    return None


def any_true(flags: list[bool | None]) -> bool | None:
    """Some flag is True -> True; all False -> False; else (unknowns, no True) None."""
    return True if True in flags else False if all(f is False for f in flags) else None


def all_true(flags: list[bool | None]) -> bool | None:
    """Every flag True -> True; some False -> False; else None."""
    return False if False in flags else True if all(f is True for f in flags) else None


def decide(rule: Callable[..., str], *flags: bool | None) -> str:
    """``rule(*flags)`` where every unknown flag (None) is tried both ways: the verdict if all agree,
    else inconclusive (an unknown that could change the verdict)."""
    unknown = [i for i, f in enumerate(flags) if f is None]
    seen = set()
    for fill in product((True, False), repeat=len(unknown)):
        full = list(flags)
        for i, v in zip(unknown, fill):
            full[i] = v
        seen.add(rule(*full))
    return seen.pop() if len(seen) == 1 else INCONCLUSIVE


def two_part(a: bool | None, b: bool | None) -> str:
    """Both parts true -> holds, one -> partly, none -> does not hold; an unknown part that could
    change the verdict -> inconclusive."""
    if a is None or b is None:
        return INCONCLUSIVE
    return HOLDS if a and b else PARTLY if a or b else FAILS


def capped(verdict: str) -> str:
    """A verdict whose controls were not measured: it cannot hold (holds / partly -> inconclusive)."""
    return INCONCLUSIVE if verdict in (HOLDS, PARTLY) else verdict


def combine(verdicts: list[str]) -> str:
    """Per-holdout (or per-budget) verdicts -> one: not measured parts are left out; all not testable ->
    not testable; else judged on the parts whose precondition holds: all the same -> that verdict,
    inconclusive parts with the rest agreeing -> inconclusive, else partly."""
    verdicts = [v for v in verdicts if v != MISSING]
    if not verdicts:
        return MISSING
    if set(verdicts) == {UNTESTABLE}:
        return UNTESTABLE
    verdicts = [v for v in verdicts if v != UNTESTABLE]
    if len(set(verdicts)) == 1:
        return verdicts[0]
    rest = {v for v in verdicts if v != INCONCLUSIVE}
    return INCONCLUSIVE if len(rest) <= 1 else PARTLY


#: Per-seed verdicts that support a decisive combined verdict (:func:`seed_agreement`).
SUPPORTS = {HOLDS: (HOLDS,), PARTLY: (PARTLY, HOLDS), FAILS: (FAILS,)}


def seed_agreement(combined: str, per_seed: list[str]) -> str:
    """The combined verdict over training seeds as the book states it: a decisive verdict (holds, partly, does
    not hold) stands only when every seed judged alone supports it (:data:`SUPPORTS`: the same verdict, or
    holds for partly); otherwise inconclusive.  Registered 2026-12-05 (issue 22) after a full book with
    another CPU's kernels flipped C1 and C5 on rule boundaries that single seeds already crossed: a verdict
    that one changed seed would reverse is not a finding.  Inconclusive, not testable and not measured stay;
    with fewer than two seeds there is nothing to agree."""
    if combined not in SUPPORTS or len(per_seed) < 2:
        return combined
    return combined if all(v in SUPPORTS[combined] for v in per_seed) else INCONCLUSIVE


class Judge:
    """Every interval decision of the scorecard's rules as one family of one-sided tests (module docstring).

    A rule asks :meth:`above` / :meth:`below` / :meth:`graded`; the judge records each test (keyed by the
    claim being judged, the bound and the interval) and its p-value.  Without ``rejected`` (the first
    pass) it answers at the plain 95% level; with ``rejected`` (test key -> Holm's decision) it answers
    True / False only for tests Holm rejected, None otherwise, and None for a test outside the family
    (:func:`judge_all` then adds it and judges again)."""

    def __init__(self, rejected: dict | None = None, level: float = LEVEL):
        self.rejected, self.level, self.claim = rejected, level, ""
        self.tests: dict[tuple, float] = {}
        self.family: dict[tuple, float] = {}  # set by judge_all: the whole family Holm decided

    def _decide(self, t, bound: float, raw: bool | None) -> bool | None:
        value, lo, hi = float(t[0]), float(t[1]), float(t[2])
        if value != value or lo != lo or hi != hi:  # NaN: not measured (e.g. a seed without it), no test
            return None
        if lo == hi:  # a number without an interval: exact
            return raw
        key = (self.claim, float(bound), value, lo, hi)
        self.tests[key] = p_from_interval(value, lo, hi, bound, self.level)
        if self.rejected is None:
            return raw
        if not self.rejected.get(key, False):
            return None
        return value > bound  # rejected: the interval's side of the bound, decided

    def above(self, t, bound: float) -> bool | None:
        """Is the quantity above ``bound`` (True), at or below it (False), or unknown (None)?"""
        return self._decide(t, bound, above(t, bound))

    def below(self, t, bound: float) -> bool | None:
        flag = self.above(t, bound)
        if flag is None:
            return None
        if t[1] == t[2] == bound:
            return False  # exactly on the bound: neither below nor above
        return not flag

    def graded(self, t, cuts: list[float], zones: list[str]) -> str:
        """The zone (``zones[i]`` between ``cuts[i-1]`` and ``cuts[i]``) holding the quantity, else
        inconclusive; ``zones`` has one more entry than ``cuts`` (ascending)."""
        flags = [self.above(t, c) for c in cuts]
        if None in flags:
            return INCONCLUSIVE
        return zones[sum(flags)]


def judge_all(run: Callable[[Judge], dict], level: float = LEVEL, max_passes: int = 6) -> tuple[dict, Judge]:
    """Run ``run(judge)`` (every claim's rule on one judge) under Holm's correction over all its tests.

    The first pass collects the family at the plain level; Holm decides it; later passes answer from
    those decisions.  A rule whose path changes with a decision may ask a new test: it joins the family,
    which is decided again, until no new test appears.  Returns ``run``'s last output and its judge."""
    family: dict[tuple, float] = {}
    judge = Judge(None, level)
    out = run(judge)
    for _ in range(max_passes):
        family.update(judge.tests)
        keys = list(family)
        decisions = dict(zip(keys, holm([family[k] for k in keys], 1 - level)[0]))
        judge = Judge(decisions, level)
        out = run(judge)
        if set(judge.tests) <= set(family):
            break
    judge.family = family
    return out, judge
