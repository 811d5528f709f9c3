"""Intervals of the selection controls [ours] (notebooks 03 and 06): how much of the oracle's gain survives them.

:func:`selection_intervals` turns one holdout's loss matrix (with prediction entropies for the label-free
oracle) and its placebo losses (:func:`duolib.oracle.controls.placebo_losses`, the same windows) into the
JSON-ready keys of 03 (mean-loss differences in nats, every one from the same window-bootstrap draws, so they
are paired):

- ``oracle_gain_k<k>`` = loss(all-big) - loss(oracle k);
- ``placebo_gain_k<k>`` = loss(all-big) - loss(placebo, the best of C(L, k) equal-compute candidates), all-big
  from the placebo's own reference forward (the same code as its candidates, so equal candidates give 0);
- ``label_free_gain_k<k>`` = loss(all-big) - loss(label-free k);
- ``beyond_placebo_k<k>`` = oracle_gain - placebo_gain: the part of the oracle's gain that selection among
  as many equal-compute candidates does not explain;
- ``matched_k<k>`` (1 <= k < L/2) = loss(oracle k) - loss(oracle L-k): equal candidate counts, negative when
  the budget with less compute wins;

and the point perplexities ``placebo[k]`` and ``label_free[k]``.  :func:`cached_placebo` stores the placebo
losses in the run folder like the loss matrices.  For 06: :func:`split_half_ci` (the rank
agreement of per-token difficulty from two disjoint halves of the k-big patterns) and
:func:`seed_agreement_ci`, the same statistic for two per-token vectors of one quantity from two sources.
The all-small minus all-big difficulty has no pattern set to split (two fixed routes, no selection), so
its reliability is its stability across training seeds: pass the vectors of two seeds' models on the same
windows to :func:`seed_agreement_ci` (the key ``split_half_small_minus_big_ci``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .. import checks
from ..oracle.controls import PLACEBO_DROP, PlaceboLosses, placebo_losses, split_half_difficulty
from ..oracle.engine import check_semantics
from ..oracle.reductions import LossMatrix
from ..routing import BIG
from ..manifests import read_checked, write_checked
from ..stats import N_BOOT, bootstrap, window_totals
from ..utils import parts_hash
from .analysis import ORACLE_DIR, model_fingerprint
from .evidence import spearman_interval


def cached_placebo(model, input_ids, run_dir, n_candidates: int, *, drop: float = PLACEBO_DROP, seed: int = 0,
                   semantics: str = "shared", progress: bool = False) -> PlaceboLosses:
    """:func:`duolib.oracle.controls.placebo_losses` (all-big context reference), loaded from ``run_dir/oracle/``
    when the same model, ids and arguments were computed before (checked by its ``.sha256`` sidecar)."""
    check_semantics(semantics)
    input_ids = torch.as_tensor(input_ids).long()
    spec = dict(n_candidates=int(n_candidates), drop=float(drop), seed=int(seed), semantics=semantics,
                shape=list(input_ids.shape))
    key = parts_hash(model_fingerprint(model), spec, input_ids.numpy().tobytes())
    path = Path(run_dir) / ORACLE_DIR / f"placebo-{semantics}-{key}.pt"
    cached = read_checked(path, lambda p: PlaceboLosses.from_state(torch.load(p, weights_only=True)))
    if cached is not None:
        return cached
    placebo = placebo_losses(model, input_ids, n_candidates, drop=drop, seed=seed, semantics=semantics,
                             progress=progress)
    write_checked(path, lambda tmp: torch.save(placebo.state(), tmp))
    return placebo


def _budgets(matrix: LossMatrix, placebo: PlaceboLosses | None, ks) -> list[int]:
    """The budgets to report: ``ks`` (checked against the matrix and the placebo) or every budget
    ``1..L-1`` the matrix holds (and, with a placebo, that its candidates cover)."""
    L, present = matrix.num_layers, set(matrix.n_big.tolist())
    if ks is None:
        return [k for k in range(1, L) if k in present and (placebo is None or placebo.covers(k))]
    ks = [checks.budget("k", k, L) for k in ks]
    missing = [k for k in ks if k not in present]
    short = [k for k in ks if placebo is not None and not placebo.covers(k)]
    if missing or short:
        raise ValueError(f"budgets {missing} are not in the loss matrix and {short} need more placebo candidates "
                         f"than its {placebo.n_candidates if placebo is not None else 0}; "
                         "compute them or leave them out of ks")
    return ks


def _series(matrix: LossMatrix, placebo: PlaceboLosses | None, ks: list[int]) -> dict[str, torch.Tensor]:
    """Per-token losses ``[N]`` by name: ``big``, ``oracle<k>`` for every k and L-k needed, ``label_free<k>``
    (with entropies), ``placebo_ref`` and ``placebo<k>`` (with a placebo)."""
    L = matrix.num_layers
    out = {"big": matrix.loss_of([BIG] * L)}
    need = set(ks) | {L - k for k in ks if k < L / 2 and L - k in set(matrix.n_big.tolist())}
    out.update({f"oracle{k}": matrix.oracle(k).token_losses for k in sorted(need)})
    if matrix.entropy is not None:
        out.update({f"label_free{k}": matrix.label_free(k).token_losses for k in ks})
    if placebo is not None:
        placebo.check_tokens(matrix)
        out["placebo_ref"] = placebo.reference
        out.update({f"placebo{k}": placebo.for_budget(k) for k in ks})
    return out


def _differences(names: list[str], matrix: LossMatrix, ks: list[int]) -> dict[str, tuple[str, str]]:
    """Key -> (a, b): the reported mean-loss difference a - b of two series (``beyond_placebo`` is built
    from two of them)."""
    L, out = matrix.num_layers, {}
    for k in ks:
        out[f"oracle_gain_k{k}"] = ("big", f"oracle{k}")
        if f"placebo{k}" in names:
            out[f"placebo_gain_k{k}"] = ("placebo_ref", f"placebo{k}")
        if f"label_free{k}" in names:
            out[f"label_free_gain_k{k}"] = ("big", f"label_free{k}")
        if k < L / 2 and f"oracle{L - k}" in names:
            out[f"matched_k{k}"] = (f"oracle{k}", f"oracle{L - k}")
    return out


def selection_intervals(matrix: LossMatrix, placebo: PlaceboLosses | None = None, ks=None, n_boot: int = N_BOOT,
                        seed: int = 0, clusters=None) -> dict:
    """03's selection controls on one holdout (the module docstring): ``{"placebo": {str(k): perplexity},
    "label_free": {str(k): perplexity}, "ci": {key: interval dict}}``.

    matrix: the holdout's fp32 loss matrix (every k-big pattern; entropies for the label-free keys, which are
    left out without them); placebo: its placebo losses on the same windows (its keys left out when None);
    ks: budgets (default every ``1..L-1`` present and covered by the placebo); clusters: one label per window
    (its work or file, :func:`duolib.data.clusters.holdout_window_works`) to resample whole works."""
    if matrix.exact is not None and not bool(matrix.exact.all()):
        raise ValueError("selection_intervals needs a loss matrix computed with precision='fp32'")
    ks = _budgets(matrix, placebo, ks)
    series = _series(matrix, placebo, ks)
    names = list(series)
    seq = matrix.seq.numpy()
    sums, counts = window_totals(torch.stack([series[n] for n in names]).double().numpy(), seq)  # [S, W], [W]
    diffs = _differences(names, matrix, ks)
    keys = list(diffs) + [f"beyond_placebo_k{k}" for k in ks if f"placebo_gain_k{k}" in diffs]

    def stat(w):
        mean = (w @ sums.T) / (w @ counts)[:, None]  # [B, S]
        col = {key: mean[:, names.index(a)] - mean[:, names.index(b)] for key, (a, b) in diffs.items()}
        for key in keys[len(diffs):]:
            k = key.rsplit("_k", 1)[1]
            col[key] = col[f"oracle_gain_k{k}"] - col[f"placebo_gain_k{k}"]
        return np.stack([col[key] for key in keys], axis=1)

    cis = bootstrap(stat, len(counts), n_boot=n_boot, seed=seed, clusters=clusters)
    cis = cis if isinstance(cis, list) else [cis]
    ppl = {kind: {str(k): math.exp(float(series[f"{kind}{k}"].double().mean())) for k in ks if f"{kind}{k}" in series}
           for kind in ("placebo", "label_free")}
    return {**ppl, "ci": {key: ci.as_dict() for key, ci in zip(keys, cis)}}


def split_half_ci(matrix: LossMatrix, k: int, seed: int = 0, n_boot: int = 500, clusters=None) -> dict:
    """06's ``split_half_ci``: Spearman rank correlation (window-bootstrap interval) between the per-token
    difficulties from two disjoint halves of the k-big patterns (:func:`duolib.oracle.controls.split_half_difficulty`,
    split seeded by ``seed``)."""
    a, b = split_half_difficulty(matrix, k, seed)
    return spearman_interval(a.numpy(), b.numpy(), matrix.seq.numpy(), n_boot=n_boot, seed=seed, clusters=clusters)


def seed_agreement_ci(x, y, window, n_boot: int = 500, seed: int = 0) -> dict:
    """Spearman rank correlation (window-bootstrap interval) of two per-token vectors ``x``, ``y`` ``[N]`` of one
    quantity on the same tokens, e.g. the all-small minus all-big difficulty of two training seeds' models
    (06's ``split_half_small_minus_big_ci``); ``window [N]``: each token's window."""
    x, y, window = (np.asarray(v, dtype=np.float64) for v in (x, y, window))
    if not (x.ndim == y.ndim == window.ndim == 1 and len(x) == len(y) == len(window)) or len(x) < 3:
        raise ValueError(f"x, y and window must be per-token vectors of one length >= 3; got shapes {x.shape}, "
                         f"{y.shape}, {window.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("x and y must be finite (a NaN or infinite loss has no rank)")
    return spearman_interval(x, y, window.astype(np.int64), n_boot=n_boot, seed=seed)
