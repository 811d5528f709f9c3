"""The registered rules of issue 22 on constructed results, one outcome at a time: effect margins, null
zones, the controls that separate selection from compute (a verdict without them cannot hold),
measured preconditions ("not testable at this scale" with what would make it testable), C2's cells,
Holm's correction across claims and seed ranges."""

import pytest
from test_scorecard import (PRE, ci, card_of, dense, difficulty, oracle, routers, routes05, schedules, with_pre)

from duolib.book import scorecard as sc
from duolib.book import thresholds, verdicts
from duolib.book.rules import gate, gated
from duolib.book.verdicts import FAILS, HOLDS, INCONCLUSIVE, PARTLY, UNTESTABLE, Judge, judge_all


def judged(results, claim, **pre):
    card = card_of(results, **pre)
    return card.loc[claim, "verdict"], card.loc[claim, "measured"]


# ----------------------------------------------------------------------------- C1, C4: the placebo

@pytest.mark.parametrize("gap, beyond, expected", [
    ((0.2, 0.05), (0.05, 0.005), HOLDS),
    ((0.2, 0.05), (0.0, 0.005), PARTLY),  # far better, but the placebo explains all of it
    ((0.05, 0.02), (0.05, 0.005), PARTLY),
    ((0.05, 0.02), (0.0, 0.005), FAILS),  # a small gap that is selection alone
    ((-0.01, 0.005), (0.05, 0.005), FAILS),
    ((0.2, 0.05), (0.012, 0.01), INCONCLUSIVE),  # how much survives is unsettled
])
def test_c1_survives_the_placebo(gap, beyond, expected):
    v, measured = judged({"03_oracle": oracle(gap=gap, beyond=beyond)}, "C1")
    assert v == expected
    assert "beyond the placebo" in measured and "survives" in measured


@pytest.mark.parametrize("gap, expected", [((0.2, 0.05), INCONCLUSIVE), ((0.05, 0.02), INCONCLUSIVE),
                                           ((-0.01, 0.005), FAILS)])
def test_c1_without_controls_cannot_hold(gap, expected):
    v, measured = judged({"03_oracle": oracle(gap=gap, controls=False)}, "C1")
    assert v == expected and "controls not measured" in measured


@pytest.mark.parametrize("g1, g2, beyond, expected", [
    ((0.05, 0.01), (0.1, 0.01), (0.05, 0.005), HOLDS),
    ((0.05, 0.01), (0.1, 0.01), (0.0, 0.005), PARTLY),  # k=1 beats all-big no more than 12 equal candidates do
    ((-0.05, 0.01), (0.1, 0.01), (0.05, 0.005), PARTLY),  # only k=2, beyond its placebo
    ((-0.05, 0.01), (0.1, 0.01), (0.0, 0.005), FAILS),  # only k=2, and that is selection
    ((-0.05, 0.01), (-0.1, 0.01), (0.05, 0.005), FAILS),
    ((0.05, 0.01), (0.1, 0.01), (0.01, 0.01), INCONCLUSIVE),
    ((0.005, 0.002), (-0.1, 0.01), (0.05, 0.005), FAILS),  # a 0.5% gap is inside the negligible margin
])
def test_c4_one_big_layer_must_beat_all_big_by_more_than_its_placebo(g1, g2, beyond, expected):
    v, measured = judged({"03_oracle": oracle(g1=g1, g2=g2, beyond=beyond)}, "C4")
    assert v == expected
    assert "k=1: beyond the placebo" in measured


def test_c4_without_controls_cannot_hold():
    v, measured = judged({"03_oracle": oracle(controls=False)}, "C4")
    assert v == INCONCLUSIVE and "controls not measured" in measured
    assert judged({"03_oracle": oracle(g1=(-0.05, 0.01), g2=(-0.1, 0.01), controls=False)}, "C4")[0] == FAILS


# ----------------------------------------------------------------------------- C3: matched candidates

@pytest.mark.parametrize("best_k, matched, expected", [
    ((6, 5, 7), (-0.02, 0.005), HOLDS),  # less compute wins at equal candidates: the curve follows candidates
    ((6, 5, 7), (0.05, 0.005), PARTLY),  # more compute wins at equal candidates: not the candidate count
    ((2, 2, 3), (-0.02, 0.005), PARTLY),
    ((0, 0, 0), (-0.02, 0.005), FAILS),
    ((6, 5, 7), (0.01, 0.01), INCONCLUSIVE),
    ((6, 3, 8), (-0.02, 0.005), INCONCLUSIVE),
])
def test_c3_reads_the_matched_control(best_k, matched, expected):
    v, measured = judged({"03_oracle": oracle(best_k=best_k, matched=matched)}, "C3")
    assert v == expected and "at equal candidate counts" in measured


def test_c3_needs_its_controls_and_a_plateau():
    assert judged({"03_oracle": oracle(best_k=(6, 5, 7), controls=False)}, "C3")[0] == INCONCLUSIVE
    v, measured = judged({"03_oracle": oracle(best_k=(6, 5, 7))}, "C3", stage1_plateau=ci(0.05, 0.005))
    assert v == UNTESTABLE and "not testable at this scale" in measured and "longer Stage-1" in measured
    assert judged({"03_oracle": oracle(best_k=(6, 5, 7))}, "C3", stage1_plateau=ci(0.02, 0.005))[0] == INCONCLUSIVE
    v, measured = judged({"03_oracle": oracle(best_k=(6, 5, 7))}, "C3", stage1_plateau=None)
    assert v == INCONCLUSIVE and "stage1_plateau not measured" in measured


# ----------------------------------------------------------------------------- C5: the shuffled control

@pytest.mark.parametrize("kw, expected", [
    ({}, HOLDS),
    ({"rise_shuffled": (0.0, 0.005)}, PARTLY),  # rising loses to constant but not to its shuffled control
    ({"fall_shuffled": (0.0, 0.005), "rise_shuffled": (0.0, 0.005)}, FAILS),  # position plays no role
    ({"fall_shuffled": (0.01, 0.01)}, INCONCLUSIVE),
])
def test_c5_must_lose_against_its_shuffled_control_too(kw, expected):
    v, measured = judged(schedules((0.05, 0.01), (0.03, 0.01), **kw), "C5")
    assert v == expected and "over the shuffled control" in measured


def test_c5_the_issues_case_and_without_controls():
    # +1.8% over constant, and the shuffled control just as much worse: no schedule effect
    r = schedules((0.018, 0.003), (0.02, 0.003), fall_shuffled=(0.0, 0.003), rise_shuffled=(0.002, 0.003))
    assert judged(r, "C5")[0] == FAILS
    v, measured = judged(schedules((0.05, 0.01), (0.03, 0.01), controls=False), "C5")
    assert v == INCONCLUSIVE and "controls not measured" in measured


# ----------------------------------------------------------------------------- C6: margins

@pytest.mark.parametrize("lo, hi, expected", [
    ((0.6, 0.02), (0.4, 0.02), HOLDS),
    ((0.6, 0.02), (0.51, 0.01), PARTLY),
    ((0.51, 0.01), (0.49, 0.01), FAILS),  # 0.51 is not "late": inside the margin
    ((0.535, 0.01), (0.4, 0.02), INCONCLUSIVE),  # 0.535 [0.525, 0.545] straddles 0.53
])
def test_c6_needs_a_margin_from_even(lo, hi, expected):
    assert judged(routes05(lo, hi), "C6")[0] == expected


def test_c6_is_not_testable_with_a_small_capacity_gap():
    v, measured = judged(routes05((0.6, 0.02), (0.4, 0.02)), "C6", small_big_gap=ci(0.05, 0.01))
    assert v == UNTESTABLE and "small_big_gap" in measured and "wider big FFN" in measured


# ----------------------------------------------------------------------------- C7: half-skip cost

POLAR = [ci(0.9, 0.05), ci(0.1, 0.05), ci(0.5, 0.05), ci(0.5, 0.05)]


@pytest.mark.parametrize("cost, expected", [((0.5, 0.05), HOLDS), ((0.04, 0.01), UNTESTABLE), ((0.1, 0.02), INCONCLUSIVE)])
def test_c7_needs_skipping_to_cost_something(cost, expected):
    v, measured = judged(routes05(skips=POLAR), "C7", half_skip_cost=ci(*cost))
    assert v == expected
    if expected == UNTESTABLE:
        assert "half_skip_cost" in measured and "FFNs that carry more" in measured


# ----------------------------------------------------------------------------- C8: null zone and margin

@pytest.mark.parametrize("kw, expected", [
    ({"ratio": (1.0, 0.0)}, PARTLY),  # 1.00 [1.00, 1.00]: no early-position effect -> that part does not hold
    ({"ratio": (1.03, 0.01)}, PARTLY),  # within 5% of 1
    ({"ratio": (1.05, 0.02)}, INCONCLUSIVE),
    ({"late": (0.51, 0.005), "ratio": (1.0, 0.0), "skip": (0.51, 0.005)}, FAILS),  # 0.51 is not "late"
    ({"skip": (0.51, 0.005)}, PARTLY),
])
def test_c8_null_zone_and_margin(kw, expected):
    assert judged(routers(**kw), "C8")[0] == expected


def test_c8_needs_a_capacity_gap_and_a_margin_over_random_routing():
    assert judged(routers(), "C8", small_big_gap=ci(0.05, 0.01))[0] == UNTESTABLE
    # beats random by 0.005 nats: below the negligible effect, the router did not learn
    v, measured = judged(routers(learned=(-0.005, 0.002)), "C8")
    assert v == UNTESTABLE and "did not learn" in measured


# ----------------------------------------------------------------------------- C2: cells and ceilings

def test_c2_against_the_label_free_ceiling():
    r = routers(position=(0.8, 0.05))
    assert judged(r, "C2")[0] == HOLDS  # router at 10.0 = fixed, ceiling 9.0: r against the ceiling 1.0
    r["07_routers"]["holdouts"]["english"]["c2"]["6"]["router"] = ci(9.2)  # near the ceiling
    v, measured = judged(r, "C2")
    assert v == PARTLY and "r against it 0.2" in measured


def test_c2_drops_cells_whose_precondition_fails_and_names_them():
    r = routers(position=(0.8, 0.05))
    c2 = r["07_routers"]["holdouts"]["english"]["c2"]
    c2["4"] = {**c2["6"], "router_minus_random": ci(0.1, 0.02), "position": ci(0.1, 0.02)}  # k=4 did not learn
    v, measured = judged(r, "C2")
    assert v == HOLDS and "cells dropped (precondition fails): english k=4 (router no better than random)" in measured
    r = routers(position=(0.8, 0.05))
    r["03_oracle"]["holdouts"]["english"]["label_free"]["6"] = 9.99  # the ceiling is no better than fixed
    v, measured = judged(r, "C2")
    assert v == UNTESTABLE and "english k=6 (no room)" in measured


def test_c2_without_the_ceiling_or_a_capacity_gap():
    r = routers(position=(0.8, 0.05))
    del r["03_oracle"]["holdouts"]["english"]["label_free"]
    v, measured = judged(r, "C2")
    assert v == INCONCLUSIVE and "label-free ceiling not measured" in measured
    assert judged(routers(position=(0.2, 0.05)), "C2", small_big_gap=ci(0.05, 0.01))[0] == UNTESTABLE


# ----------------------------------------------------------------------------- C9: a stable measure

@pytest.mark.parametrize("kw, expected", [
    ({}, HOLDS),
    ({"half": (0.2, 0.05)}, UNTESTABLE),  # an unstable difficulty measure
    ({"half": (0.5, 0.05)}, INCONCLUSIVE),
    ({"half": None}, INCONCLUSIVE),  # reliability not measured
    ({"half": None, "rho": (0.9, 0.05)}, FAILS),
    ({"ce": (0.005, 0.002)}, FAILS),  # compute tokens gain only 0.005 nats more than easy ones: inside the margin
])
def test_c9_needs_a_stable_measure(kw, expected):
    v, measured = judged(difficulty(**kw), "C9")
    assert v == expected
    if expected == UNTESTABLE:
        assert "not a stable measure" in measured and "split-half" in measured
    if kw.get("half", 1) is None:
        assert "controls not measured" in measured or expected == FAILS


def test_c9_a_noise_difficulty_measure_does_not_pass():
    """Pure noise: rho ~ 0 passes |rho| < 0.7, but its split-half reliability is ~ 0."""
    assert judged(difficulty(rho=(0.0, 0.02), half=(0.0, 0.02), synthetic=False), "C9")[0] == UNTESTABLE
    assert judged(difficulty(rho=(0.0, 0.02), half=(0.8, 0.02), synthetic=False), "C9")[0] == PARTLY


# ----------------------------------------------------------------------------- C10

@pytest.mark.parametrize("spread, expected", [((0.5, 0.05), HOLDS), ((0.03, 0.01), UNTESTABLE), ((0.1, 0.02), INCONCLUSIVE)])
def test_c10_needs_a_curve_that_moves(spread, expected):
    v, measured = judged(dense(), "C10", duo_curve_spread=ci(*spread))
    assert v == expected
    if expected == UNTESTABLE:
        assert "duo_curve_spread" in measured and "testable once Duo's loss falls" in measured


def test_c10_margins():
    assert judged(dense(freeze=28.1), "C10")[0] == PARTLY  # 0.4% worse after freezing: negligible


# ----------------------------------------------------------------------------- preconditions, Holm, seeds, text

def test_gate_outcomes():
    r = with_pre({})
    assert gate("C2", r) == (None, [f"precondition small_big_gap {verdicts.ci_text(verdicts.read_ci(PRE, 'small_big_gap'), '.3f')} "
                                    "(at least 0.1 needed)"])
    assert gate("C2", with_pre({}, small_big_gap=ci(0.05, 0.01)))[0] == "untestable"
    assert gate("C2", with_pre({}, small_big_gap=ci(0.1, 0.01)))[0] == "unknown"
    assert gate("C2", with_pre({}, small_big_gap=None))[0] == "missing"
    assert gate("C1", with_pre({}, small_big_gap=None)) == (None, [])  # C1 needs none
    assert gated(HOLDS, "untestable") == UNTESTABLE and gated(FAILS, "unknown") == INCONCLUSIVE
    assert gated(FAILS, "missing") == FAILS and gated(PARTLY, "missing") == INCONCLUSIVE and gated(HOLDS, None) == HOLDS
    for p in thresholds.PRECONDITIONS:
        assert p.claims and p.testable and p.why and p.name in sc.PRECONDITIONS_TEXT


def test_judge_all_applies_holm_across_the_family():
    """Three tests each at p ~ 0.017: each decides alone at 95%, none survives Holm (0.017 > 0.05 / 3)."""
    intervals = [(0.6, 0.535, 0.665), (0.7, 0.635, 0.765), (0.8, 0.735, 0.865)]
    bounds = [0.53, 0.63, 0.73]

    def run(judge, n):
        judge.claim = "X"
        return [judge.above(t, b) for t, b in list(zip(intervals, bounds))[:n]]

    assert run(Judge(), 3) == [True, True, True]  # the plain 95% level
    assert judge_all(lambda j: run(j, 1))[0] == [True]
    out, judge = judge_all(lambda j: run(j, 3))
    assert out == [None, None, None] and len(judge.family) == 3
    # one strong test beside them: Holm steps down through it, the others still fail alpha/2
    out, _ = judge_all(lambda j: run(j, 3) + [j.above((1.0, 0.9, 1.1), 0.0)])
    assert out == [None, None, None, True]


def test_holm_makes_a_scorecard_verdict_inconclusive_when_the_family_grows():
    c6 = routes05((0.6, 0.065), (0.4, 0.065))  # each centre ~2.1 standard errors beyond its margin
    assert judged(c6, "C6")[0] == HOLDS
    more = {**c6, "03_oracle": oracle(g1=(0.06, 0.05), g2=(0.1, 0.01))}  # C4's k=1 gap at p ~ 0.025
    assert judged(more, "C6")[0] == INCONCLUSIVE
    table = sc.tests_table(with_pre(more))
    assert {"C4", "C6"} <= set(table["claim"]) and not table.set_index("claim").loc["C6", "decided"].any()


def test_a_number_with_seeds_prints_their_range():
    r = routes05((0.6, 0.02), (0.4, 0.02))
    r["05_oracle_routes"]["holdouts"]["english"]["big_centre_ci"]["4"]["seeds"] = [0.58, 0.6, 0.63]
    card = card_of(r)
    assert "(seeds 0.58 to 0.63, n=3)" in card.loc["C6", "measured"]
    assert card.loc["C6", "key"] == "english centre k=4: 0.60 [0.58, 0.62] (seeds 0.58 to 0.63, n=3)"


def test_rules_text_lists_every_rule_margin_and_the_registration():
    for claim in sc.CLAIMS:
        assert claim in sc.RULES_TEXT and len(sc.RULES_TEXT[claim]) > 80
    assert "0.53" in sc.RULES_TEXT["C6"] and "1.05" in sc.RULES_TEXT["C8"] and "shuffled" in sc.RULES_TEXT["C5"]
    assert "placebo" in sc.RULES_TEXT["C4"] and "split-half" in sc.RULES_TEXT["C9"]
    assert "label-free" in sc.RULES_TEXT["C2"] and "Holm" in sc.FAMILY_TEXT
    assert thresholds.RULES_REGISTERED in sc.FAMILY_TEXT and "2026" in thresholds.RULES_REGISTERED


def test_a_nan_interval_is_unknown_and_stays_out_of_the_family():
    nan = float("nan")
    out, judge = judge_all(lambda j: [j.above((nan, nan, nan), 0.0), j.above((1.0, 0.5, 1.5), 0.0)])
    assert out == [None, True] and len(judge.family) == 1
    r = routes05((0.6, 0.02), (0.4, 0.02))
    r["05_oracle_routes"]["holdouts"]["english"]["big_centre_ci"]["8"] = {"value": nan, "low": nan, "high": nan}
    assert judged(r, "C6")[0] == INCONCLUSIVE
    o = oracle()
    o["holdouts"]["english"]["ci"]["best_k"] = {"value": nan, "low": nan, "high": nan}
    assert judged({"03_oracle": o}, "C3")[0] == INCONCLUSIVE


def test_c9_synthetic_precondition_is_read_at_the_plain_level():
    """The big path's lead on compute tokens is a precondition: a wide interval above the margin makes the
    check testable however large the family is (Holm applies to the claim's own tests)."""
    weak = {**routes05((0.6, 0.065), (0.4, 0.065)), "03_oracle": oracle(g1=(0.06, 0.05))}  # tests at p ~ 0.02
    r = {**difficulty(learned=(0.2, 0.18)), **weak}  # p ~ 0.02 too: Holm would not decide it
    assert "synthetic check not testable" not in judged(r, "C9")[1]


def test_the_no_skip_models_contrast_is_not_in_c7s_family():
    c7 = routes05(skips=POLAR)
    family = sc.judged(with_pre(c7))[1].family
    n_skip_tests = 2 * len(POLAR)  # each layer of the judged model against both poles, once
    assert sum(k[0] == "C7" for k in family) <= n_skip_tests
