"""Prose words follow the numbers shown: constructed numbers on both sides of every boundary."""

from __future__ import annotations

import numpy as np
import pytest

from duolib.book.phrasing import ABOVE, MORE_OFTEN, WORSE, compare, direction, ordering, relative_change, signed, times_as


def test_direction_uses_the_displayed_precision():
    assert direction(1.004, 1.0) == 1
    assert direction(1.004, 1.0, digits=2) == 0  # shows as 1.00: equal
    assert direction(0.996, 1.0, digits=2) == 0  # shows as 1.00 too
    assert direction(0.994, 1.0, digits=2) == -1  # shows as 0.99
    assert direction(1.006, 1.0, digits=2) == 1
    assert direction(5.0, 4.9, tol=0.2) == 0 and direction(5.0, 4.7, tol=0.2) == 1


def test_compare_picks_the_word_from_the_number():
    assert compare(3.0, 2.0) == "higher"
    assert compare(2.0, 3.0) == "lower"
    assert compare(2.0, 2.0) == "equal"
    assert compare(1.5, 2.0, ABOVE) == "below"
    assert compare(100.4, 100.0, WORSE, digits=0) == "as good as"  # both show as 100
    assert compare(101.2, 100.0, WORSE, digits=1) == "worse than"
    assert compare(99.96, 100.0, WORSE, digits=1) == "as good as"


def test_times_as_never_contradicts_its_number():
    assert times_as(1.32, "the others") == "1.32 times as often as the others, i.e. more often"
    assert times_as(0.8, "the others") == "0.80 times as often as the others, i.e. less often"
    # the case: a ratio just below 1 that shows as 1.00
    phrase = times_as(0.9981, "the others")
    assert phrase == "as often as the others (ratio 1.00)" and "less" not in phrase and "more" not in phrase
    assert times_as(1.0042) == "as often (ratio 1.00)"
    assert times_as(0.999, digits=3) == "0.999 times as often, i.e. less often"
    for r in [0.0, 0.5, 0.994, 0.995, 0.996, 1.0, 1.004, 1.005, 1.006, 2.0]:
        p = times_as(r)
        shown = f"{r:.2f}"
        assert ("more often" in p) == (float(shown) > 1), (r, p)
        assert ("less often" in p) == (float(shown) < 1), (r, p)
        assert shown in p


def test_relative_change_reads_its_sign():
    assert relative_change(90.0, 100.0) == "10.0% lower"
    assert relative_change(104.0, 100.0) == "4.0% higher"
    assert relative_change(100.04, 100.0) == "equal"
    assert relative_change(80.0, 100.0, digits=0, words=WORSE) == "20% better than"


def test_ordering_shows_ties_as_ties():
    assert ordering({"falling": 3.2, "rising": 3.1, "constant": 3.0}) == "constant < rising < falling"
    assert ordering({"a": 2.0, "b": 1.0, "c": 1.0}) == "b = c < a"
    assert ordering({"a": 2.004, "b": 2.001}, digits=2) == "b = a"


@pytest.mark.parametrize("bad", [float("nan"), None, "1.0", True])
def test_non_numbers_are_refused(bad):
    with pytest.raises(ValueError, match="must be a number"):
        compare(bad, 1.0)
    with pytest.raises(ValueError):
        times_as(bad)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="three words"):
        compare(1.0, 2.0, ("up", "down"))
    with pytest.raises(ValueError, match="tol"):
        direction(1.0, 2.0, tol=-1)
    with pytest.raises(ValueError, match="at least 0"):
        times_as(-0.5)
    with pytest.raises(ValueError, match="non-zero reference"):
        relative_change(1.0, 0.0)
    assert MORE_OFTEN[2] == "as often"
    assert compare(np.float32(2.5), np.int64(2)) == "higher"  # numpy numbers from tables are numbers too


def test_signed_never_prints_a_negative_saving():
    words = ("saves {} of the time", "takes {} longer", "takes as long")
    assert signed(0.27, *words) == "saves 27% of the time"
    assert signed(-0.05, *words) == "takes 5% longer"
    assert signed(0.004, *words) == "takes as long"  # shows as 0%
    assert signed(-0.004, *words) == "takes as long"
    assert signed(0.006, *words) == "saves 1% of the time"
    assert signed(-1.5, "{} up", "{} down", "flat", fmt="{:.1f}") == "1.5 down"
    assert signed(0.04, "{} up", "{} down", "flat", fmt="{:.1f}") == "flat"


def test_interval_reading_follows_the_scorecards_zones():
    from duolib.book.phrasing import interval_reading

    words = ("worse", "better", "undecided")
    assert interval_reading({"value": 0.1, "low": 0.01, "high": 0.2}, *words) == "worse"
    assert interval_reading({"value": -0.1, "low": -0.2, "high": 0.0}, *words) == "better"
    assert interval_reading({"value": 0.1, "low": -0.01, "high": 0.2}, *words) == "undecided"
    assert interval_reading({"value": 1.1, "low": 1.05, "high": 1.2}, *words, bound=1.0) == "worse"
    with pytest.raises(ValueError, match="low=0.3 is above high=0.2"):
        interval_reading({"value": 0.25, "low": 0.3, "high": 0.2}, *words)
    with pytest.raises(ValueError, match="must be a number"):
        interval_reading({"value": 0.0, "low": float("nan"), "high": 0.2}, *words)
