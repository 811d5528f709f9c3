"""The window bootstrap (coverage on a synthetic case, pairing, resampling units) and bits per character."""

import math

import numpy as np
import pytest

from duolib import stats


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time():
    """Windows of 16 tokens share a window effect (tokens are not independent); the mean is 2.0."""
    rng = np.random.default_rng(0)
    n_windows, per, hits, reps = 32, 16, 0, 400
    window = np.repeat(np.arange(n_windows), per)
    for rep in range(reps):
        values = 2.0 + np.repeat(rng.normal(0, 1.0, n_windows), per) + rng.normal(0, 0.5, n_windows * per)
        ci = stats.mean_interval(values, window, n_boot=400, seed=rep)
        hits += ci.low <= 2.0 <= ci.high
    assert 0.92 <= hits / reps <= 0.98, hits / reps  # 95% +- 2.5 binomial SEs


def test_resampling_tokens_instead_of_windows_would_undercover():
    """The same data with every token its own unit gives far too narrow intervals: windows matter."""
    rng = np.random.default_rng(1)
    window = np.repeat(np.arange(40), 16)
    hits_tok = 0
    for rep in range(100):
        values = 2.0 + np.repeat(rng.normal(0, 1.0, 40), 16) + rng.normal(0, 0.5, 640)
        ci = stats.mean_interval(values, np.arange(640), n_boot=300, seed=rep)
        hits_tok += ci.low <= 2.0 <= ci.high
    assert hits_tok / 100 < 0.6


def test_bootstrap_is_seeded_paired_and_vector_valued():
    rng = np.random.default_rng(2)
    a = rng.normal(5, 1, 30)
    b = a + 0.1 + rng.normal(0, 0.01, 30)  # b is a shifted copy of a: the paired difference is tight
    stat = lambda w: np.stack([(w @ a) / w.sum(1), (w @ b) / w.sum(1), (w @ (b - a)) / w.sum(1)], axis=1)
    ia, ib, diff = stats.bootstrap(stat, 30, n_boot=500, seed=3)
    assert ia.value == pytest.approx(a.mean()) and ia.low < ia.value < ia.high
    assert diff.low > 0.09 and diff.high < 0.11  # paired: far tighter than the separate intervals
    assert (ib.high - ib.low) > 10 * (diff.high - diff.low)
    assert stats.bootstrap(stat, 30, n_boot=500, seed=3)[0] == ia
    assert stats.bootstrap(stat, 30, n_boot=500, seed=4)[0] != ia
    w = stats.resample_weights(30, 100, 0)
    assert w.shape == (100, 30) and (w.sum(1) == 30).all()


def test_window_totals_and_intervals_round_trip():
    sums, counts = stats.window_totals(np.array([[1.0, 2, 3, 4], [0, 0, 1, 1]]), np.array([0, 0, 1, 1]))
    assert sums.tolist() == [[3, 7], [0, 2]] and counts.tolist() == [2, 2]
    ci = stats.Interval(1.0, 0.5, 2.0)
    assert stats.Interval.from_dict(ci.as_dict()) == ci and ci.text("{:.1f}") == "1.0 [0.5, 2.0]"
    with pytest.raises(ValueError, match="tokens"):
        stats.window_totals(np.ones(3), np.zeros(4))


class CharTokenizer:
    def decode(self, ids, skip_special_tokens=False):
        return "".join("ab"[i % 2] * (i + 1) for i in ids)


def test_bits_per_character():
    ids = np.array([[0, 1, 2], [2, 0, 1]])  # scored tokens 1, 2, 0, 1: 2 + 3 + 1 + 2 characters
    assert stats.chars_per_token(ids, CharTokenizer()) == pytest.approx(8 / 4)
    assert stats.bits_per_char(math.log(2) * 4, 2.0) == pytest.approx(2.0)
    assert stats.ppl_to_bpc(16.0, 2.0) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        stats.chars_per_token(np.zeros((2, 1), dtype=int), CharTokenizer())


# ----------------------------------------------------------------------------- clusters, seeds, Holm

def test_cluster_resampling_moves_the_windows_of_one_work_together():
    clusters = ["a", "a", "b", "c", "c", "c"]
    w = stats.resample_weights(6, 200, 0, clusters=clusters)
    assert w.shape == (200, 6)
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 3] == w[:, 4]).all() and (w[:, 4] == w[:, 5]).all()
    assert (w[:, [0, 2, 3]].sum(1) == 3).all()  # three clusters drawn per row
    assert (w[:, 0] != w[:, 2]).any()
    with pytest.raises(ValueError, match="one label per window"):
        stats.resample_weights(6, 10, 0, clusters=["a"] * 5)


def test_cluster_bootstrap_covers_where_the_window_bootstrap_undercovers():
    """Eight windows per work share a work effect: the window bootstrap pretends to 8x the evidence."""
    rng = np.random.default_rng(5)
    works, per_work, per = 12, 8, 8
    n_windows = works * per_work
    window = np.repeat(np.arange(n_windows), per)
    work_of_window = np.repeat(np.arange(works), per_work)
    hits_cluster = hits_window = 0
    reps = 200
    for rep in range(reps):
        values = (np.repeat(rng.normal(0, 1.0, works), per_work * per) + np.repeat(rng.normal(0, 0.2, n_windows), per)
                  + rng.normal(0, 0.2, n_windows * per))
        c = stats.mean_interval(values, window, n_boot=300, seed=rep, clusters=work_of_window)
        w = stats.mean_interval(values, window, n_boot=300, seed=rep)
        hits_cluster += c.low <= 0 <= c.high
        hits_window += w.low <= 0 <= w.high
    assert 0.88 <= hits_cluster / reps <= 0.99, hits_cluster / reps
    assert hits_window / reps < 0.6, hits_window / reps


def test_t_and_normal_quantiles():
    assert stats.t_quantile(0.975, 2) == pytest.approx(4.3027, abs=1e-3)
    assert stats.t_quantile(0.975, 4) == pytest.approx(2.7764, abs=1e-3)
    assert stats.t_quantile(0.025, 10) == pytest.approx(-2.2281, abs=1e-3)
    assert stats.t_quantile(0.975, 1000) == pytest.approx(1.96, abs=3e-3)
    assert stats.normal_quantile(0.975) == pytest.approx(1.95996, abs=1e-5)
    with pytest.raises(ValueError):
        stats.t_quantile(0.975, 0)


def test_holm_on_constructed_p_values():
    rejected, adjusted = stats.holm([0.01, 0.04, 0.03, 0.005], alpha=0.05)
    # sorted 0.005, 0.01, 0.03, 0.04 against 0.05/4, 0.05/3, 0.05/2, 0.05/1
    assert rejected == [True, False, False, True]
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # step-down stops at the first failure even if a later p would pass its own bound
    assert stats.holm([0.001, 0.03, 0.049], alpha=0.05)[0] == [True, False, False]
    assert stats.holm([0.001, 0.02, 0.04], alpha=0.05)[0] == [True, True, True]
    assert stats.holm([0.5], alpha=0.05)[0] == [False] and stats.holm([], alpha=0.05) == ([], [])
    with pytest.raises(ValueError):
        stats.holm([1.5])


def test_holm_keeps_the_family_wise_error_where_uncorrected_tests_do_not():
    rng = np.random.default_rng(0)
    any_holm = any_raw = 0
    for _ in range(400):
        p = rng.uniform(size=20)  # twenty true nulls
        any_holm += any(stats.holm(p)[0])
        any_raw += (p < 0.05).any()
    assert any_holm / 400 <= 0.08 and any_raw / 400 > 0.5


def test_p_values_from_draws_and_from_stored_intervals():
    rng = np.random.default_rng(0)
    draws = rng.normal(0.3, 0.1, 4000)
    assert stats.p_above(draws, 0.0) < 0.01 and stats.p_above(draws, 0.3) == pytest.approx(0.5, abs=0.03)
    assert stats.p_above(np.full(99, 1.0), 0.0) == pytest.approx(0.01)  # add-one: never 0
    ci = stats.percentile_interval(0.3, draws)
    # the interval's normal reading agrees with the draws' p at a bound two standard errors away
    assert stats.p_from_interval(ci.value, ci.low, ci.high, 0.1) == pytest.approx(stats.p_above(draws, 0.1), abs=0.01)
    assert stats.p_from_interval(0.5, 0.3, 0.9, 0.3) == pytest.approx(0.025, abs=1e-3)  # at the interval's edge
    assert stats.p_from_interval(0.5, 0.3, 0.9, 0.9) == pytest.approx(0.025, abs=1e-3)  # the wide side counts
    assert stats.p_from_interval(2.0, 2.0, 2.0, 1.0) == 0.0 and stats.p_from_interval(1.0, 1.0, 1.0, 1.0) == 1.0
