"""Evaluation of routers and other routing policies (tidy pandas DataFrames).

Perplexity vs average big layers (:func:`perplexity_vs_budget`), perplexity vs FLOPs per token
(:func:`perplexity_vs_flops`), layer x position heatmaps (:func:`decision_heatmap`) and
single-sequence decision grids (:func:`decision_grid`).  Works on Duo and retrofitted models.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterable, Mapping

import numpy as np
import torch

from .base import Router
from .policy import token_losses, routed_forward
from ..routing import BIG, ROUTE_NAMES, SKIP, SMALL, RoutingPolicy, RoutingTrace
from ..flops import ffn_flops, mean_flops_per_token

def realised_budget(trace: RoutingTrace | torch.Tensor) -> dict[str, float]:
    """Mean big layers per token and the fraction of (token, layer) slots per option."""
    routes = trace.routes if isinstance(trace, RoutingTrace) else trace
    out = {"mean_big_layers": float((routes == BIG).sum(-1).float().mean())}
    out.update({f"frac_{ROUTE_NAMES[c]}": float((routes == c).float().mean()) for c in (SKIP, SMALL, BIG)})
    return out


@contextmanager
def _hard(policy):
    if isinstance(policy, Router):
        old = policy.mode
        policy.mode = "hard"
        try:
            yield
        finally:
            policy.mode = old
    else:
        yield


def _flops_config(model):
    cfg = model.config
    return cfg if hasattr(cfg, "big_ffn_size") and hasattr(cfg, "small_ffn_size") else None


@torch.no_grad()
def route_and_score(model, policy, input_ids: torch.Tensor, batch_size: int = 16):
    """Hard-routed forward over ``input_ids [N, T]`` in batches: ``(token_losses [N, T-1], routes [N, T, L])``."""
    losses, routes = [], []
    device = next(model.parameters()).device
    with _hard(policy):
        for start in range(0, input_ids.shape[0], batch_size):
            ids = input_ids[start:start + batch_size].to(device)
            out, trace = routed_forward(model, ids, policy)
            losses.append(token_losses(out, ids).cpu())
            routes.append(trace.routes.cpu())
    return torch.cat(losses), torch.cat(routes)


def evaluate_policy(model, policy, input_ids: torch.Tensor, batch_size: int = 16) -> dict:
    """Perplexity, realised budget and FLOPs per token of a (hard) policy on ``input_ids [N, T]``."""
    token_losses, routes = route_and_score(model, policy, input_ids, batch_size)
    loss = float(token_losses.mean())
    cfg = _flops_config(model)
    if cfg is not None:
        flops = mean_flops_per_token(cfg, routes)
    else:
        flops = float("nan")
    return {"loss": loss, "ppl": math.exp(loss), **realised_budget(routes), "flops_per_token": flops,
            "n_tokens": int(token_losses.numel())}


def mean_budget_flops(config, big_layers: float, seq_len: int, skip_layers: float = 0.0) -> float:
    """FLOPs per token (averaged over a ``seq_len`` sequence) with ``big_layers`` big, ``skip_layers``
    skipped and the rest small (fractional counts interpolate linearly: FFN FLOPs are linear)."""
    L = config.num_hidden_layers
    base = mean_flops_per_token(config, torch.full((1, seq_len, L), SKIP, dtype=torch.long))
    small = L - big_layers - skip_layers
    return base + big_layers * ffn_flops(config, BIG) + small * ffn_flops(config, SMALL)


def evaluate_routers(model, routers: Mapping[str, RoutingPolicy], input_ids: torch.Tensor,
                     references=None, batch_size: int = 16):
    """One row per router (hard routes, measured here) plus one per reference.

    ``routers``: name -> policy (trained routers, or FixedRoutes / TokenRoutes baselines).
    ``references``: numbers computed elsewhere (oracle, fixed, best-of-100 ...), a DataFrame or a list
    of dicts with ``method``, ``mean_big_layers`` and ``ppl`` (optionally ``flops_per_token``,
    ``budget``, ``frac_skip``); missing FLOPs are filled by :func:`mean_budget_flops` at this sequence length.
    Columns: method, source (measured / reference), budget, mean_big_layers, ppl, loss,
    flops_per_token, frac_skip, frac_small, frac_big, n_tokens.
    """
    import pandas as pd

    rows = []
    for name, policy in routers.items():
        row = {"method": name, "source": "measured", **evaluate_policy(model, policy, input_ids, batch_size)}
        meta = getattr(policy, "meta", {}) or {}
        row["budget"] = meta.get("budget")
        row["kind"] = meta.get("kind", type(policy).__name__)
        rows.append(row)
    cfg = _flops_config(model)
    if references is not None:
        refs = references.to_dict("records") if hasattr(references, "to_dict") else list(references)
        for ref in refs:
            if "method" not in ref or "ppl" not in ref or "mean_big_layers" not in ref:
                raise ValueError(f"reference {ref} needs at least 'method', 'mean_big_layers' and 'ppl'")
            row = {"source": "reference", "kind": "reference", **ref}
            if "loss" not in row:
                row["loss"] = math.log(row["ppl"])
            if pd.isna(row.get("flops_per_token", float("nan"))) and cfg is not None:
                row["flops_per_token"] = mean_budget_flops(cfg, float(row["mean_big_layers"]), input_ids.shape[1],
                                                      float(row.get("frac_skip", 0.0) or 0.0) * cfg.num_hidden_layers)
            rows.append(row)
    cols = ["method", "kind", "source", "budget", "mean_big_layers", "ppl", "loss", "flops_per_token",
            "frac_skip", "frac_small", "frac_big", "n_tokens"]
    df = pd.DataFrame(rows)
    for c in cols:
        if c not in df:
            df[c] = float("nan")
    return df[cols + [c for c in df.columns if c not in cols]]


def perplexity_vs_budget(model, routers, input_ids, references=None, batch_size: int = 16):
    """Tidy rows (method, source, budget, mean_big_layers, ppl) sorted by mean big layers."""
    df = evaluate_routers(model, routers, input_ids, references, batch_size)
    return df[["method", "kind", "source", "budget", "mean_big_layers", "ppl"]].sort_values(
        ["mean_big_layers", "method"]).reset_index(drop=True)


def perplexity_vs_flops(model, routers, input_ids, references=None, batch_size: int = 16):
    """Tidy rows (method, source, flops_per_token, mean_big_layers, ppl) sorted by FLOPs per token."""
    df = evaluate_routers(model, routers, input_ids, references, batch_size)
    return df[["method", "kind", "source", "flops_per_token", "mean_big_layers", "ppl"]].sort_values(
        ["flops_per_token", "method"]).reset_index(drop=True)


def heatmap_from_routes(routes: torch.Tensor, code: int = BIG):
    """Tidy layer x position fractions: rows (layer, position, fraction, n) with fraction = share of
    the sequences whose token at ``position`` takes ``code`` at ``layer``; routes ``[N, T, L]``."""
    import pandas as pd

    if isinstance(routes, RoutingTrace):
        routes = routes.routes
    frac = (routes == code).float().mean(0)  # [T, L]
    T, L = frac.shape
    layer, pos = torch.meshgrid(torch.arange(L), torch.arange(T), indexing="ij")
    return pd.DataFrame({"layer": layer.reshape(-1).numpy(), "position": pos.reshape(-1).numpy(),
                         "fraction": frac.t().reshape(-1).numpy(), "n": routes.shape[0],
                         "route": ROUTE_NAMES[code]})


def decision_heatmap(model, policy, input_ids: torch.Tensor, code: int = BIG, batch_size: int = 16):
    """Route ``input_ids [N, T]`` with ``policy`` (hard) and return :func:`heatmap_from_routes` data."""
    _, routes = route_and_score(model, policy, input_ids, batch_size)
    return heatmap_from_routes(routes, code)


class _Recording(RoutingPolicy):
    def __init__(self, policy):
        self.policy, self.probs = policy, {}

    def route_layer(self, layer_idx, hidden_states, position_ids):
        if isinstance(self.policy, Router):
            with torch.no_grad():
                self.probs[layer_idx] = self.policy.full_probs(self.policy.option_probs(layer_idx, hidden_states, 1.0))
        return self.policy.route_layer(layer_idx, hidden_states, position_ids)


@torch.no_grad()
def decision_grid(model, policy, input_ids: torch.Tensor, tokenizer=None):
    """Layer x token decisions of one sequence (``[T]`` or ``[1, T]``), tidy rows: layer, position,
    token_id, token (decoded when a tokenizer is given), code, route, p_big (router probability at
    tau = 1, NaN for other policies) and loss (the token's next-token loss, NaN at the last position)."""
    import pandas as pd

    ids = input_ids.view(1, -1) if input_ids.dim() == 1 else input_ids
    if ids.shape[0] != 1:
        raise ValueError(f"decision_grid takes one sequence; got input_ids of shape {tuple(input_ids.shape)}")
    rec = _Recording(policy)
    device = next(model.parameters()).device
    ids = ids.to(device)
    with _hard(policy):
        out, trace = routed_forward(model, ids, rec)
    losses = token_losses(out, ids)[0].cpu()
    routes = trace.routes[0].cpu()  # [T, L]
    T, L = routes.shape
    rows = []
    for layer in range(L):
        for t in range(T):
            code = int(routes[t, layer])
            tok = int(ids[0, t])
            rows.append({
                "layer": layer, "position": t, "token_id": tok,
                "token": tokenizer.decode([tok]) if tokenizer is not None else str(tok),
                "code": code, "route": ROUTE_NAMES[code],
                "p_big": float(rec.probs[layer][0, t, BIG]) if layer in rec.probs else float("nan"),
                "loss": float(losses[t]) if t < T - 1 else float("nan"),
            })
    return pd.DataFrame(rows)


def history_frame(history: Iterable[dict]):
    """A training history as a DataFrame."""
    import pandas as pd

    return pd.DataFrame(list(history))


#: A training curve has flattened when its smoothed value changed by less than FLAT_TOL (relative to the
#: final level) over the last FLAT_TAIL of the steps [ours].  The Stage-1 plateau rule
#: (:func:`duolib.book.scorecard.converged`) uses the same pair.
FLAT_TOL = 0.02
FLAT_TAIL = 0.2
FLATTENED, STILL_FALLING, STILL_RISING = "flattened", "still falling", "still rising"


def smoothed(values, window: int) -> np.ndarray:
    """Trailing moving average (the first ``window - 1`` points average what exists so far)."""
    v = np.asarray(values, dtype=float)
    c = np.concatenate([[0.0], np.cumsum(v)])
    i = np.arange(1, len(v) + 1)
    lo = np.maximum(0, i - window)
    return (c[i] - c[lo]) / (i - lo)


def tail_change(values, scale=None, tail: float = FLAT_TAIL, window: int | None = None) -> float:
    """Drop of the smoothed curve over its last ``tail`` of steps, relative to ``|scale|`` (default: the
    smoothed final value): positive while falling, negative while rising.  ``window``: default a tenth
    of the steps.  ValueError for fewer than 10 points or non-finite values."""
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or len(v) < 10 or not np.isfinite(v).all():
        raise ValueError(f"a training curve needs at least 10 finite values; got {len(v)} "
                         f"({int((~np.isfinite(v)).sum()) if v.ndim == 1 else 'bad shape'} not finite)")
    s = smoothed(v, window or max(1, len(v) // 10))
    start = min(len(v) - 2, int(round(len(v) * (1 - tail))))
    ref = abs(float(s[-1] if scale is None else scale))
    return float(s[start] - s[-1]) / max(ref, 1e-12)


def flatness_word(change: float, tol: float = FLAT_TOL) -> str:
    """``flattened`` if ``|change| < tol``, else ``still falling`` / ``still rising``."""
    return FLATTENED if abs(change) < tol else STILL_FALLING if change > 0 else STILL_RISING


def history_flatness(history, alpha: float, tol: float = FLAT_TOL) -> dict:
    """Has a router's training (a :func:`duolib.router.train.train_router` history) flattened?  The total
    loss's tail change relative to its final level, and the weighted budget penalty's (``alpha *
    penalty``) relative to the same final loss (a penalty near 0 has no level of its own).  Returns
    ``{"loss_change", "penalty_change", "flat" (both below tol), "word"}``."""
    frame = history_frame(history) if not hasattr(history, "columns") else history
    loss = frame["loss"].to_numpy(dtype=float)
    level = smoothed(loss, max(1, len(loss) // 10))[-1]
    changes = {"loss_change": tail_change(loss),
               "penalty_change": tail_change(alpha * frame["penalty"].to_numpy(dtype=float), scale=level)}
    worst = max(changes.values(), key=abs)
    return {**changes, "flat": all(abs(c) < tol for c in changes.values()), "word": flatness_word(worst, tol)}
