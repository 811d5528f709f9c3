"""The scorecard's ten rules (C1-C10 of the paper), their thresholds and preconditions: each rule reads
the run's results (``results/<step>.json``, keys in :mod:`duolib.book.scorecard`) with a
:class:`~duolib.book.verdicts.Judge` and returns (verdict, measured text, key interval or None).  The
rules live in :mod:`duolib.book.rules_selection` (C1, C3, C4, C5, C9: effects selection could produce,
and difficulty) and :mod:`duolib.book.rules_routes` (C2, C6, C7, C8, C10); the thresholds, margins and
preconditions, with their rationale, in :mod:`duolib.book.thresholds` (registered before the run)."""

from __future__ import annotations

from .rules_routes import NO_SKIP, SKIP_TRAINED, c2, c6, c7, c8, c10
from .rules_selection import c1, c3, c4, c5, c9
from .thresholds import C10_UNIGRAM_BAR, PRECONDITIONS  # noqa: F401 - notebook 08 reads C10_UNIGRAM_BAR here
from .verdicts import INCONCLUSIVE, UNTESTABLE, capped, ci_text, read_ci

RULES = {"C1": c1, "C2": c2, "C3": c3, "C4": c4, "C5": c5, "C6": c6, "C7": c7, "C8": c8, "C9": c9, "C10": c10}


def measured_preconditions(results: dict[str, dict]) -> dict[str, dict]:
    """Every ``preconditions.<name>`` interval dict found in any step's results (the first step wins)."""
    found: dict[str, dict] = {}
    for step in results.values():
        if isinstance(step, dict):
            for name, x in (step.get("preconditions") or {}).items():
                found.setdefault(name, x)
    return found


def precondition_state(p, measured: dict) -> tuple[str | None, str]:
    """One precondition ``p`` (:data:`duolib.book.thresholds.PRECONDITIONS`) read at the plain 95% level from
    :func:`measured_preconditions`: (None if it holds | "unknown" if its interval straddles the threshold
    (or is not a number) | "untestable" if it lies wholly on the wrong side | "missing" if not measured,
    the measured interval as text)."""
    if p.name not in measured:
        return "missing", "not measured"
    t = read_ci(measured, p.name)  # a bare number reads as a point
    if p.at_most:
        ok = True if t.high <= p.threshold else False if t.low > p.threshold else None
    else:
        ok = True if t.low >= p.threshold else False if t.high < p.threshold else None
    return (None if ok else "untestable" if ok is False else "unknown"), ci_text(t, ".3f")


def gate(claim: str, results: dict[str, dict]) -> tuple[str | None, list[str]]:
    """The preconditions ``claim`` needs (:func:`precondition_state`): ("untestable" | "unknown" | "missing"
    | None, notes).  Untestable: some precondition's interval lies wholly on the wrong side of its
    threshold (the note says what size would make it testable); unknown: one straddles it; missing: one
    was not measured (the verdict cannot hold); None: all hold."""
    measured = measured_preconditions(results)
    status, notes = None, []
    order = {None: 0, "missing": 1, "unknown": 2, "untestable": 3}
    for p in PRECONDITIONS:
        if claim not in p.claims:
            continue
        s, text = precondition_state(p, measured)
        if s == "missing":
            note = f"precondition {p.name} not measured (the verdict cannot hold without it)"
        else:
            side = "at most" if p.at_most else "at least"
            note = f"precondition {p.name} {text} ({side} {p.threshold:g} needed)"
            note += {None: "", "unknown": ": unsettled", "untestable": f": not testable at this scale; {p.testable}"}[s]
        notes.append(note)
        status = s if order[s] > order[status] else status
    return status, notes


def gated(verdict: str, status: str | None) -> str:
    """A rule's verdict after its preconditions' :func:`gate`."""
    if status == "untestable":
        return UNTESTABLE
    if status == "unknown":
        return verdict if verdict in (UNTESTABLE, INCONCLUSIVE) else INCONCLUSIVE
    return capped(verdict) if status == "missing" else verdict


def skip_models(results: dict[str, dict]):
    """Which model each skip verdict was judged on: a DataFrame of claim, part, model (its run folder) and
    p_skip; "none" where the run holds no such model (the verdict is then not testable)."""
    import pandas as pd

    study = results.get("05_oracle_routes", {}).get("skip_study", {}).get(SKIP_TRAINED)
    rows = [dict(claim="C7", part="{big, skip} oracle", model=study["model"] if study else "none",
                 p_skip=float(study["p_skip"]) if study else float("nan"))]
    if "07_routers" in results:
        sm = results["07_routers"].get("skip_model") or {}
        rows.append(dict(claim="C8", part="routers with skip", model=sm.get("model", "none"),
                         p_skip=float(sm.get("p_skip", float("nan")))))
    return pd.DataFrame(rows)

