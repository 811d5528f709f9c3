"""Uncertainty and units of the book's numbers: a window bootstrap and bits per character.

The bootstrap resamples *windows* (evaluation sequences), never tokens: tokens of one window share
their context, so resampling them would pretend to more independent evidence than there is.  Every
statistic is written as a function of per-window resampling counts ``w [B, W]`` (``w = 1`` gives the
estimate on the data), so several quantities computed from the same draws stay paired: the interval
of a difference between two methods scored on the same windows is the interval of the difference,
not of two independent numbers.

Windows cut from one work or file are resampled together (:func:`resample_weights` with ``clusters``: a
cluster bootstrap, since they share an author, a topic, a coding style).  Numbers measured on several
training seeds are combined in one place, :func:`duolib.book.seeds.combine_intervals` (seeds first, then
windows within each drawn seed), from the quantiles here (:func:`t_quantile`, :func:`normal_quantile`).
:func:`holm` turns a family of one-sided bootstrap tests into decisions at a family-wise level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Callable

import numpy as np

#: Bootstrap draws and interval level used throughout the book.
N_BOOT = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile-bootstrap interval ``[low, high]`` at ``level``."""

    value: float
    low: float
    high: float
    level: float = LEVEL
    #: Per-seed point values where the number was measured on several training seeds (else None).
    seeds: tuple[float, ...] | None = None

    def as_dict(self) -> dict:
        d = {"value": float(self.value), "low": float(self.low), "high": float(self.high)}
        if self.seeds is not None:
            d["seeds"] = [float(x) for x in self.seeds]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Interval":
        seeds = d.get("seeds")
        return cls(float(d["value"]), float(d["low"]), float(d["high"]),
                   seeds=None if seeds is None else tuple(float(x) for x in seeds))

    def text(self, fmt: str = "{:.2f}") -> str:
        """``value [low, high]`` formatted with ``fmt``."""
        return f"{fmt.format(self.value)} [{fmt.format(self.low)}, {fmt.format(self.high)}]"


def cluster_index(clusters, n_units: int) -> tuple[np.ndarray, int]:
    """``(index [n_units], n_clusters)``: each unit's cluster as 0..G-1 (in order of first appearance)
    from any hashable labels (e.g. the work or file a window was cut from)."""
    labels = list(clusters)
    if len(labels) != n_units:
        raise ValueError(f"{len(labels)} cluster labels for {n_units} units: give one label per window")
    first: dict = {}
    index = np.array([first.setdefault(x, len(first)) for x in labels], dtype=np.int64)
    return index, len(first)


def resample_weights(n_units: int, n_boot: int = N_BOOT, seed: int = 0, clusters=None) -> np.ndarray:
    """``[n_boot, n_units]`` resampling counts: each row draws ``n_units`` units with replacement (seeded).

    With ``clusters`` (one label per unit) the draw is over clusters: each row draws as many clusters
    as there are, with replacement, and every unit counts as often as its cluster was drawn, so the
    units of one cluster always move together."""
    if n_units < 1 or n_boot < 1:
        raise ValueError(f"need at least one unit and one draw; got n_units={n_units}, n_boot={n_boot}")
    if clusters is not None:
        index, n_clusters = cluster_index(clusters, n_units)
        return resample_weights(n_clusters, n_boot, seed)[:, index]
    rng = np.random.default_rng([seed, n_units])
    idx = rng.integers(0, n_units, size=(n_boot, n_units))
    w = np.zeros((n_boot, n_units))
    np.add.at(w, (np.arange(n_boot)[:, None], idx), 1.0)
    return w


def percentile_interval(value, draws, level: float = LEVEL):
    """The ``level`` percentile interval of ``draws [B, ...]`` around ``value`` (NaN draws ignored):
    an :class:`Interval` for a scalar statistic, else a list of them (one per trailing entry)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level} must be in (0, 1)")
    draws = np.asarray(draws, dtype=np.float64)
    lo, hi = np.nanquantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
    value = np.asarray(value, dtype=np.float64)
    if value.ndim == 0:
        return Interval(float(value), float(lo), float(hi), level)
    return [Interval(float(v), float(a), float(b), level) for v, a, b in zip(value.ravel(), lo.ravel(), hi.ravel())]


def bootstrap(statistic: Callable[[np.ndarray], np.ndarray], n_units: int, *, n_boot: int = N_BOOT,
              level: float = LEVEL, seed: int = 0, clusters=None):
    """Percentile-bootstrap interval of ``statistic`` over ``n_units`` resampled windows.

    ``statistic(w)`` takes resampling counts ``w [B, n_units]`` and returns ``[B]`` (or ``[B, ...]``);
    the estimate is ``statistic(ones)``.  The draws' spread around the estimate is widened by
    ``sqrt(n / (n - 1))``, the factor by which resampling n units understates the variance of a mean
    (without it, 32 windows give ~93% intervals instead of 95%).  With ``clusters`` (one label per
    window: its work or file) whole clusters are resampled and n is the number of clusters.  Returns
    what :func:`percentile_interval` returns."""
    value = np.asarray(statistic(np.ones((1, n_units))))[0]
    draws = np.asarray(statistic(resample_weights(n_units, n_boot, seed, clusters)), dtype=np.float64)
    n = n_units if clusters is None else cluster_index(clusters, n_units)[1]
    if n > 1:
        draws = value + (draws - value) * math.sqrt(n / (n - 1))
    return percentile_interval(value, draws, level)


def window_totals(values, window, n_windows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-window sums of ``values [..., N]`` (last axis: tokens) and token counts, from the window index
    ``window [N]`` of every token: ``(sums [..., W], counts [W])``."""
    values = np.asarray(values, dtype=np.float64)
    window = np.asarray(window, dtype=np.int64)
    if values.shape[-1] != len(window):
        raise ValueError(f"values have {values.shape[-1]} tokens but the window index has {len(window)}")
    W = int(window.max()) + 1 if n_windows is None else int(n_windows)
    onehot = np.zeros((len(window), W))
    onehot[np.arange(len(window)), window] = 1.0
    return values @ onehot, onehot.sum(0)


def mean_interval(values, window, *, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0,
                  clusters=None) -> Interval:
    """Interval of the token mean of ``values [N]`` resampling the windows of ``window [N]`` (whole
    clusters of windows with ``clusters``, one label per window)."""
    sums, counts = window_totals(values, window)
    return bootstrap(lambda w: (w @ sums) / (w @ counts), len(counts), n_boot=n_boot, level=level, seed=seed,
                     clusters=clusters)


# ----------------------------------------------------------------------------- bits per character

def chars_per_token(input_ids, tokenizer) -> float:
    """Characters per *scored* token of an evaluated slice ``[N, T]``: the text of every window's
    predicted tokens (positions 1..T-1) decoded with ``tokenizer``, over their number."""
    ids = np.asarray(input_ids)
    if ids.ndim != 2 or ids.shape[1] < 2:
        raise ValueError(f"input_ids must be [N, T] with T >= 2; got shape {ids.shape}")
    chars = sum(len(tokenizer.decode(row[1:].tolist(), skip_special_tokens=True)) for row in ids)
    return chars / (ids.shape[0] * (ids.shape[1] - 1))


def bits_per_char(loss_nats: float, chars_per_tok: float) -> float:
    """Bits per character from a mean token loss in nats and the slice's characters per token."""
    if not chars_per_tok > 0:
        raise ValueError(f"chars_per_tok={chars_per_tok} must be positive")
    return float(loss_nats) / math.log(2) / chars_per_tok


def ppl_to_bpc(perplexity: float, chars_per_tok: float) -> float:
    """Bits per character of a perplexity (per token) on a slice with ``chars_per_tok``."""
    return bits_per_char(math.log(perplexity), chars_per_tok)


# ----------------------------------------------------------------------------- quantiles (the seed combination's)

def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (numerical: the density integrated
    by Simpson's rule, then bisection; accurate to ~1e-6, all the intervals need)."""
    if not 0.0 < p < 1.0 or df < 1:
        raise ValueError(f"need 0 < p < 1 and df >= 1; got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float) -> float:
        t = np.linspace(0.0, x, 4001)
        f = np.exp(log_c - (df + 1) / 2 * np.log1p(t * t / df))
        h = x / 4000
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def normal_quantile(p: float) -> float:
    """The ``p`` quantile of the standard normal (``statistics.NormalDist``)."""
    return NormalDist().inv_cdf(p)


# ----------------------------------------------------------------------------- tests and Holm

def p_above(draws, bound: float) -> float:
    """One-sided bootstrap p-value of "the quantity lies above ``bound``": the share of draws at or
    below it, with the add-one rule ``(k + 1) / (B + 1)`` so that no finite set of draws gives 0."""
    draws = np.asarray(draws, dtype=np.float64)
    draws = draws[~np.isnan(draws)]
    return float((np.sum(draws <= bound) + 1) / (len(draws) + 1))


def p_from_interval(value: float, low: float, high: float, bound: float, level: float = LEVEL) -> float:
    """One-sided p-value of "the quantity lies on ``value``'s side of ``bound``" read from a stored
    ``level`` interval: the half of the interval on the bound's side gives the standard error
    (``(value - low) / z`` for a bound below the value), the normal approximation of the bootstrap
    distribution gives the rest.  A zero-width interval (a number stored without one) is taken as exact:
    0 off the bound, 1 on it."""
    z = normal_quantile((1 + level) / 2)
    if value == bound:
        return 1.0 if low == high else 0.5
    half = (value - low) if bound < value else (high - value)
    if half <= 0:
        return 0.0
    return float(1.0 - NormalDist().cdf(abs(value - bound) / (half / z)))


def holm(p_values, alpha: float = 1 - LEVEL) -> tuple[list[bool], list[float]]:
    """Holm's step-down correction of a family of tests: ``(rejected, adjusted p)`` in the order given.

    The smallest p is compared with alpha / m, the next with alpha / (m - 1), ...; testing stops at the
    first that fails.  The family-wise error (any true null rejected) stays at most alpha, with no
    assumption on how the tests depend on each other, and never rejects less than Bonferroni."""
    p = np.asarray(list(p_values), dtype=np.float64)
    if np.isnan(p).any() or ((p < 0) | (p > 1)).any():
        raise ValueError(f"p-values must lie in [0, 1]; got {p.tolist()}")
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return [bool(a <= alpha) for a in adjusted], adjusted.tolist()
