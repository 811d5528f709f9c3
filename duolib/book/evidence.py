"""Bootstrap intervals of the book's headline numbers, computed from loss matrices and per-token losses.

Every function resamples the evaluation *windows* (:mod:`duolib.stats`) and recomputes the whole
reduction on each draw: the fixed pattern and the best of N random patterns are re-selected on the
resampled windows, as the procedure would on new data.  Quantities of one call share their draws, so
differences between methods are paired.  Every function takes ``clusters`` (one label per window, e.g.
:func:`duolib.data.clusters.holdout_window_works`): windows of one work or file are then resampled
together.  Results are JSON-ready ``{"value", "low", "high"}`` dicts
(:meth:`duolib.stats.Interval.as_dict`), the format :mod:`duolib.book.scorecard` reads.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from ..oracle.reductions import LossMatrix
from ..oracle.registry import REDUCTIONS
from ..oracle.schedules import SCHEDULES, SHUFFLED, budget_schedule, shuffled_schedule
from ..router.evaluate import route_and_score
from ..routing import BIG, SMALL, RandomRoutes, training_routes
from ..stats import N_BOOT, bootstrap, window_totals

PAIRED_REFERENCES = ("best_of_random", "fixed")  # what notebook 03's paired panels set the oracle against


def _named(names: list[str], stat, n_units: int, n_boot: int, seed: int, clusters=None) -> dict[str, dict]:
    cis = bootstrap(stat, n_units, n_boot=n_boot, seed=seed, clusters=clusters)
    cis = cis if isinstance(cis, list) else [cis]
    return {name: ci.as_dict() for name, ci in zip(names, cis)}


def _windows(matrix: LossMatrix) -> tuple[np.ndarray, int]:
    """The window of every token and the number of windows; ValueError for a matrix with bf16 scores
    (a resample may select a pattern whose row the engine did not rescore in fp32)."""
    exact = getattr(matrix, "exact", None)
    if exact is not None and not bool(exact.all()):
        raise ValueError("bootstrap intervals need a loss matrix computed with precision='fp32' (this one holds "
                         "bf16 scores that a resample could select)")
    seq = matrix.seq.numpy()
    return seq, int(seq.max()) + 1


def oracle_intervals(matrix: LossMatrix, n_random: int = 100, seed: int = 0, n_boot: int = N_BOOT,
                     clusters=None) -> dict:
    """Intervals of notebook 03's numbers on one holdout's shared {small, big} matrix.

    Returns ``{"perplexity": {method: {k: ci}}, "all_big", "all_small", "c1_gap", "c1_gap_per_token",
    "c4_gap_k1", "c4_gap_k2", "best_k", "mid_k", "paired_gap"}``: methods = the registered reductions
    (:data:`duolib.oracle.registry.REDUCTIONS`: ``oracle``, ``fixed``, ``best_of_random`` (one pattern),
    ``best_of_random_per_token``, and any registered since); the C1 gaps are ``1 - oracle / best-of-N`` at k = L // 2 in
    each reading, the C4 gaps ``1 - oracle(k) / all-big`` at k = 1 and 2 (positive: the oracle is
    better), ``best_k`` the budget of the lowest oracle perplexity (percentile range of the draws);
    ``paired_gap[ref][k]`` is ``1 - oracle(k) / ref(k)`` for each reference of :data:`PAIRED_REFERENCES`
    at every budget, resampled with the oracle in the same draw (the comparison the verdicts read, which
    unpaired per-method intervals overstate)."""
    seq, W = _windows(matrix)
    L = matrix.num_layers
    ks = sorted(set(matrix.n_big.tolist()))
    S, counts = window_totals(matrix.losses.double().numpy(), seq, W)  # [P, W]
    methods = list(REDUCTIONS.values())  # duolib.oracle.registry: oracle, fixed, best of N (both readings), ...
    parts = {}  # (k, name) -> per-window loss totals (per-token reductions) or candidate rows (one pattern)
    for k in ks:
        for r in methods:
            parts[k, r.name] = (window_totals(r.compute(matrix, k, n_random, seed).token_losses.double().numpy(),
                                              seq, W)[0] if r.per_token else r.rows(matrix, k, n_random, seed).numpy())
    big = matrix.pattern_index([BIG] * L)
    small = matrix.pattern_index([SMALL] * L)
    mid = L // 2

    def stat(w):
        n = w @ counts
        means = (w @ S.T) / n[:, None]  # [B, P] mean loss of every pattern
        cols, by = [], {}
        for k in ks:  # a one-pattern reduction re-chooses its pattern in every draw
            by[k] = {r.name: (w @ parts[k, r.name]) / n if r.per_token else means[:, parts[k, r.name]].min(1)
                     for r in methods}
            cols += [np.exp(by[k][r.name]) for r in methods]
        oracle_k = np.stack([by[k]["oracle"] for k in ks], axis=1)
        cols += [np.exp(means[:, big]), np.exp(means[:, small]),
                 1 - np.exp(by[mid]["oracle"] - by[mid]["best_of_random"]),
                 1 - np.exp(by[mid]["oracle"] - by[mid]["best_of_random_per_token"]),
                 1 - np.exp(by[1]["oracle"] - means[:, big]) if 1 in by else np.full(len(w), np.nan),
                 1 - np.exp(by[2]["oracle"] - means[:, big]) if 2 in by else np.full(len(w), np.nan),
                 np.asarray(ks)[oracle_k.argmin(1)].astype(float)]
        cols += [1 - np.exp(by[k]["oracle"] - by[k][ref]) for ref in PAIRED_REFERENCES for k in ks]
        return np.stack(cols, axis=1)

    scalars = ["all_big", "all_small", "c1_gap", "c1_gap_per_token", "c4_gap_k1", "c4_gap_k2", "best_k"]
    names = ([f"{r.name}@{k}" for k in ks for r in methods] + scalars
             + [f"gap_{ref}@{k}" for ref in PAIRED_REFERENCES for k in ks])
    flat = _named(names, stat, W, n_boot, seed, clusters)
    out = {"perplexity": {r.name: {str(k): flat[f"{r.name}@{k}"] for k in ks} for r in methods}, "mid_k": mid,
           "paired_gap": {ref: {str(k): flat[f"gap_{ref}@{k}"] for k in ks} for ref in PAIRED_REFERENCES}}
    out.update({n: flat[n] for n in scalars})
    best = out["best_k"]
    best.update(low=math.floor(best["low"]), high=math.ceil(best["high"]))  # whole budgets
    return out


def paired_gap_frame(intervals: dict[str, dict], labels: dict[str, str]) -> pd.DataFrame:
    """Tidy (holdout, reference, k, gap, low, high) rows of the ``paired_gap`` entries of
    :func:`oracle_intervals` per holdout, gaps in percent; ``labels`` names each reference
    (e.g. :func:`duolib.book.analysis.methods`)."""
    rows = [dict(holdout=h, reference=labels.get(ref, ref), k=int(k),
                 **{key: 100 * ci[name] for key, name in (("gap", "value"), ("low", "low"), ("high", "high"))})
            for h, ci in intervals.items() for ref, by_k in ci["paired_gap"].items() for k, ci in by_k.items()]
    return pd.DataFrame(rows)


def schedule_intervals(matrix: LossMatrix, seed: int = 0, n_boot: int = N_BOOT, clusters=None) -> dict:
    """Intervals of the schedule study (notebook 04): perplexity of each schedule and of the shuffled
    control, and the relative excess of each over the constant schedule (``x / constant - 1``: positive
    = the constant budget is better) and of falling / rising over the control."""
    seq, W = _windows(matrix)
    T, L = matrix.seq_len, matrix.num_layers
    budgets = {kind: budget_schedule(kind, L, T) for kind in SCHEDULES}
    budgets[SHUFFLED] = shuffled_schedule(L, T)
    sums = {kind: window_totals(matrix.schedule_oracle(b, kind).token_losses.double().numpy(), seq, W)[0]
            for kind, b in budgets.items()}
    _, counts = window_totals(np.zeros(len(seq)), seq, W)
    kinds = list(budgets)

    def stat(w):
        n = w @ counts
        loss = {kind: (w @ sums[kind]) / n for kind in kinds}
        cols = [np.exp(loss[kind]) for kind in kinds]
        cols += [np.exp(loss[kind] - loss["constant"]) - 1 for kind in ("falling", "rising", SHUFFLED)]
        cols += [np.exp(loss[kind] - loss[SHUFFLED]) - 1 for kind in ("falling", "rising")]
        return np.stack(cols, axis=1)

    names = kinds + ["falling_over_constant", "rising_over_constant", "shuffled_over_constant",
                     "falling_over_shuffled", "rising_over_shuffled"]
    return _named(names, stat, W, n_boot, seed, clusters)


def token_mean_intervals(values: np.ndarray, window, names: list[str], n_boot: int = N_BOOT, seed: int = 0,
                         clusters=None) -> dict:
    """Intervals of the token means of ``values [Q, N]`` (one row per name) resampling windows."""
    sums, counts = window_totals(np.atleast_2d(values), window)
    return _named(names, lambda w: (w @ sums.T) / (w @ counts)[:, None], len(counts), n_boot, seed, clusters)


def centre_intervals(matrix: LossMatrix, ks, n_boot: int = N_BOOT, seed: int = 0, clusters=None) -> dict[str, dict]:
    """Intervals of :func:`duolib.book.analysis.big_centre` (mean relative depth of the oracle's big layers)
    at each ``k``, keyed by ``str(k)``."""
    seq, _ = _windows(matrix)
    L = matrix.num_layers
    depth = np.arange(L) / max(1, L - 1)
    rows = []
    for k in ks:
        big = (matrix.patterns[matrix.oracle(k).winners] == BIG).double().numpy()  # [N, L]
        rows.append(big @ depth / k)
    return token_mean_intervals(np.stack(rows), seq, [str(k) for k in ks], n_boot, seed, clusters)


def layer_share_intervals(matrix: LossMatrix, k: int, code: int = BIG, n_boot: int = N_BOOT, seed: int = 0,
                          clusters=None) -> list:
    """Per layer, the interval of the share of tokens whose oracle pattern at ``k`` takes route ``code``."""
    seq, _ = _windows(matrix)
    uses = (matrix.patterns[matrix.oracle(k).winners] == code).double().numpy().T  # [L, N]
    cis = token_mean_intervals(uses, seq, [str(i) for i in range(matrix.num_layers)], n_boot, seed, clusters)
    return [cis[str(i)] for i in range(matrix.num_layers)]


def label_gain_intervals(difficulty, label, window, labels=("easy", "compute", "noise"),
                         n_boot: int = N_BOOT, seed: int = 0, clusters=None) -> dict:
    """C9's mechanism check on the synthetic corpus: mean difficulty (gain from compute) per label and
    the paired differences ``compute - easy`` and ``compute - noise``, resampling windows."""
    difficulty, label = np.asarray(difficulty, dtype=np.float64), np.asarray(label)
    masks = np.stack([(label == name).astype(float) for name in labels])  # [3, N]
    sums, counts = window_totals(np.concatenate([masks * difficulty, masks]), window)
    n = len(labels)
    c = labels.index("compute")

    def stat(w):
        means = (w @ sums[:n].T) / (w @ sums[n:].T)  # [B, 3]
        return np.concatenate([means, means[:, [c]] - np.delete(means, c, axis=1)], axis=1)

    others = [name for name in labels if name != "compute"]
    return _named(list(labels) + [f"compute_minus_{o}" for o in others], stat, len(counts), n_boot, seed, clusters)


def paired_loss_intervals(losses: dict[str, torch.Tensor], n_boot: int = N_BOOT, seed: int = 0, clusters=None) -> dict:
    """Per-token losses ``{name: [N, T']}`` of methods scored on the same windows: the interval of each
    method's perplexity and of every pairwise ``a_minus_b`` mean-loss difference (nats)."""
    names = list(losses)
    per_window = np.stack([losses[n].double().mean(1).numpy() for n in names], axis=1)  # [N, M], equal counts
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]

    def stat(w):
        mean = (w @ per_window) / w.sum(1, keepdims=True)  # [B, M]
        diffs = [mean[:, names.index(a)] - mean[:, names.index(b)] for a, b in pairs]
        return np.concatenate([np.exp(mean), np.stack(diffs, axis=1) if diffs else mean[:, :0]], axis=1)

    return _named(names + [f"{a}_minus_{b}" for a, b in pairs], stat, per_window.shape[0], n_boot, seed, clusters)


def dense_gap_intervals(duo: dict[str, torch.Tensor], dense: dict[str, torch.Tensor], n_boot: int = N_BOOT,
                        seed: int = 0, clusters=None) -> dict:
    """C10 on per-token losses ``[N, T']`` of the Duo model (random routes at each p(big)) and of the
    FLOP-matched dense model of each p, all on the same N windows, keyed by the p as a string.

    Returns ``{"gap": {p: ci}, "approach": ci}``: ``gap`` = Duo / dense - 1 in perplexity (positive:
    Duo is worse); ``approach`` = gap at the lowest p minus gap at the highest (positive: the gap
    shrinks as the big modules dominate), from the same resampled windows, so it is paired."""
    ps = sorted(duo, key=float)
    if len(ps) < 2 or set(ps) != set(dense):
        raise ValueError(f"need Duo and dense losses at the same two or more p(big) values; got Duo at {sorted(duo)}, "
                         f"dense at {sorted(dense)}")
    shapes = {tuple(t.shape) for t in [*duo.values(), *dense.values()]}
    if len(shapes) != 1:
        raise ValueError(f"the losses must cover the same windows, one shape; got shapes {sorted(shapes)}")
    per_window = np.stack([t.double().mean(1).numpy() for t in [*(duo[p] for p in ps), *(dense[p] for p in ps)]],
                          axis=1)  # [N, 2P]: equal token counts per window, so window means pool exactly
    P = len(ps)

    def stat(w):
        mean = (w @ per_window) / w.sum(1, keepdims=True)
        gap = np.exp(mean[:, :P] - mean[:, P:]) - 1
        return np.concatenate([gap, gap[:, :1] - gap[:, -1:]], axis=1)

    flat = _named(ps + ["approach"], stat, per_window.shape[0], n_boot, seed, clusters)
    return {"gap": {p: flat[p] for p in ps}, "approach": flat["approach"]}


def router_intervals(matrix: LossMatrix, router_losses: torch.Tensor, random_losses: torch.Tensor, k: int,
                     n_boot: int = N_BOOT, seed: int = 0, clusters=None) -> dict:
    """C2 on one holdout and budget: the router's and random routing's (at the router's realised budget)
    per-token losses ``[N, T-1]`` on the windows of ``matrix`` (the same ids), against the oracle and the
    fixed pattern at ``k`` re-selected per draw.  Returns intervals of ``router``, ``random``, ``oracle``,
    ``fixed`` (perplexities), ``router_minus_random`` (mean loss, nats; below 0: the router learned
    something) and ``position`` = (router - oracle) / (fixed - oracle) in mean loss (0: at the oracle,
    1: at the best fixed pattern)."""
    seq, W = _windows(matrix)
    if router_losses.shape[0] != W or random_losses.shape != router_losses.shape:
        raise ValueError(f"router / random losses {tuple(router_losses.shape)} / {tuple(random_losses.shape)} "
                         f"do not match the matrix's {W} windows")
    rows = matrix.budget_rows(k).numpy()
    S, counts = window_totals(matrix.losses[rows].double().numpy(), seq, W)
    oracle_w = window_totals(matrix.oracle(k).token_losses.double().numpy(), seq, W)[0]
    router_w = router_losses.double().sum(1).numpy()
    random_w = random_losses.double().sum(1).numpy()
    n_router = np.full(W, router_losses.shape[1], dtype=np.float64)

    def stat(w):
        n, m = w @ counts, w @ n_router
        router, rand = (w @ router_w) / m, (w @ random_w) / m
        oracle, fixed = (w @ oracle_w) / n, ((w @ S.T) / n[:, None]).min(1)
        return np.stack([np.exp(router), np.exp(rand), np.exp(oracle), np.exp(fixed), router - rand,
                         (router - oracle) / np.maximum(fixed - oracle, 1e-12)], axis=1)

    return _named(["router", "random", "oracle", "fixed", "router_minus_random", "position"], stat, W, n_boot, seed,
                  clusters)


def route_share_intervals(routes: torch.Tensor, code: int = BIG, early_fraction: float = 0.1, n_boot: int = N_BOOT,
                          seed: int = 0, clusters=None) -> dict:
    """C8's route statistics of hard routes ``[N, T, L]`` with windows resampled: ``late`` (share of the
    ``code`` decisions in the later half of the layers, the middle layer of an odd L counting half) and
    ``early_ratio`` (rate of ``code`` at the first ``early_fraction`` of positions over the rest's)."""
    N, T, L = routes.shape
    hits = (routes == code).double().numpy()  # [N, T, L]
    i = np.arange(L) + 0.5
    late_w = np.where(i == L / 2, 0.5, (i > L / 2).astype(float))
    n_early = max(1, math.ceil(early_fraction * T))
    per = np.stack([hits.sum((1, 2)), (hits.sum(1) * late_w).sum(1), hits[:, :n_early].sum((1, 2)),
                    hits[:, n_early:].sum((1, 2))], axis=1)  # [N, 4]
    sizes = np.array([n_early * L, (T - n_early) * L], dtype=float)

    def stat(w):
        tot = w @ per
        late = tot[:, 1] / np.where(tot[:, 0] > 0, tot[:, 0], np.nan)
        rest = tot[:, 3] / (w.sum(1) * sizes[1])
        ratio = (tot[:, 2] / (w.sum(1) * sizes[0])) / np.where(rest > 0, rest, np.nan)
        return np.stack([late, ratio], axis=1)

    return _named(["late", "early_ratio"], stat, N, n_boot, seed, clusters)


def spearman_interval(x, y, window, n_boot: int = 500, seed: int = 0, clusters=None) -> dict:
    """Interval of the Spearman rank correlation of token values ``x``, ``y`` resampling windows (each
    draw takes every token of the drawn windows, ties ranked by average)."""
    x, y, window = np.asarray(x, float), np.asarray(y, float), np.asarray(window)
    groups = [np.flatnonzero(window == g) for g in np.unique(window)]

    def rho(idx):
        rx, ry = pd.Series(x[idx]).rank().to_numpy(), pd.Series(y[idx]).rank().to_numpy()
        return float(np.corrcoef(rx, ry)[0, 1])

    def stat(w):
        out = []
        for row in w:
            idx = np.concatenate([np.repeat(groups[g][None, :], int(c), axis=0).ravel()
                                  for g, c in enumerate(row) if c > 0])
            out.append(rho(idx))
        return np.asarray(out)

    return bootstrap(stat, len(groups), n_boot=n_boot, seed=seed, clusters=clusters).as_dict()


# ----------------------------------------------------------------------------- notebook helpers

def curve_bounds(curves: pd.DataFrame, intervals: dict, names: dict[str, str]) -> pd.DataFrame:
    """``curves`` (holdout, method, k, perplexity rows of notebook 03) with ``low`` / ``high`` columns from
    :func:`oracle_intervals` per holdout; ``names`` maps the displayed method names to the interval keys."""
    curves = curves.copy()
    keys = [intervals[h]["perplexity"][names[m]].get(str(k)) for h, m, k in
            zip(curves["holdout"], curves["method"], curves["k"])]
    curves["low"] = [c["low"] if c else math.nan for c in keys]
    curves["high"] = [c["high"] if c else math.nan for c in keys]
    return curves


def router_evidence(model, routers_by_k: dict, slices: dict, matrices: dict, seed: int = 0,
                    n_boot: int = N_BOOT) -> dict:
    """C2 for every holdout and budget: each router (``{k: policy}``) and random routing at the router's
    *realised* budget (its share of big decisions on that holdout's scored positions, drawn with ``seed``)
    on the oracle slice ``slices[h]``, against 03's matrix ``matrices[h]`` (same windows):
    ``{h: {str(k): router_intervals(...) + {"p_big": realised share}}}``."""
    out = {}
    for h, ids in slices.items():
        out[h] = {}
        for k, policy in routers_by_k.items():
            losses, routes = route_and_score(model, policy, ids)
            p_big = float((routes[:, :-1] == BIG).double().mean())
            random_losses, _ = route_and_score(model, RandomRoutes(p_big=p_big, seed=seed), ids)
            ci = router_intervals(matrices[h], losses, random_losses, int(k), n_boot=n_boot, seed=seed)
            out[h][str(k)] = {**ci, "p_big": p_big}
    return out


@torch.no_grad()
def window_losses(model, sequences: torch.Tensor, p_big: float | None = None, seed: int = 0,
                  batch_size: int = 16) -> torch.Tensor:
    """Per-token losses ``[N, T-1]`` of ``model`` on ``sequences [N, T]``: a dense model as it is, a Duo
    model under the random routes :func:`duolib.train.evaluate.evaluate_route_modes` draws for
    ``random:p_big`` (the same routes), so the windows can be resampled (:func:`paired_loss_intervals`)."""
    model.eval()
    device = next(model.parameters()).device
    L = model.config.num_hidden_layers
    out = []
    for lo in range(0, len(sequences), batch_size):
        x = sequences[lo:lo + batch_size].to(device)
        kw = {}
        if p_big is not None:
            kw["routes"] = training_routes(seed, 0, range(lo, lo + len(x)), x.shape[1], L, p_big, 0.0,
                                           stream=1).to(device)
        logits = model(x, **kw).logits[:, :-1].float()
        out.append(torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none").cpu())
    return torch.cat(out)


def reference_bounds(refs: pd.DataFrame, oracle_results: dict) -> pd.DataFrame:
    """The reference rows of :func:`duolib.book.experiments.oracle_references` with ``low`` / ``high`` from the
    intervals notebook 03 saved (``holdouts.<h>.ci``; NaN where it saved none)."""
    refs = refs.copy()
    bounds = []
    for h, method, k in zip(refs["holdout"], refs["method"], refs["budget"]):
        ci = oracle_results["holdouts"][h].get("ci", {})
        key = method.replace(" ", "_")
        got = ci.get(key) if key in ("all_big", "all_small") else ci.get("perplexity", {}).get(method, {}).get(str(k))
        bounds.append((got["low"], got["high"]) if got else (math.nan, math.nan))
    refs["low"], refs["high"] = [b[0] for b in bounds], [b[1] for b in bounds]
    return refs


def router_bounds(points: pd.DataFrame, c2: dict, names: dict[str, str]) -> pd.DataFrame:
    """Measured router rows (holdout, method) with ``low`` / ``high`` of the router's perplexity from
    :func:`router_evidence`; ``names`` maps a method name to its budget key (NaN for other methods)."""
    points = points.copy()
    got = [c2.get(h, {}).get(names.get(m, ""), {}).get("router") for h, m in zip(points["holdout"], points["method"])]
    points["low"] = [g["low"] if g else math.nan for g in got]
    points["high"] = [g["high"] if g else math.nan for g in got]
    return points


def tail_improvement(metrics: pd.DataFrame, fraction: float, routes: str = "big") -> dict[str, dict]:
    """How much the last ``fraction`` of a run's steps improved its holdout loss under ``routes``: per holdout
    ``{"from_step", "to_step", "loss_from", "loss_to", "improvement"}``, the improvement relative to the loss at
    the latest evaluation at or before step ``(1 - fraction) * last step`` (the plateau check of Stage 1).

    ``metrics``: :func:`duolib.train.run_folder.read_metrics` rows (kind "eval": step, holdout, routes, loss).
    ValueError when no evaluation lies in the run's first ``1 - fraction`` or none at its last step."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction={fraction!r}: give the tail share of steps, between 0 and 1")
    evals = metrics[(metrics["kind"] == "eval") & (metrics["routes"] == routes)]
    if evals.empty:
        raise ValueError(f"no holdout evaluation under routes {routes!r} in the metrics")
    last = int(metrics["step"].max())
    out = {}
    for holdout, rows in evals.groupby("holdout"):
        by_step = rows.groupby("step")["loss"].last()
        cut = (1 - fraction) * last
        early = by_step[by_step.index <= cut]
        if early.empty or by_step.index.max() != last:
            raise ValueError(f"holdout {holdout!r}: the plateau check needs evaluations at or before step {cut:g} "
                             f"and at the last step {last}; evaluate more often (eval_every)")
        start = int(early.index.max())
        out[holdout] = {"from_step": start, "to_step": last, "loss_from": float(by_step[start]),
                        "loss_to": float(by_step[last]),
                        "improvement": float((by_step[start] - by_step[last]) / by_step[start])}
    return out
