"""The checks of the routers chapter (``07_routers``): did training flatten, did the hard routes land on
the budget, did a skip router learn anything, and does the oracle-distilled router close part of the
router-to-oracle gap.  Each returns a tidy table or a dict of intervals; the notebook words its
sentences from them (:func:`budget_sentence`, :func:`flatness_sentence`, :func:`distilled_sentence`).
"""

from __future__ import annotations

import math
from typing import Mapping

import pandas as pd
import torch

from ..routing import BIG, ROUTE_NAMES, SKIP, SMALL, RandomRoutes
from ..router.evaluate import FLAT_TAIL, FLAT_TOL, history_flatness, route_and_score
from .evidence import paired_loss_intervals, router_intervals

#: Realised budgets must lie within this many big (or skipped, small) layers per token of the target.
BUDGET_TOL_LAYERS = 0.25


def flatness_table(histories: Mapping[str, pd.DataFrame], alpha: float) -> pd.DataFrame:
    """One row per router: steps, the tail changes of its loss and weighted penalty
    (:func:`duolib.router.evaluate.history_flatness`), ``flat`` and the word for it."""
    rows = []
    for name, h in histories.items():
        f = history_flatness(h, alpha)
        rows.append({"router": name, "steps": len(h), "loss_change": f["loss_change"],
                     "penalty_change": f["penalty_change"], "flat": f["flat"], "training": f["word"]})
    return pd.DataFrame(rows)


def flatness_sentence(table: pd.DataFrame) -> str:
    """``all 10 routers flattened`` or ``7 of 10 routers flattened; still changing: a (still falling), ...``."""
    n, flat = len(table), int(table["flat"].sum())
    if flat == n:
        return (f"all {n} routers flattened (loss and weighted penalty changed by less than {FLAT_TOL:.0%} over the "
                f"last {FLAT_TAIL:.0%} of steps)")
    rest = ", ".join(f"{r.router} ({r.training})" for r in table.itertuples() if not r.flat)
    return (f"{flat} of {n} routers flattened (the {FLAT_TOL:.0%} rule over the last {FLAT_TAIL:.0%} of steps); "
            f"not yet: {rest}")


def budget_table(scores: pd.DataFrame, targets: Mapping[str, Mapping[str, float]], num_layers: int,
                 model_name: str = "") -> pd.DataFrame:
    """Realised against target layers per token, per router and holdout: ``targets`` maps a method of
    ``scores`` (:func:`duolib.book.experiments.score_policies`) to its target fraction per option; a
    budget of k big layers is ``{"big": k / L, "small": 1 - k / L}``.  ``within``: every option's
    realised count within :data:`BUDGET_TOL_LAYERS` layers of its target."""
    rows = []
    for r in scores[scores["method"].isin(list(targets))].itertuples():
        goal = targets[r.method]
        off = {o: getattr(r, f"frac_{o}") * num_layers - f * num_layers for o, f in goal.items()}
        worst = max(off, key=lambda o: abs(off[o]))
        rows.append({"model": model_name, "router": r.method, "holdout": r.holdout,
                     "target_big": goal.get("big", 0.0) * num_layers, "realised_big": r.frac_big * num_layers,
                     "target_skip": goal.get("skip", 0.0) * num_layers, "realised_skip": r.frac_skip * num_layers,
                     "largest_miss": off[worst], "miss_option": worst, "within": abs(off[worst]) <= BUDGET_TOL_LAYERS})
    return pd.DataFrame(rows)


def budget_sentence(table: pd.DataFrame) -> str:
    """Words from :func:`budget_table`: all within the tolerance, or which are not and by how much."""
    n = len(table)
    if n and bool(table["within"].all()):
        return (f"every router lands within {BUDGET_TOL_LAYERS} layers of its target on every holdout "
                f"(largest miss {table['largest_miss'].abs().max():.2f} layers)")
    bad = table[~table["within"]]
    names = ", ".join(f"{r.router}{' (' + r.model + ')' if r.model else ''} on {r.holdout} ({r.largest_miss:+.2f} "
                      f"{r.miss_option} layers)"
                      for r in bad.itertuples())
    return f"{len(bad)} of {n} router-holdout pairs miss their target by more than {BUDGET_TOL_LAYERS} layers: {names}"


def skip_router_evidence(model, router, slices: Mapping[str, torch.Tensor], seed: int = 0) -> dict:
    """A skip router against random routing at its *realised* route shares (``p_big``, ``p_skip`` of its
    scored positions), on the windows of every holdout pooled (equal lengths): the intervals of both
    perplexities and of ``router_minus_random`` (mean loss, nats; below 0: the router learned)."""
    losses, routes = zip(*(route_and_score(model, router, ids) for ids in slices.values()))
    scored = torch.cat([r[:, :-1] for r in routes])
    p_big, p_skip = float((scored == BIG).double().mean()), float((scored == SKIP).double().mean())
    rand = RandomRoutes(p_big=p_big, p_skip=min(p_skip, 1.0 - p_big), seed=seed)
    random_losses = torch.cat([route_and_score(model, rand, ids)[0] for ids in slices.values()])
    ci = paired_loss_intervals({"router": torch.cat(losses), "random": random_losses}, seed=seed)
    return {**ci, "p_big": p_big, "p_skip": p_skip}


def distilled_evidence(model, router, distilled, k: int, slices: Mapping[str, torch.Tensor], matrices: Mapping,
                       seed: int = 0) -> dict:
    """Per holdout: the paper's router and the oracle-distilled router at budget ``k`` on 03's windows:
    each one's :func:`duolib.book.evidence.router_intervals` (``position``: 0 at the oracle, 1 at the best
    fixed pattern) and the paired difference ``distilled_minus_router`` (mean loss, nats)."""
    out = {}
    for h, ids in slices.items():
        r_loss, _ = route_and_score(model, router, ids)
        d_loss, d_routes = route_and_score(model, distilled, ids)
        p_big = float((d_routes[:, :-1] == BIG).double().mean())
        rand, _ = route_and_score(model, RandomRoutes(p_big=p_big, seed=seed), ids)
        pair = paired_loss_intervals({"distilled": d_loss, "router": r_loss}, seed=seed)
        out[h] = {"router": router_intervals(matrices[h], r_loss, rand, k, seed=seed),
                  "distilled": router_intervals(matrices[h], d_loss, rand, k, seed=seed),
                  "distilled_minus_router": pair["distilled_minus_router"]}
    return out


def distilled_sentence(evidence: Mapping[str, dict]) -> str:
    """Per holdout, whether the distilled router closes part of the router-to-oracle gap, from the
    interval of ``distilled_minus_router`` (below 0: it does; above: it is worse; else no detectable
    difference), with the share of the gap it closes (router position minus distilled position, over
    the router's position)."""
    parts = []
    for h, e in evidence.items():
        diff, pr, pd_ = e["distilled_minus_router"], e["router"]["position"]["value"], e["distilled"]["position"]["value"]
        closed = (pr - pd_) / pr if pr > 0 else math.nan
        span = f"{diff['value']:+.3f} [{diff['low']:+.3f}, {diff['high']:+.3f}] nats"
        if diff["high"] < 0:
            parts.append(f"on {h} it closes part of the gap ({closed:.0%} of it; distilled minus router {span})")
        elif diff["low"] > 0:
            parts.append(f"on {h} it closes none of it and is worse than the paper's router ({span})")
        else:
            parts.append(f"on {h} it is not distinguishable from the paper's router ({span})")
    return "; ".join(parts)


def targets_of(budgets, settings: Mapping[str, Mapping[str, float]], num_layers: int, distilled: str | None = None,
               distill_budget: float | None = None) -> dict[str, dict[str, float]]:
    """The target fractions per option of the chapter's routers (names as the notebook gives them)."""
    out = {f"router k={k}": {ROUTE_NAMES[BIG]: k / num_layers, ROUTE_NAMES[SMALL]: 1 - k / num_layers} for k in budgets}
    out |= {name: dict(fr) for name, fr in settings.items()}
    if distilled is not None:
        out[distilled] = {"big": distill_budget / num_layers, "small": 1 - distill_budget / num_layers}
    return out
