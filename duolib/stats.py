"""Uncertainty and units of the book's numbers: a window bootstrap and bits per character.

The bootstrap resamples *windows* (evaluation sequences), never tokens: tokens of one window share
their context, so resampling them would pretend to more independent evidence than there is.  Every
statistic is written as a function of per-window resampling counts ``w [B, W]`` (``w = 1`` gives the
estimate on the data), so several quantities computed from the same draws stay paired: the interval
of a difference between two methods scored on the same windows is the interval of the difference,
not of two independent numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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

    def as_dict(self) -> dict:
        return {"value": float(self.value), "low": float(self.low), "high": float(self.high)}

    @classmethod
    def from_dict(cls, d: dict) -> "Interval":
        return cls(float(d["value"]), float(d["low"]), float(d["high"]))

    def text(self, fmt: str = "{:.2f}") -> str:
        """``value [low, high]`` formatted with ``fmt``."""
        return f"{fmt.format(self.value)} [{fmt.format(self.low)}, {fmt.format(self.high)}]"


def resample_weights(n_units: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """``[n_boot, n_units]`` resampling counts: each row draws ``n_units`` units with replacement (seeded)."""
    if n_units < 1 or n_boot < 1:
        raise ValueError(f"need at least one unit and one draw; got n_units={n_units}, n_boot={n_boot}")
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
              level: float = LEVEL, seed: int = 0):
    """Percentile-bootstrap interval of ``statistic`` over ``n_units`` resampled windows.

    ``statistic(w)`` takes resampling counts ``w [B, n_units]`` and returns ``[B]`` (or ``[B, ...]``);
    the estimate is ``statistic(ones)``.  The draws' spread around the estimate is widened by
    ``sqrt(n / (n - 1))``, the factor by which resampling n units understates the variance of a mean
    (without it, 32 windows give ~93% intervals instead of 95%).  Returns what
    :func:`percentile_interval` returns."""
    value = np.asarray(statistic(np.ones((1, n_units))))[0]
    draws = np.asarray(statistic(resample_weights(n_units, n_boot, seed)), dtype=np.float64)
    if n_units > 1:
        draws = value + (draws - value) * math.sqrt(n_units / (n_units - 1))
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


def mean_interval(values, window, *, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> Interval:
    """Interval of the token mean of ``values [N]`` resampling the windows of ``window [N]``."""
    sums, counts = window_totals(values, window)
    return bootstrap(lambda w: (w @ sums) / (w @ counts), len(counts), n_boot=n_boot, level=level, seed=seed)


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
