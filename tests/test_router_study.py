"""The routers chapter's checks on constructed data: budget tolerance, flatness and the words of the
distilled-router comparison."""

import numpy as np
import pandas as pd

from duolib.book import router_study as rs


def scores(rows):
    return pd.DataFrame([{"holdout": h, "method": m, "frac_skip": s, "frac_small": 1 - b - s, "frac_big": b}
                         for h, m, b, s in rows])


def test_budget_table_checks_every_option_against_the_tolerance():
    L = 12
    targets = rs.targets_of([6], {"big50_skip50": {"big": 0.5, "skip": 0.5}}, L, "distilled k=6", 6)
    got = scores([("en", "router k=6", 6.2 / L, 0.0), ("py", "router k=6", 6.3 / L, 0.0),  # 0.3 over: misses
                  ("en", "big50_skip50", 0.5, 5.8 / L), ("en", "distilled k=6", 5.9 / L, 0.0),
                  ("en", "random p=0.50", 0.1, 0.0)])  # not a router: left out
    table = rs.budget_table(got, targets, L, "m")
    assert list(table["within"]) == [True, False, True, True]
    assert np.isclose(table.loc[2, "largest_miss"], -0.2) and table.loc[2, "miss_option"] == "skip"
    text = rs.budget_sentence(table)
    assert text.startswith("1 of 4") and "router k=6 (m) on py (+0.30 big layers)" in text
    assert rs.budget_sentence(table[table["within"]]).startswith("every router lands within 0.25")


def test_flatness_sentence_names_the_routers_still_changing():
    steps = np.arange(200)
    flat = pd.DataFrame({"loss": 3 + np.exp(-steps / 10), "penalty": np.full(200, 1e-4)})
    falling = pd.DataFrame({"loss": 5 - 0.005 * steps, "penalty": np.full(200, 1e-4)})
    table = rs.flatness_table({"a": flat, "b": falling}, alpha=10.0)
    assert list(table["flat"]) == [True, False]
    assert rs.flatness_sentence(table) .startswith("1 of 2 routers flattened") and "b (still falling)" in rs.flatness_sentence(table)
    assert rs.flatness_sentence(table[table["flat"]]).startswith("all 1 routers flattened")


def ci(v, lo, hi):
    return {"value": v, "low": lo, "high": hi}


def test_distilled_sentence_is_worded_from_the_interval():
    def ev(diff, pr=0.9, pd_=0.6):
        return {"router": {"position": ci(pr, pr - .1, pr + .1)}, "distilled": {"position": ci(pd_, pd_ - .1, pd_ + .1)},
                "distilled_minus_router": ci(*diff)}

    text = rs.distilled_sentence({"en": ev((-0.05, -0.08, -0.02)), "py": ev((0.03, 0.01, 0.05), 0.9, 1.2),
                                  "code": ev((0.0, -0.02, 0.02))})
    assert "on en it closes part of the gap (33% of it" in text
    assert "on py it closes none of it and is worse" in text
    assert "on code it is not distinguishable" in text
