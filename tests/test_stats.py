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
