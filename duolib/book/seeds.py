"""Replication over training seeds: where each seed's run lives, and one results tree for all of them.

One trained model is an anecdote: a change of seed, or only of the CPU's floating-point rounding, moves the
numbers the claims read from the model by more than the window bootstrap of one model shows.  The book
therefore reruns every chapter marked ``replicate`` in :data:`duolib.book.pipeline.STEPS` once per training
seed, each seed in its own run folder (:func:`seed_dir`): seed 0 is the book's run folder itself, seed ``s``
lives in ``run_dir/seeds/seed<s>``, with its own trained models, loss matrices and ``results/``.

:func:`combine_seeds` turns the seeds' result trees into one tree of the same shape, which the scorecard's
rules read unchanged:

- an interval leaf ``{"value", "low", "high"}`` becomes the seed-then-window interval (below), with the
  per-seed point values added as ``"seeds"``;
- any other number becomes the mean over the seeds that have it;
- a list (e.g. one interval per layer) is combined element by element when every seed that has it has one of
  the same length; otherwise, like everything else (strings, booleans), it is taken from seed 0.

Seed-then-window interval [ours]: each bootstrap draw first resamples the seeds with replacement, then, for
each drawn seed, draws one value from that seed's window-bootstrap distribution, and averages them.  The
result files keep each seed's interval, not its draws, so a seed's window distribution is taken as the
two-piece normal that reproduces its point value and both interval ends (each half's spread is that side's
distance / z of the level).  With a handful of seeds a bootstrap over seeds under-covers whenever the seeds
differ by more than their windows do (it sees the between-seed spread through three values;
``tests/test_seeds.py`` measures it), so the combined interval is the union of that interval and the
Student-t interval of the seeds' point values (``S - 1`` degrees of freedom, exact for normally distributed
seed effects): never narrower than either, it keeps its level in both regimes.  With one seed the combined
interval is that seed's own.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ..stats import LEVEL, N_BOOT, normal_quantile, t_quantile

#: Folder (inside the book's run folder) holding the run folders of the seeds after the first.
SEEDS_DIR = "seeds"
_INTERVAL = frozenset({"value", "low", "high"})


def seed_dir(run_dir: str | os.PathLike, seed: int) -> Path:
    """The run folder of training seed ``seed``: the book's run folder for seed 0, else ``run_dir/seeds/seed<s>``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative integer")
    return Path(run_dir) if seed == 0 else Path(run_dir) / SEEDS_DIR / f"seed{seed}"


def seed_list(n_seeds: int) -> list[int]:
    """The training seeds of a book with ``n_seeds`` seeds: ``0 .. n_seeds - 1``."""
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds < 1:
        raise ValueError(f"seeds={n_seeds!r} must be a positive number of training seeds (the profile's "
                         f"book.seeds)")
    return list(range(n_seeds))


def is_interval(node) -> bool:
    return isinstance(node, dict) and _INTERVAL <= set(node) and all(
        isinstance(node[k], (int, float)) and not isinstance(node[k], bool) for k in _INTERVAL)


def seed_draws(intervals: list[dict], n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> np.ndarray:
    """``[n_boot]`` seed-then-window draws of the mean over seeds of one quantity (module docstring).

    ``intervals``: one ``{"value", "low", "high"}`` per seed.  Draw ``b`` resamples the seeds with
    replacement, draws one window-level value for each drawn seed and averages them."""
    if not intervals:
        raise ValueError("need the interval of at least one seed")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level} must be in (0, 1)")
    z = normal_quantile(0.5 + level / 2)
    v = np.array([float(i["value"]) for i in intervals])
    lo = np.array([float(i["low"]) for i in intervals])
    hi = np.array([float(i["high"]) for i in intervals])
    if np.any(~np.isfinite(v)):
        return np.full(n_boot, np.nan)
    down, up = np.maximum(v - lo, 0.0) / z, np.maximum(hi - v, 0.0) / z
    rng = np.random.default_rng([seed, len(intervals)])
    pick = rng.integers(0, len(intervals), size=(n_boot, len(intervals)))
    e = rng.standard_normal(size=pick.shape)
    values = v[pick] + np.where(e < 0, e * down[pick], e * up[pick])
    return values.mean(axis=1)


def combine_intervals(intervals: list[dict], n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> dict:
    """One interval dict from the seeds' intervals of one quantity: value = mean of the seeds' values, low /
    high = percentiles of :func:`seed_draws`, ``seeds`` = the seeds' values (in seed order)."""
    values = [float(i["value"]) for i in intervals]
    if len(intervals) == 1:
        return {**{k: float(intervals[0][k]) for k in _INTERVAL}, "seeds": values}
    draws = seed_draws(intervals, n_boot, seed, level)
    if np.isnan(draws).any():
        nan = float("nan")
        return {"value": nan, "low": nan, "high": nan, "seeds": values}
    a = (1 - level) / 2
    mean = float(np.mean(values))
    half = t_quantile(0.5 + level / 2, len(values) - 1) * float(np.std(values, ddof=1)) / math.sqrt(len(values))
    return {"value": mean, "low": min(float(np.quantile(draws, a)), mean - half),
            "high": max(float(np.quantile(draws, 1 - a)), mean + half), "seeds": values}


def combine_seeds(trees: list[dict], n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL):
    """One result tree from the seeds' trees (seed 0 first; module docstring).  A key missing from some seeds is
    combined over the seeds that have it; a key missing from seed 0 is left out."""
    if not trees:
        raise ValueError("need the results of at least one seed")
    return _combine(trees, n_boot, seed, level, path=())


def _combine(nodes: list, n_boot: int, seed: int, level: float, path: tuple):
    first = nodes[0]
    if is_interval(first):
        same = [n for n in nodes if is_interval(n)]
        # each interval its own stream of draws, fixed by its place in the tree (stable across runs)
        return combine_intervals(same, n_boot, seed + _path_hash(path), level)
    if isinstance(first, dict):
        return {k: _combine([n[k] for n in nodes if isinstance(n, dict) and k in n], n_boot, seed, level,
                            path + (str(k),)) for k in first}
    if isinstance(first, list):
        lists = [n for n in nodes if isinstance(n, list)]
        if all(len(n) == len(first) for n in lists):
            return [_combine([n[i] for n in lists], n_boot, seed, level, path + (str(i),)) for i in range(len(first))]
        return first
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        numbers = [float(n) for n in nodes if isinstance(n, (int, float)) and not isinstance(n, bool)]
        mean = float(np.mean(numbers))
        return mean if isinstance(first, float) or not mean.is_integer() else int(mean)
    return first


def _path_hash(path: tuple) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256("/".join(path).encode()).digest()[:4], "little")


def seed_spread(intervals_with_seeds: dict) -> tuple[float, float] | None:
    """``(min, max)`` of the per-seed values of a combined interval (None when it has no ``seeds``)."""
    values = intervals_with_seeds.get("seeds") if isinstance(intervals_with_seeds, dict) else None
    if not values:
        return None
    finite = [v for v in values if math.isfinite(v)]
    return (min(finite), max(finite)) if finite else None


def load_seed_results(run_dir: str | os.PathLike, n_seeds: int) -> list[dict[str, dict]]:
    """Every seed's ``results/<step>.json`` (seed 0 first), each as ``{step: results}``; ValueError naming the
    folder when a seed after the first has no results (its replicas did not run)."""
    import json

    trees = []
    for s in seed_list(n_seeds):
        folder = seed_dir(run_dir, s) / "results"
        files = sorted(folder.glob("*.json")) if folder.is_dir() else []
        if s > 0 and not files:
            raise ValueError(f"training seed {s} has no results in {str(folder)!r}: the book replicates its "
                             f"model chapters over {n_seeds} seeds (profile book.seeds); run `duo book` to "
                             f"execute the replicas")
        tree = {}
        for p in files:
            try:
                tree[p.stem] = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ValueError(f"cannot read {str(p)!r} ({exc}); rerun that step of seed {s}") from None
        trees.append(tree)
    return trees


def with_shared(trees: list[dict[str, dict]], shared) -> list[dict[str, dict]]:
    """Each seed's results tree with the chapters in ``shared`` (those that run once, not per seed: see
    :data:`duolib.book.chapters.ONCE`) taken from seed 0 where that seed has none, so that a per-seed
    scorecard judges every claim.  A replicated chapter missing from a seed stays missing (its claims read
    "missing" in that seed's column): filling it from seed 0 would show a replication that never ran."""
    shared = frozenset(shared)
    first = trees[0] if trees else {}
    return [{**{k: v for k, v in first.items() if k in shared and k not in t}, **t} for t in trees]
