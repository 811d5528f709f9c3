"""Calibration of a trained router to its budget [ours]: per-option offsets, shared by the layers, that make its
hard routes take each option at its target share (the penalty acts on the soft mixture, so the argmax routes
can land away from the budget, and the book compares methods at a given budget)."""

from __future__ import annotations

from typing import Mapping

import torch

from ..routing import ROUTE_NAMES, RoutingPolicy
from .base import Router
from .policy import routed_forward


#: Calibration stops once every option's realised share is within this many layers of its target.
CALIBRATION_TOL_LAYERS = 0.05


def full_targets(router: Router, targets: Mapping[int, float]) -> dict[int, float]:
    """Target fraction of every option of ``router``: a budget on big alone leaves ``1 - big`` to the
    router's other option (ValueError if it has two others: the split between them is not given)."""
    full = {c: float(targets[c]) for c in router.options if c in targets}
    rest = [c for c in router.options if c not in full]
    if len(rest) > 1:
        raise ValueError(f"targets {targets} leave options {[ROUTE_NAMES[c] for c in rest]} unspecified")
    if rest:
        full[rest[0]] = max(0.0, 1.0 - sum(full.values()))
    return full


class _LogitRecorder(RoutingPolicy):
    """Routes with ``router`` (hard) and keeps the router's logits at every layer."""

    def __init__(self, router: Router):
        self.router, self.logits = router, []

    def route_layer(self, layer_idx, hidden_states, position_ids):
        self.logits.append(self.router.logits(layer_idx, hidden_states).detach().reshape(-1, len(self.router.options)))
        return self.router.route_layer(layer_idx, hidden_states, position_ids)


def match_fractions(logits: torch.Tensor, targets: torch.Tensor, sweeps: int = 30, tol: float = 1e-3) -> torch.Tensor:
    """Offsets ``d [n]`` such that ``argmax(logits + d)`` over rows ``[M, n]`` takes option i for a share
    ``targets[i]`` of the rows (within ``tol``): cyclic bisection, one option at a time (its share rises
    with its offset)."""
    d = torch.zeros(logits.shape[1], dtype=torch.float64)
    z = logits.double()
    span = float(z.max() - z.min()) + 1.0
    for _ in range(sweeps):
        shares = torch.bincount((z + d).argmax(1), minlength=len(d)).double() / len(z)
        if float((shares - targets).abs().max()) <= tol:
            break
        for i in range(len(d)):
            lo, hi = -span, span
            for _ in range(40):
                d[i] = (lo + hi) / 2
                share = float(((z + d).argmax(1) == i).double().mean())
                lo, hi = (d[i].item(), hi) if share < targets[i] else (lo, d[i].item())
            d[i] = (lo + hi) / 2
    return d - d.mean()


@torch.no_grad()
def calibrate_router(model, router: Router, input_ids: torch.Tensor, targets: Mapping[int, float] | None = None,
                     iters: int = 6) -> dict:
    """Shift the router's per-option offsets (:meth:`~duolib.router.base.Router.shift`; one offset per option,
    shared by all layers) so that its hard
    routes on ``input_ids [N, T]`` (training windows, never the evaluation slice) take each option at its
    target fraction.

    [ours] The penalty acts on the soft mixture; the argmax routes of a trained router can land away from
    the budget, and the book compares methods at a given budget.  The shared offset moves the decision
    threshold only: which layers and tokens the router prefers stays its own.  Each round routes the
    windows, pools the router's logits of every (token, layer) and solves for the offsets that give the
    targets on them (:func:`match_fractions`); routing changes the later hidden states, so rounds repeat
    until the realised shares are within :data:`CALIBRATION_TOL_LAYERS` layers (the best round is kept).
    Returns (and stores in ``router.meta["calibration"]``) ``{"offsets", "realised", "error_layers"}``.
    """
    targets = full_targets(router, router.targets if targets is None else targets)
    goal = torch.tensor([targets[c] for c in router.options], dtype=torch.float64)
    L = router.num_layers
    base_offsets = router.offsets.detach().clone()  # [L, n_options]
    device = next(model.parameters()).device
    offsets, best = torch.zeros(len(router.options), dtype=torch.float64), None
    old_mode, router.mode = router.mode, "hard"
    try:
        for _ in range(iters + 1):
            router.offsets.copy_(base_offsets + offsets.to(base_offsets))
            rec = _LogitRecorder(router)
            routes = torch.cat([routed_forward(model, input_ids[i:i + 16].to(device), rec)[1].routes.cpu()
                                for i in range(0, len(input_ids), 16)])
            realised = torch.tensor([float((routes == c).double().mean()) for c in router.options], dtype=torch.float64)
            error = float((realised - goal).abs().max()) * L
            if best is None or error < best[0]:
                best = (error, offsets.clone(), realised)
            if error <= CALIBRATION_TOL_LAYERS:
                break
            offsets = offsets + match_fractions(torch.cat(rec.logits).cpu(), goal)
    finally:
        router.mode = old_mode
    error, offsets, realised = best
    router.offsets.copy_(base_offsets + offsets.to(base_offsets))
    info = {"offsets": {ROUTE_NAMES[c]: float(o) for c, o in zip(router.options, offsets)},
            "realised": {ROUTE_NAMES[c]: float(f) for c, f in zip(router.options, realised)}, "error_layers": error}
    router.meta["calibration"] = info
    return info
