"""Reusable steps of the book's Stage-3 and comparison notebooks (``07_routers`` to ``10_performance``).

The notebooks stay thin: each cell calls one of these functions.

- data slices: :func:`oracle_slices` (the holdout slice of ``03_oracle``), :func:`eval_slices`,
  :func:`train_batches`;
- cached router training (``run_dir/routers/<name>``): :func:`cached_router`, :func:`cached_distilled_router`;
- scoring and route statistics: :func:`score_policies`, :func:`late_fraction`,
  :func:`early_position_ratio`, :func:`usage_grid`, :func:`oracle_references`, :func:`scored_budget_flops`;
- pooling holdouts: :func:`pooled_perplexity`.

The dense comparison (Fig. 8) is in :mod:`duolib.book.dense_study`, the retrofit study (Fig. 9) in
:mod:`duolib.book.retrofit_study`.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from ..moves import moved
from ..utils import batch_source, json_hash, tensor_hash
from ..fileio import atomic_write_text
from ..folders import RunFolderError
from ..manifests import verify_manifest, write_manifest
from ..oracle.config import OracleConfig
from ..router.config import RouterConfig
from ..routing import BIG, ROUTE_NAMES, SKIP, SMALL
from ..data.batches import holdout_sequences, sample_batch
from ..router.evaluate import route_and_score
from ..router.base import load_router, weights_fingerprint
from ..router.policy import RouterPolicy
from ..router.calibration import calibrate_router
from ..router.distill import train_distilled_router
from ..router.train import train_router
from ..oracle.engine import loss_matrix
from ..flops import ffn_flops, mean_flops_per_token, pattern_flops
from .analysis import read_manifest

#: Names that moved out of this module in this release (an import of one names its new module).
__getattr__ = moved(__name__, {"check_budget_list": "duolib.checks.budgets",
    "check_settings": "duolib.router.budgets.check_settings"})


# ----------------------------------------------------------------------------- data


def oracle_slices(profile: str, data, run_dir=None) -> dict[str, torch.Tensor]:
    """The holdout slice the oracle notebook scores (``{holdout: [n, T]}``): ``n_sequences`` windows of
    ``seq_len`` tokens drawn at random over each holdout (:func:`duolib.data.batches.holdout_sequences`, the
    same windows as 03's), as recorded by notebook 03 in ``run_dir`` (``duolib.book.analysis`` manifest) or
    else from the profile's ``oracle`` section."""
    sec = OracleConfig.from_profile(profile).to_dict()
    if run_dir is not None:
        try:
            sec = {**sec, **{k: v for k, v in read_manifest(run_dir).items() if k in ("n_sequences", "seq_len")}}
        except (ImportError, ValueError):
            pass
    return {h: holdout_sequences(s, int(sec["n_sequences"]), int(sec["seq_len"])) for h, s in data.holdout.items()}


def eval_slices(data, n: int, seq_len: int) -> dict[str, torch.Tensor]:
    """``n`` windows of ``seq_len`` tokens drawn at random (fixed seed) over each holdout (fewer if it is
    short); ``data``: a ``duolib.data.corpus.Prepared`` or a mapping holdout name -> token stream."""
    return {h: holdout_sequences(s, n, seq_len) for h, s in getattr(data, "holdout", data).items()}


def distill_slice(profile: str, data, seed: int = 0) -> torch.Tensor:
    """The training slice of the oracle-distilled router: the router section's ``distill_windows`` random
    training windows of the oracle section's ``seq_len`` (one fixed draw, apart from router training's)."""
    windows, seq_len = RouterConfig.from_profile(profile).distill_windows, OracleConfig.from_profile(profile).seq_len
    return sample_batch(data.train, 10**6, windows, seq_len, seed)


def train_batches(stream, batch_size: int, seq_len: int, seed: int = 0, offset: int = 0) -> Callable[[int], torch.Tensor]:
    """``step -> [batch_size, seq_len]`` random training windows (``duolib.data.corpus.sample_batch``);
    ``offset`` shifts the step numbers (a different stream of windows for the same seed)."""
    return lambda step: sample_batch(stream, step + offset, batch_size, seq_len, seed)


# ----------------------------------------------------------------------------- cached routers


def _cached(folder: Path, spec: dict, model):
    """The router saved in ``folder`` and its history if it was trained with ``spec``, else None."""
    import pandas as pd

    spec_file = folder / "spec.json"
    if not spec_file.is_file():
        return None
    if json.loads(spec_file.read_text()).get("hash") != json_hash(spec)[:16]:
        return None
    try:
        verify_manifest(folder, "retraining it")
        router = load_router(folder / "router", model)  # a cache of the layout before router/: rebuilt
    except (RunFolderError, ValueError) as err:
        warnings.warn(f"router cache rebuilt: {err}", stacklevel=3)
        return None
    history = pd.read_csv(folder / "history.csv") if (folder / "history.csv").is_file() else pd.DataFrame()
    return router, history


def _store(folder: Path, spec: dict, model, router, history) -> None:
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.json").unlink(missing_ok=True)  # written last: a killed run leaves no valid cache
    router.save(folder / "router", model)  # its own folder: router.save replaces it whole
    pd.DataFrame(history).to_csv(folder / "history.csv", index=False)
    write_manifest(folder)
    atomic_write_text(folder / "spec.json",
                      json.dumps({"hash": json_hash(spec)[:16], "spec": spec}, indent=2, sort_keys=True, default=str))


def cached_router(model, folder, batches, steps: int, *, options=("small", "big"), budget: float | None = None,
                  option_budget: Mapping[str, float] | None = None, data_key: str = "", seed: int = 0,
                  calibrate_batches: int = 4, **train_kwargs):
    """Train a router as in the paper (:func:`duolib.router.train.train_router`) into ``folder``, or load it
    if ``folder`` holds one trained with the same settings on the same base weights.

    ``data_key`` describes ``batches`` (they cannot be hashed), e.g. ``"train 8x128 seed 0"``.  With
    ``calibrate_batches`` > 0 the trained router's decision threshold is then calibrated to its budget
    (:func:`duolib.router.calibration.calibrate_router`) on that many further training batches (steps
    ``steps`` onward, unseen in training).  Returns ``(router, history DataFrame)``."""
    import pandas as pd

    folder = Path(folder)
    router = RouterPolicy.for_model(model, options, seed=seed)
    spec = dict(kind="router", options=list(router.option_names), budget=budget, option_budget=option_budget,
                steps=steps, data=data_key, seed=seed, base=weights_fingerprint(model), calibrate=calibrate_batches,
                **{k: v for k, v in train_kwargs.items() if k != "progress"})
    hit = _cached(folder, spec, model)
    if hit is not None:
        return hit
    history = train_router(model, router, batches, steps, budget=budget, option_budget=option_budget, seed=seed,
                           **{"progress": False, **train_kwargs})
    if calibrate_batches:
        more = batch_source(batches)
        calibrate_router(model, router, torch.cat([more(steps + i) for i in range(calibrate_batches)]))
    _store(folder, spec, model, router, history)
    return router, pd.DataFrame(history)


def oracle_targets(model, input_ids: torch.Tensor, k: int, semantics: str = "shared"):
    """The per-token oracle's winning patterns at exactly ``k`` big layers on ``input_ids [N, T]``:
    ``(routes [M, L], token_index (seq, position), oracle perplexity)`` for
    :func:`duolib.router.distill.train_distilled_router`."""
    matrix = loss_matrix(model, input_ids, k=k, semantics=semantics)
    red = matrix.oracle(k)
    return matrix.patterns[red.winners].long(), (matrix.seq, matrix.position), red.perplexity


def cached_distilled_router(model, folder, input_ids: torch.Tensor, k: int, steps: int, *, semantics: str = "shared",
                            batch_size: int = 8, lr: float = 1e-2, seed: int = 0, calibrate: bool = True):
    """Beyond the paper: a router trained to imitate the per-token oracle at budget ``k`` on the
    training slice ``input_ids`` (winners from :func:`oracle_targets`), cached in ``folder``; with
    ``calibrate`` its threshold is then calibrated to k big layers on the same slice, like the paper's
    routers (:func:`duolib.router.calibration.calibrate_router`).
    Returns ``(router, history DataFrame, oracle perplexity on the training slice)``."""
    import pandas as pd

    folder = Path(folder)
    spec = dict(kind="distilled", k=k, steps=steps, semantics=semantics, batch_size=batch_size, lr=lr, seed=seed,
                ids=tensor_hash(input_ids), base=weights_fingerprint(model), calibrate=calibrate)
    hit = _cached(folder, spec, model)
    if hit is not None:
        router, history = hit
        return router, history, router.meta.get("oracle_train_ppl", float("nan"))
    routes, index, ppl = oracle_targets(model, input_ids, k, semantics)
    router = RouterPolicy.for_model(model, ("small", "big"), seed=seed)
    history = train_distilled_router(model, router, input_ids, routes, steps, batch_size=batch_size, lr=lr,
                                     seed=seed, token_index=index, progress=False)
    router.meta["oracle_train_ppl"] = ppl
    if calibrate:
        calibrate_router(model, router, input_ids)
    _store(folder, spec, model, router, history)
    return router, pd.DataFrame(history), ppl


# ----------------------------------------------------------------------------- scoring and statistics


def scored_budget_flops(config, k: float, seq_len: int, skip_layers: float = 0.0) -> float:
    """FLOPs per scored token of a pattern with ``k`` big layers (``skip_layers`` skipped, the rest
    small), averaged over the scored positions of a ``seq_len`` window (context 1..seq_len-1 keys):
    the mean of :func:`duolib.flops.pattern_flops`.  Every pattern with the same counts costs the same,
    so this is exact for a per-token oracle at budget k; fractional counts interpolate linearly."""
    L = config.num_hidden_layers
    base = np.mean([pattern_flops(config, [SKIP] * L, ctx) for ctx in range(1, seq_len)])
    small = L - k - skip_layers
    return float(base + k * ffn_flops(config, BIG) + small * ffn_flops(config, SMALL))


def score_policies(model, policies: Mapping[str, object], slices: Mapping[str, torch.Tensor], batch_size: int = 16,
                   keep_routes: bool = False):
    """Perplexity, realised budget and FLOPs of hard-routed policies on each holdout slice.

    Returns a DataFrame (holdout, method, kind, budget, ppl, loss, mean_big_layers, frac_skip,
    frac_small, frac_big, flops_per_token), statistics over the *scored* positions (all but the last
    of each window, like the oracle), and with ``keep_routes`` also ``{(holdout, method): routes [N, T, L]}``."""
    import pandas as pd

    rows, kept = [], {}
    for h, ids in slices.items():
        for name, policy in policies.items():
            losses, routes = route_and_score(model, policy, ids, batch_size)
            scored = routes[:, :-1]
            meta = getattr(policy, "meta", {}) or {}
            row = {"holdout": h, "method": name, "kind": meta.get("kind", type(policy).__name__),
                   "budget": meta.get("budget"), "loss": float(losses.double().mean()),
                   "mean_big_layers": float((scored == BIG).sum(-1).double().mean()),
                   "flops_per_token": mean_flops_per_token(model.config, scored)}
            row["ppl"] = math.exp(row["loss"])
            row.update({f"frac_{ROUTE_NAMES[c]}": float((scored == c).double().mean()) for c in (SKIP, SMALL, BIG)})
            rows.append(row)
            if keep_routes:
                kept[(h, name)] = routes
    frame = pd.DataFrame(rows)
    return (frame, kept) if keep_routes else frame


def _layer_weights(num_layers: int) -> torch.Tensor:
    """Weight of each layer in "the second half": 1 for i >= L/2, 0 below; the middle layer of an odd L counts 1/2."""
    i = torch.arange(num_layers, dtype=torch.float64)
    return torch.where(i + 0.5 == num_layers / 2, torch.tensor(0.5, dtype=torch.float64),
                       (i + 0.5 > num_layers / 2).double())


def late_fraction(routes: torch.Tensor, code: int = BIG) -> float:
    """Share of the ``code`` decisions (e.g. big) that fall in the second half of the layers
    (routes ``[..., L]``); 0.5 = spread evenly, NaN if the code is never taken."""
    hits = (routes == code).double().reshape(-1, routes.shape[-1]).sum(0)  # [L]
    total = float(hits.sum())
    return float((hits * _layer_weights(routes.shape[-1])).sum()) / total if total else float("nan")


def early_position_ratio(routes: torch.Tensor, code: int = BIG, fraction: float = 0.1) -> float:
    """Rate of ``code`` at the first ``fraction`` of positions (at least one) over its rate at the
    other positions; routes ``[N, T, L]``.  Above 1: early tokens take the code more often."""
    T = routes.shape[1]
    n_early = max(1, math.ceil(fraction * T))
    if n_early >= T:
        raise ValueError(f"sequences of {T} positions leave no 'rest' after the first {n_early}")
    hits = (routes == code).double()
    early, rest = float(hits[:, :n_early].mean()), float(hits[:, n_early:].mean())
    return early / rest if rest else float("nan")


def usage_grid(routes: torch.Tensor, code: int = BIG) -> np.ndarray:
    """``[L, T]``: fraction of the sequences whose token at each position takes ``code`` at each layer."""
    return (routes == code).double().mean(0).T.numpy()


def layer_usage_frame(routes_by_method: Mapping[str, torch.Tensor], codes=(SKIP, SMALL, BIG)):
    """Per-layer route fractions, rows (method, layer, route, fraction), from routes ``[..., L]``."""
    import pandas as pd

    rows = []
    for name, routes in routes_by_method.items():
        flat = routes.reshape(-1, routes.shape[-1])
        for code in codes:
            frac = (flat == code).double().mean(0)
            rows += [{"method": name, "layer": i, "route": ROUTE_NAMES[code], "fraction": float(f)}
                     for i, f in enumerate(frac.tolist())]
    return pd.DataFrame(rows)


def pool_routes(kept: Mapping[tuple[str, str], torch.Tensor], method: str) -> torch.Tensor:
    """Routes of one method over every holdout (``kept`` from :func:`score_policies`), ``[N, T, L]``."""
    parts = [r for (h, m), r in kept.items() if m == method]
    if not parts:
        raise ValueError(f"no routes kept for method {method!r}")
    T = min(p.shape[1] for p in parts)
    return torch.cat([p[:, :T] for p in parts])


def oracle_references(oracle_results: dict, holdout: str, config, seq_len: int,
                      methods: Sequence[str] = ("oracle", "fixed", "best_of_random")):
    """The reference points of ``03_oracle`` for one holdout as rows (method, budget, mean_big_layers,
    ppl, flops_per_token, source="reference"): each method at every k it reports, plus all-small (k=0)
    and all-big (k=L); FLOPs from :func:`scored_budget_flops`."""
    import pandas as pd

    d = oracle_results["holdouts"][holdout]
    L = config.num_hidden_layers
    rows = []
    for method in methods:
        for k, ppl in sorted(d.get(method, {}).items(), key=lambda kv: int(kv[0])):
            rows.append({"method": method, "budget": int(k), "mean_big_layers": float(k), "ppl": float(ppl)})
    for name, k in (("all small", 0), ("all big", L)):
        key = name.replace(" ", "_")
        if key in d:
            rows.append({"method": name, "budget": k, "mean_big_layers": float(k), "ppl": float(d[key])})
    frame = pd.DataFrame(rows)
    frame["holdout"] = holdout
    frame["source"] = "reference"
    frame["flops_per_token"] = [scored_budget_flops(config, k, seq_len) for k in frame["mean_big_layers"]]
    return frame


# ----------------------------------------------------------------------------- pooling


def pooled_perplexity(frame, by: str | Sequence[str] | None = None):
    """``exp`` of the token-weighted mean loss over holdouts (per group of ``by`` if given)."""
    def pool(g):
        return math.exp(float((g["loss"] * g["tokens"]).sum() / g["tokens"].sum()))

    if by is None:
        return pool(frame)
    import pandas as pd

    out = pd.Series({key: pool(g) for key, g in frame.groupby(by)}, name="ppl")
    out.index.names = [by] if isinstance(by, str) else list(by)
    return out
