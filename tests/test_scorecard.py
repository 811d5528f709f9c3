"""Scorecard verdicts against hand-made result files: every rule can give each of its outcomes,
including "inconclusive" (an interval straddles a boundary) and "not testable" (a precondition fails).
The result files carry the controls and measured preconditions that hold (:data:`PRE`); their own
outcomes are tested in tests/test_rules.py."""

import pytest

from duolib.book import scorecard as sc
from duolib.book import rules, verdicts
from duolib.book.scorecard import scorecard
from duolib.book.verdicts import FAILS, HOLDS, INCONCLUSIVE, MISSING, PARTLY, UNTESTABLE


def ci(value, half=0.0):
    return {"value": value, "low": value - half, "high": value + half}


#: Measured preconditions that hold (capacity well above 0.10 nats, a flat Stage-1 tail).
PRE = {"small_big_gap": ci(0.5, 0.05), "half_skip_cost": ci(0.5, 0.05), "duo_curve_spread": ci(0.5, 0.05),
       "stage1_plateau": ci(0.005, 0.002)}


def with_pre(results, **pre):
    """``results`` plus a step holding the measured preconditions (``PRE``, overridden by ``pre``; None drops one)."""
    measured = {k: v for k, v in {**PRE, **pre}.items() if v is not None}
    return {**results, "02_training": {"preconditions": measured}}


def verdict(results, claim):
    return scorecard(with_pre(results)).set_index("claim").loc[claim, "verdict"]


def card_of(results, **pre):
    return scorecard(with_pre(results, **pre)).set_index("claim")


def oracle(gap=(0.2, 0.01), best_k=(6, 6, 6), g1=(0.05, 0.01), g2=(0.1, 0.01), L=12, beyond=(0.05, 0.005),
           matched=(-0.02, 0.005), controls=True, label_free=9.0):
    """03's results on one holdout; ``beyond``: the oracle's gain beyond the placebo (nats) at every k,
    ``matched``: oracle(k) - oracle(L-k) at every k < L/2; ``controls=False``: results without them."""
    ks = {str(k): 10.0 for k in range(L + 1)}
    d = {"all_big": 10.0, "all_small": 14.0, "oracle": ks, "fixed": ks, "best_of_random": ks, "best_of_random_per_token": ks,
         "ci": {"c1_gap": ci(*gap), "c1_gap_per_token": ci(0.01, 0.005), "best_k": dict(zip(("value", "low", "high"), best_k)),
                "c4_gap_k1": ci(*g1), "c4_gap_k2": ci(*g2)}}
    if controls:
        for k in range(1, L):
            d["ci"] |= {f"oracle_gain_k{k}": ci(0.2, 0.01), f"placebo_gain_k{k}": ci(0.2 - beyond[0], 0.01),
                        f"beyond_placebo_k{k}": ci(*beyond)}
        d["ci"] |= {f"matched_k{k}": ci(*matched) for k in range(1, (L + 1) // 2)}
        d["label_free"] = {str(k): label_free for k in range(L + 1)}
    return {"num_layers": L, "holdouts": {"english": d}}


@pytest.mark.parametrize("gap, expected", [((0.2, 0.05), HOLDS), ((0.05, 0.02), PARTLY), ((-0.01, 0.005), FAILS),
                                           ((0.1, 0.02), INCONCLUSIVE), ((0.01, 0.01), INCONCLUSIVE)])
def test_c1(gap, expected):
    assert verdict({"03_oracle": oracle(gap=gap)}, "C1") == expected


@pytest.mark.parametrize("best_k, expected", [((6, 5, 7), HOLDS), ((2, 2, 3), PARTLY), ((0, 0, 0), FAILS),
                                              ((6, 3, 8), INCONCLUSIVE)])
def test_c3(best_k, expected):
    assert verdict({"03_oracle": oracle(best_k=best_k)}, "C3") == expected


@pytest.mark.parametrize("g1, g2, expected", [((0.05, 0.01), (0.1, 0.0), HOLDS), ((-0.05, 0.01), (0.1, 0.01), PARTLY),
                                              ((-0.05, 0.01), (-0.1, 0.01), FAILS),
                                              ((0.0, 0.02), (0.1, 0.01), INCONCLUSIVE)])
def test_c4(g1, g2, expected):
    assert verdict({"03_oracle": oracle(g1=g1, g2=g2)}, "C4") == expected


def schedules(fall, rise, fall_shuffled=(0.04, 0.005), rise_shuffled=(0.03, 0.005), controls=True):
    d = {"constant": 9.0, "falling": 10.0, "rising": 9.5, "shuffled": 9.8,
         "ci": {"falling_over_constant": ci(*fall), "rising_over_constant": ci(*rise),
                "shuffled_over_constant": ci(0.02, 0.01)}}
    if controls:
        d["ci"] |= {"falling_over_shuffled": ci(*fall_shuffled), "rising_over_shuffled": ci(*rise_shuffled)}
    return {"04_schedules": {"holdouts": {"python": d}}}


@pytest.mark.parametrize("fall, rise, expected", [((0.05, 0.01), (0.03, 0.01), HOLDS), ((0.05, 0.01), (-0.03, 0.01), PARTLY),
                                                  ((-0.05, 0.01), (-0.03, 0.01), FAILS),
                                                  ((0.05, 0.01), (0.0, 0.02), INCONCLUSIVE)])
def test_c5(fall, rise, expected):
    assert verdict(schedules(fall, rise), "C5") == expected


FLAT = [ci(0.5, 0.05), ci(0.4, 0.05), ci(0.6, 0.05), ci(0.5, 0.05)]
POLAR = [ci(0.9, 0.05), ci(0.1, 0.05), ci(0.5, 0.05), ci(0.5, 0.05)]


def study(skips, p_skip, model):
    return {"model": model, "p_skip": p_skip, "n_skip": 2, "holdouts": {"english": {
        "skip_fraction": [s["value"] for s in skips], "skip_fraction_ci": skips, "oracle": 9.0, "fixed": 11.0,
        "early_exit": 12.0, "all_big": 10.0}}}


def routes05(lo=(0.7, 0.05), hi=(0.3, 0.05), skips=None, p_skip=0.2, no_skip=FLAT):
    """05_oracle_routes with the {big, skip} study of the skip-trained model (``skips``; None: none in the run)
    and of the no-skip model (``no_skip``)."""
    studies = {"no_skip": study(no_skip, 0.0, "stage1")}
    if skips is not None:
        studies["skip_trained"] = study(skips, p_skip, "stage1-skip")
    return {"03_oracle": oracle(), "05_oracle_routes": {"skip_study": studies, "holdouts": {"english": {
        "big_centre": {"4": lo[0], "8": hi[0]}, "big_centre_ci": {"4": ci(*lo), "8": ci(*hi)}}}}}


@pytest.mark.parametrize("lo, hi, expected", [((0.7, 0.05), (0.3, 0.05), HOLDS), ((0.7, 0.05), (0.6, 0.05), PARTLY),
                                              ((0.3, 0.05), (0.7, 0.05), FAILS),
                                              ((0.52, 0.05), (0.48, 0.05), INCONCLUSIVE)])
def test_c6_flat_null_is_inconclusive_not_partly(lo, hi, expected):
    assert verdict(routes05(lo, hi), "C6") == expected


@pytest.mark.parametrize("skips, p_skip, expected", [
    (POLAR, 0.2, HOLDS),
    ([ci(0.1, 0.05), ci(0.1, 0.05), ci(0.9, 0.05), ci(0.9, 0.05)], 0.2, PARTLY),  # polarised but early exit
    (FLAT, 0.2, FAILS),
    ([ci(0.74, 0.05), ci(0.1, 0.05), ci(0.5, 0.05), ci(0.5, 0.05)], 0.2, INCONCLUSIVE),
    (POLAR, 0.0, UNTESTABLE),  # the "skip" model was not trained with skip
    (None, 0.2, UNTESTABLE),  # no skip-trained model in the run
])
def test_c7(skips, p_skip, expected):
    assert verdict(routes05(skips=skips, p_skip=p_skip), "C7") == expected


@pytest.mark.parametrize("skip_trained, no_skip, expected", [(FLAT, POLAR, FAILS), (POLAR, FLAT, HOLDS),
                                                              (None, POLAR, UNTESTABLE), (None, FLAT, UNTESTABLE)])
def test_c7_is_judged_on_the_skip_trained_model_only(skip_trained, no_skip, expected):
    card = card_of(routes05(skips=skip_trained, no_skip=no_skip))
    assert card.loc["C7", "verdict"] == expected
    measured = card.loc["C7", "measured"]
    if skip_trained is None:
        assert "no skip-trained model" in measured
    else:
        assert "judged on the skip-trained model stage1-skip (p_skip = 0.2)" in measured
        assert f"no-skip model stage1 (not judged) would give '{HOLDS if no_skip is POLAR else FAILS}'" in measured
        # every skip rate the verdict rests on is shown with its interval, and the key is the highest one
        top = max(skip_trained, key=lambda x: x["value"])
        assert f"highest {top['value']:.2f} [{top['low']:.2f}, {top['high']:.2f}]" in measured
        assert card.loc["C7", "key"] == f"english highest skip rate: {top['value']:.2f} [{top['low']:.2f}, {top['high']:.2f}]"


def test_c7_without_a_skip_study_is_not_testable_and_without_05_not_measured():
    results = routes05(skips=POLAR)
    del results["05_oracle_routes"]["skip_study"]
    assert verdict(results, "C7") == UNTESTABLE
    assert verdict({"03_oracle": oracle()}, "C7") == MISSING


def test_skip_models_names_the_model_of_each_skip_verdict():
    table = rules.skip_models({**routes05(skips=POLAR), **routers()}).set_index("claim")
    assert table.loc["C7", "model"] == "stage1-skip" and table.loc["C7", "p_skip"] == 0.2
    assert table.loc["C8", "model"] == "stage1-skip" and table.loc["C8", "p_skip"] == 0.5
    assert rules.skip_models(routers(p_skip=0.0)).set_index("claim").loc["C8", "model"] == "none"
    assert rules.skip_models(routes05(skips=None)).set_index("claim").loc["C7", "model"] == "none"


def routers(position=(0.8, 0.05), learned=(-0.1, 0.02), late=(0.6, 0.05), ratio=(1.2, 0.1), skip=(0.7, 0.05), p_skip=0.5,
            skip_learned=(-0.1, 0.02), noskip_skip=(0.2, 0.05)):
    """07's results: the budget routers on a model without skip (one budget, k=6); the skip routers' C8
    share on the skip-trained model (``p_skip``; 0: no such model) and, for contrast, on the no-skip model."""
    c2 = {"router": ci(10.0), "random": ci(11.0), "router_minus_random": ci(*learned), "position": ci(*position)}
    out = {"03_oracle": oracle(),
           "07_routers": {"p_skip": 0.0, "holdouts": {"english": {"router": {"6": 10.0}, "c2": {"6": c2}}},
                          "late_big_fraction_ci": {"6": ci(*late)}, "early_position_big_ratio_ci": ci(*ratio),
                          "skip_late_fraction_ci": ci(*noskip_skip)}}
    if p_skip > 0:
        out["07_routers"]["skip_model"] = {"model": "stage1-skip", "p_skip": p_skip, "skip_late_fraction_ci": ci(*skip),
                                           "router_minus_random_ci": ci(*skip_learned)}
    return out


@pytest.mark.parametrize("position, learned, expected", [
    ((0.8, 0.05), (-0.1, 0.02), HOLDS), ((0.58, 0.03), (-0.1, 0.02), PARTLY), ((0.2, 0.05), (-0.1, 0.02), FAILS),
    ((0.66, 0.05), (-0.1, 0.02), INCONCLUSIVE), ((0.8, 0.05), (0.05, 0.02), UNTESTABLE),
    ((0.8, 0.05), (-0.01, 0.02), INCONCLUSIVE)])
def test_c2_router_must_beat_random_routing(position, learned, expected):
    card = card_of(routers(position, learned))
    assert card.loc["C2", "verdict"] == expected
    if expected == UNTESTABLE:
        assert "router did not learn" in card.loc["C2", "measured"]


@pytest.mark.parametrize("kw, expected", [({}, HOLDS), ({"ratio": (0.8, 0.1)}, PARTLY),
                                          ({"late": (0.4, 0.05), "ratio": (0.8, 0.1), "skip": (0.3, 0.05)}, FAILS),
                                          ({"late": (0.5, 0.05)}, INCONCLUSIVE)])
def test_c8(kw, expected):
    assert verdict(routers(**kw), "C8") == expected


def test_c8_skip_part_without_a_skip_model_is_not_a_failure():
    card = card_of(routers(skip=(0.1, 0.05), p_skip=0.0))
    assert card.loc["C8", "verdict"] == HOLDS and "not testable" in card.loc["C8", "measured"]


def test_c8_skip_part_reads_the_skip_trained_models_routers():
    # the no-skip model's skip routers skip early layers; only the skip-trained model's count
    assert verdict(routers(skip=(0.7, 0.05), noskip_skip=(0.1, 0.05)), "C8") == HOLDS
    assert verdict(routers(skip=(0.3, 0.05), noskip_skip=(0.9, 0.05)), "C8") == PARTLY


def test_c8_skip_router_no_better_than_random_leaves_the_skip_part_untested():
    card = card_of(routers(skip=(0.1, 0.05), skip_learned=(0.05, 0.02)))
    assert card.loc["C8", "verdict"] == HOLDS and "skip router is no better than random" in card.loc["C8", "measured"]
    assert verdict(routers(skip=(0.1, 0.05), skip_learned=(-0.01, 0.02)), "C8") == INCONCLUSIVE


@pytest.mark.parametrize("learned, expected", [((0.05, 0.02), UNTESTABLE), ((-0.01, 0.02), INCONCLUSIVE)])
def test_c8_needs_routers_that_beat_random_routing(learned, expected):
    # every part would hold, but the router is no better (or not clearly better) than random routing
    card = card_of(routers(learned=learned))
    assert card.loc["C8", "verdict"] == expected
    if expected == UNTESTABLE:
        assert "did not learn" in card.loc["C8", "measured"]


def test_c8_judges_only_the_budgets_whose_router_learned():
    r = routers(late=(0.6, 0.05))
    c2 = r["07_routers"]["holdouts"]["english"]["c2"]
    c2["4"] = {**c2["6"], "router_minus_random": ci(0.1, 0.02)}  # k=4 did not learn ...
    r["07_routers"]["late_big_fraction_ci"]["4"] = ci(0.2, 0.05)  # ... and would fail the late-layer part
    card = card_of(r)
    assert card.loc["C8", "verdict"] == HOLDS and "left out" in card.loc["C8", "measured"]
    c2["4"]["router_minus_random"] = ci(-0.1, 0.02)  # once it learned, its early layers count
    assert verdict(r, "C8") == PARTLY


def difficulty(rho=(0.3, 0.05), ce=(0.5, 0.1), cn=(0.4, 0.1), synthetic=True, learned=(0.8, 0.1), half=(0.8, 0.05)):
    d = {"06_difficulty": {"holdouts": {"english": {"spearman_ci": ci(*rho)}}}}
    if half is not None:
        d["06_difficulty"]["holdouts"]["english"]["split_half_ci"] = ci(*half)
    if synthetic:
        d["06_difficulty"]["synthetic"] = {"gain_ci": {"compute_minus_easy": ci(*ce), "compute_minus_noise": ci(*cn)}}
        if learned is not None:
            d["06_difficulty"]["synthetic"]["small_minus_big_ci"] = {"compute": ci(*learned)}
    return d


@pytest.mark.parametrize("kw, expected", [({}, HOLDS), ({"synthetic": False}, PARTLY), ({"rho": (0.9, 0.05)}, FAILS),
                                          ({"cn": (-0.2, 0.1)}, FAILS), ({"rho": (0.7, 0.05)}, INCONCLUSIVE),
                                          ({"ce": (0.05, 0.1)}, INCONCLUSIVE), ({"rho": (-0.9, 0.05)}, FAILS)])
def test_c9_needs_the_synthetic_mechanism(kw, expected):
    card = card_of(difficulty(**kw))
    assert card.loc["C9", "verdict"] == expected
    if kw.get("cn") == (-0.2, 0.1):
        assert "mechanism check failed" in card.loc["C9", "measured"]


@pytest.mark.parametrize("learned", [(0.05, 0.1), (-0.3, 0.1), None])
def test_c9_synthetic_check_needs_a_model_whose_big_path_learned_the_compute_tokens(learned):
    """Big path not better than small on compute tokens (or not measured): the ground-truth check is not testable,
    even where its gain differences would fail; the not-loss part alone gives partly."""
    card = card_of(difficulty(cn=(-0.2, 0.1), learned=learned))
    assert card.loc["C9", "verdict"] == PARTLY
    assert "synthetic check not testable" in card.loc["C9", "measured"]
    assert "mechanism check failed" not in card.loc["C9", "measured"]


def dense(steps=(100, 100, 100), unigram=1000.0, gap_hi=(0.01, 0.005), freeze=30.0):
    return {"08_dense": {"steps": dict(zip(("duo", "dense", "freeze"), steps)), "unigram": unigram,
                         "duo": {"0": 30.0, "1": 20.2}, "dense": {"0": 25.0, "1": 20.0},
                         "gap_ci": {"0": ci(0.2, 0.02), "1": ci(*gap_hi)}, "joint_small": 28.0,
                         "freeze_small": freeze}}


@pytest.mark.parametrize("kw, expected", [({}, HOLDS), ({"freeze": 25.0}, PARTLY),
                                          ({"gap_hi": (0.3, 0.02), "freeze": 25.0}, FAILS),
                                          ({"gap_hi": (0.2, 0.05)}, INCONCLUSIVE),
                                          ({"steps": (100, 100, 50)}, UNTESTABLE), ({"unigram": 50.0}, UNTESTABLE)])
def test_c10_needs_equal_steps_and_models_clearly_above_unigram(kw, expected):
    assert verdict(dense(**kw), "C10") == expected


@pytest.mark.parametrize("approach, expected", [((0.1, 0.05), HOLDS), ((-0.1, 0.05), PARTLY), ((0.02, 0.05), INCONCLUSIVE)])
def test_c10_uses_the_paired_interval_of_the_shrinking_gap(approach, expected):
    """Separate gap intervals at the two ends overlap (their widest difference straddles 0), but the paired
    difference from the same resampled windows decides; without it the rule stays inconclusive."""
    results = dense(gap_hi=(0.1, 0.15))
    assert verdict(results, "C10") == INCONCLUSIVE
    results["08_dense"]["approach_ci"] = ci(*approach)
    assert verdict(results, "C10") == expected
    assert "gap shrinks by" in card_of(results).loc["C10", "measured"]


@pytest.mark.parametrize("weak", ["freeze_small", "joint_small"])
def test_c10_is_not_testable_when_one_model_misses_the_unigram_bar(weak):
    results = dense(unigram=100.0)  # bar 50: every model of dense() is below it
    assert verdict(results, "C10") == HOLDS
    results["08_dense"][weak] = 50.5
    card = card_of(results)
    assert card.loc["C10", "verdict"] == UNTESTABLE
    assert "not clearly above unigram: " + ("freeze" if weak == "freeze_small" else "joint") in card.loc["C10", "measured"]


def test_missing_results_are_reported_not_guessed_and_rules_are_printed():
    card = scorecard({})
    assert set(card["verdict"]) == {MISSING}
    assert list(card.columns) == ["claim", "finding", "verdict", "rule", "measured", "key"]
    assert all(card["rule"].str.len() > 40) and "10%" in card.set_index("claim").loc["C1", "rule"]


def test_combining_holdouts():
    assert verdicts.combine([HOLDS, HOLDS]) == HOLDS and verdicts.combine([HOLDS, FAILS]) == PARTLY
    assert verdicts.combine([HOLDS, INCONCLUSIVE]) == INCONCLUSIVE and verdicts.combine([HOLDS, UNTESTABLE]) == HOLDS
    assert verdicts.combine([UNTESTABLE, UNTESTABLE]) == UNTESTABLE
    assert verdicts.combine([HOLDS, PARTLY, INCONCLUSIVE]) == PARTLY and verdicts.combine([MISSING]) == MISSING


def test_a_number_without_an_interval_says_so():
    results = dense()
    del results["08_dense"]["gap_ci"]
    card = card_of(results)
    assert card.loc["C10", "verdict"] == HOLDS and "(no interval)" in card.loc["C10", "measured"]
    assert "[" in card_of(dense()).loc["C10", "measured"]


def test_the_scorecard_table_folds_rules_and_numbers_under_each_claim_and_colours_verdicts():
    from duolib.book.tables import VERDICT_COLOURS, scorecard_html

    card = scorecard({})  # nothing measured: every claim present, each "not measured"
    page = scorecard_html(card)
    assert page.count("<details>") == len(card) == 10
    for r in card.itertuples():
        assert f"<td>{r.claim}</td>" in page and f"background-color: {VERDICT_COLOURS[r.verdict]}" in page
    assert "<p><b>Rule:</b>" in page and "<b>Measured:</b>" in page
    assert set(VERDICT_COLOURS) == {FAILS, HOLDS, INCONCLUSIVE, MISSING, PARTLY, UNTESTABLE}


def test_a_key_number_shows_the_seed_range_only_with_several_seeds():
    one = verdicts.read_ci({"x": {"value": 1.0, "low": 0.5, "high": 1.5, "seeds": [1.0]}}, "x")
    three = verdicts.read_ci({"x": {"value": 1.0, "low": 0.5, "high": 1.5, "seeds": [0.9, 1.0, 1.2]}}, "x")
    assert verdicts.ci_text(one) == "1.00 [0.50, 1.50]"
    assert verdicts.ci_text(three) == "1.00 [0.50, 1.50] (seeds 0.90 to 1.20, n=3)"


@pytest.mark.parametrize("combined, seeds, expected", [
    (HOLDS, [HOLDS, HOLDS, HOLDS], HOLDS),
    (HOLDS, [HOLDS, INCONCLUSIVE, HOLDS], INCONCLUSIVE),  # C1 on both runs of session 13
    (HOLDS, [HOLDS, PARTLY, HOLDS], INCONCLUSIVE),
    (PARTLY, [HOLDS, HOLDS, HOLDS], PARTLY),  # every seed supports at least the part
    (PARTLY, [PARTLY, HOLDS, PARTLY], PARTLY),
    (PARTLY, [PARTLY, FAILS, PARTLY], INCONCLUSIVE),
    (FAILS, [FAILS, INCONCLUSIVE, FAILS], INCONCLUSIVE),  # C5 with AVX2 kernels
    (FAILS, [FAILS, FAILS, FAILS], FAILS),
    (FAILS, [FAILS, UNTESTABLE, FAILS], INCONCLUSIVE),
    (INCONCLUSIVE, [HOLDS, HOLDS, HOLDS], INCONCLUSIVE),  # never made stronger
    (UNTESTABLE, [HOLDS, UNTESTABLE, HOLDS], UNTESTABLE),
    (MISSING, [HOLDS, HOLDS], MISSING),
    (HOLDS, [INCONCLUSIVE], HOLDS),  # one seed: nothing to agree
])
def test_a_decisive_verdict_stands_only_when_every_seed_supports_it(combined, seeds, expected):
    assert verdicts.seed_agreement(combined, seeds) == expected


def test_seeded_scorecard_states_the_agreed_verdict_and_who_disagreed(monkeypatch):
    import pandas as pd

    said = {0: {"C1": HOLDS, "C5": FAILS}, 1: {"C1": INCONCLUSIVE, "C5": FAILS}, 2: {"C1": HOLDS, "C5": FAILS}}

    def fake_scorecard(results):  # the combined tree has the mean seed, -1 marks it here
        s = results["run"]["seed"]
        v = {"C1": HOLDS, "C5": FAILS} if s not in said else said[s]
        return pd.DataFrame([dict(claim=c, verdict=v[c], measured=f"numbers of {c}", key="") for c in ("C1", "C5")])

    monkeypatch.setattr(sc, "scorecard", fake_scorecard)
    monkeypatch.setattr(sc, "combine_seeds", lambda trees: {"run": {"seed": -1}})
    card, by_seed = sc.seeded_scorecard([{"run": {"seed": s}} for s in range(3)])
    card = card.set_index("claim")
    assert card.at["C1", "verdict"] == INCONCLUSIVE and card.at["C5", "verdict"] == FAILS
    assert "seeds disagree (seed 0 holds, seed 1 inconclusive, seed 2 holds)" in card.at["C1", "measured"]
    assert card.at["C5", "measured"] == "numbers of C5"
    assert by_seed.loc["C1"].tolist() == [HOLDS, INCONCLUSIVE, HOLDS, INCONCLUSIVE, HOLDS]
    assert list(by_seed.columns) == ["combined", "verdict", "seed 0", "seed 1", "seed 2"]
