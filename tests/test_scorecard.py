"""Scorecard verdicts against hand-made result files: each rule can say holds, partly and does not hold."""

import pytest

from duolib.book.scorecard import FAILS, HOLDS, MISSING, PARTLY, scorecard


def oracle(oracle_by_k, best100=10.0, fixed=10.0, all_big=10.0):
    ks = {str(k): v for k, v in enumerate(oracle_by_k)}
    same = {k: best100 for k in ks}
    return {"num_layers": len(oracle_by_k) - 1,
            "holdouts": {"english": {"all_big": all_big, "all_small": 14.0, "oracle": ks, "fixed": {k: fixed for k in ks},
                                     "best100": same, "best100_per_token": same}}}


def verdict(results, claim):
    card = scorecard(results).set_index("claim")
    return card.loc[claim, "verdict"]


@pytest.mark.parametrize("oracle_mid, expected", [(8.0, HOLDS), (9.5, PARTLY), (10.5, FAILS)])
def test_c1_oracle_vs_best_of_100(oracle_mid, expected):
    assert verdict({"03_oracle": oracle([12, 9.5, oracle_mid, 9.6, 10])}, "C1") == expected


@pytest.mark.parametrize("curve, expected", [([12, 9, 8, 9, 10], HOLDS), ([12, 9, 10, 11, 12, 13, 13, 14, 15], PARTLY),
                                             ([12, 11, 10, 9, 8], FAILS)])
def test_c3_u_shape(curve, expected):
    assert verdict({"03_oracle": oracle(curve)}, "C3") == expected


@pytest.mark.parametrize("k1, k2, expected", [(9.0, 8.0, HOLDS), (10.5, 9.0, PARTLY), (11.0, 10.5, FAILS)])
def test_c4_one_big_layer_beats_all_big(k1, k2, expected):
    assert verdict({"03_oracle": oracle([12, k1, k2, 9.6, 10])}, "C4") == expected


@pytest.mark.parametrize("constant, expected", [(8.0, HOLDS), (9.5, PARTLY), (11.0, FAILS)])
def test_c5_schedules(constant, expected):
    results = {"04_schedules": {"holdouts": {"python": {"constant": constant, "falling": 10.0, "rising": 9.0}}}}
    assert verdict(results, "C5") == expected


@pytest.mark.parametrize("centres, expected", [((0.7, 0.5, 0.3), HOLDS), ((0.45, 0.4, 0.3), PARTLY),
                                               ((0.3, 0.5, 0.7), FAILS)])
def test_c6_where_big_layers_go(centres, expected):
    results = {"03_oracle": oracle([1] * 13), "05_oracle_routes": {"holdouts": {"english": {
        "big_centre": dict(zip(("4", "6", "8"), centres)), "skip_fraction": [0.5] * 12}}}}
    assert verdict(results, "C6") == expected


@pytest.mark.parametrize("skips, expected", [([0.9, 0.1, 0.95, 0.05, 0.5, 0.5], HOLDS),
                                             ([0, 0, 0, 1, 1, 1], PARTLY), ([0, 0, 0, 0.6, 0.7, 0.7], FAILS)])
def test_c7_skip_pattern(skips, expected):
    results = {"05_oracle_routes": {"holdouts": {"english": {"big_centre": {}, "skip_fraction": skips}}}}
    assert verdict(results, "C7") == expected


def test_c2_router_near_fixed_far_from_oracle():
    results = {"03_oracle": oracle([12, 9, 6, 9, 10]),
               "07_routers": {"holdouts": {"english": {"router": {"2": 10.1}}}, "late_big_fraction": {"2": 0.6},
                              "early_position_big_ratio": 1.2, "skip_late_fraction": 0.7}}
    assert verdict(results, "C2") == HOLDS
    results["07_routers"]["holdouts"]["english"]["router"]["2"] = 6.1
    assert verdict(results, "C2") == FAILS
    assert verdict(results, "C8") == HOLDS
    results["07_routers"]["late_big_fraction"]["2"] = 0.4
    assert verdict(results, "C8") == PARTLY


def test_c9_and_c10():
    results = {"06_difficulty": {"holdouts": {"english": {"spearman_loss_difficulty": 0.3,
                                                          "high_loss_low_gain_fraction": 0.2}}},
               "08_dense": {"duo": {"0": 20.0, "1": 10.2}, "dense": {"0": 18.0, "1": 10.0},
                            "joint_small": 20.0, "freeze_small": 25.0}}
    assert verdict(results, "C9") == HOLDS and verdict(results, "C10") == HOLDS
    results["06_difficulty"]["holdouts"]["english"]["spearman_loss_difficulty"] = 0.9
    results["08_dense"]["freeze_small"] = 19.0
    assert verdict(results, "C9") == PARTLY and verdict(results, "C10") == PARTLY


def test_missing_results_are_reported_not_guessed():
    assert set(scorecard({})["verdict"]) == {MISSING}
