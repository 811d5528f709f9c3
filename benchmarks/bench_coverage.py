"""Coverage of the book's 95% intervals on simulated data whose true mean is known, for each source of
variation the book resamples: windows (window bootstrap), works or files (cluster bootstrap) and training
seeds (the book's seed combination, duolib.book.seeds.combine_intervals), each beside the window
bootstrap that ignores it.

Windows of 8 tokens; a work holds 8 windows; a seed holds 16 windows.  Each cell is the share of
``--reps`` replications whose interval holds the true mean (0): about 0.95 is right, far less means the
interval pretends to more evidence than the data hold.

    python benchmarks/bench_coverage.py --reps 200
"""

from __future__ import annotations

import argparse

import numpy as np

from duolib import stats
from duolib.book.seeds import combine_intervals


def cluster_case(rng, reps: int, n_boot: int) -> tuple[float, float]:
    works, per_work, per = 12, 8, 8
    n = works * per_work
    window, work = np.repeat(np.arange(n), per), np.repeat(np.arange(works), per_work)
    hits = np.zeros(2)
    for rep in range(reps):
        values = (np.repeat(rng.normal(0, 1.0, works), per_work * per) + np.repeat(rng.normal(0, 0.2, n), per)
                  + rng.normal(0, 0.2, n * per))
        for i, clusters in enumerate((work, None)):
            ci = stats.mean_interval(values, window, n_boot=n_boot, seed=rep, clusters=clusters)
            hits[i] += ci.low <= 0 <= ci.high
    return tuple(hits / reps)


def seed_case(rng, n_seeds: int, seed_sd: float, reps: int, n_boot: int) -> tuple[float, float]:
    hits = np.zeros(2)
    for rep in range(reps):
        values, windows = [], []
        for _ in range(n_seeds):
            values.append(rng.normal(0, seed_sd) + np.repeat(rng.normal(0, 0.3, 16), 8) + rng.normal(0, 0.3, 128))
            windows.append(np.repeat(np.arange(16), 8))
        # the book's rule: each seed's window interval, then the seed combination (duolib.book.seeds)
        ci = combine_intervals([stats.mean_interval(v, w, n_boot=n_boot, seed=rep).as_dict()
                                for v, w in zip(values, windows)], n_boot=n_boot, seed=rep)
        pooled = stats.mean_interval(np.concatenate(values), np.concatenate([w + 16 * s for s, w in enumerate(windows)]),
                                     n_boot=n_boot, seed=rep)
        hits += [ci["low"] <= 0 <= ci["high"], pooled.low <= 0 <= pooled.high]
    return tuple(hits / reps)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--n-boot", type=int, default=300)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"{'case':<44} {'aware':>6} {'windows only':>13}")
    c, w = cluster_case(rng, args.reps, args.n_boot)
    print(f"{'12 works (sd 1) of 8 windows':<44} {c:6.3f} {w:13.3f}")
    for n_seeds, sd in ((3, 1.0), (5, 1.0), (3, 0.3), (3, 0.0)):
        a, w = seed_case(rng, n_seeds, sd, args.reps, args.n_boot)
        print(f"{f'{n_seeds} seeds (seed sd {sd}, window sd 0.3)':<44} {a:6.3f} {w:13.3f}")


if __name__ == "__main__":
    main()
