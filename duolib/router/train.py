"""Router training (the paper's Stage 3) and oracle distillation (ours); the ``duo route`` command is in
:mod:`duolib.router.command`.

:func:`train_router` trains a router (any :class:`~duolib.router.base.Router` type, e.g. the linear
:class:`~duolib.router.policy.RouterPolicy`) on a frozen (by default) base model with the soft mixture, the annealed temperature and the budget penalty described in
:mod:`duolib.router.policy`; :func:`train_distilled_router` teaches the same router to imitate an oracle's
per-layer choices.  Both work on Duo models and on models retrofitted by :func:`duolib.retrofit.retrofit_model`.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F

from ..utils import batch_source, frozen, progress as progress_bar
from .budgets import (DEFAULT_ALPHA, DEFAULT_LR, DEFAULT_TAU0, DEFAULT_TAU_MIN, budget_penalty, budget_targets,
                      temperature)
from .base import Router, base_record, model_sizes
from .policy import routed_forward
from ..routing import BIG, ROUTE_NAMES, SKIP, SMALL, RoutingPolicy, TokenRoutes, check_codes


# ----------------------------------------------------------------------------- training (paper)


def train_router(model, router: Router, batches, steps: int, *, budget: float | None = None,
                 option_budget: Mapping[str | int, float] | str | None = None, alpha: float = DEFAULT_ALPHA,
                 lr: float = DEFAULT_LR, tau0: float = DEFAULT_TAU0, tau_min: float = DEFAULT_TAU_MIN,
                 freeze_base: bool = True, base_lr: float = 1e-4, grad_clip: float | None = 1.0,
                 init_prior: bool = True, seed: int = 0, progress: bool = True,
                 log_every: int = 1) -> list[dict]:
    """Train ``router`` on ``model`` as in the paper; returns the history (one dict per logged step).

    ``batches``: a function ``step -> LongTensor [B, T]`` (e.g. ``lambda s: sample_batch(stream, s, B, T)``),
    a tensor of batches, or an iterable.  Loss: ``CE + alpha * budget_penalty`` with the router
    routing softly at ``temperature(step, steps, tau0, tau_min)``.  ``budget``: big layers per token
    (0..L); ``option_budget``: a fraction per option (see :func:`duolib.router.budgets.budget_targets`).
    The base model is frozen (and in eval mode) unless ``freeze_base=False`` (then trained at ``base_lr``).
    ``init_prior`` first sets the router biases so that its initial choices match the targets.
    Afterwards the router is in hard mode.  History keys: step, tau, loss, ce, penalty,
    mean_big_layers (soft), frac_skip / frac_small / frac_big (soft).
    """
    L = check_router_fits(model, router)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be a positive integer")
    check_finite(alpha=alpha, lr=lr, tau0=tau0, tau_min=tau_min, base_lr=base_lr)
    targets = budget_targets(L, router.options, budget, option_budget)
    get_batch = batch_source(batches)
    torch.manual_seed(seed)
    if init_prior and router.meta.get("trained_steps", 0) == 0:
        router.set_prior(targets)
    device = next(router.parameters()).device
    groups = [{"params": list(router.parameters()), "lr": lr}]
    if not freeze_base:
        groups.append({"params": [p for p in model.parameters() if p.requires_grad], "lr": base_lr})
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    history = []
    router.train()
    with frozen(model, freeze_base):
        if not freeze_base:
            model.train()
        for step in progress_bar(range(steps), progress, "router"):
            tau = temperature(step, steps, tau0, tau_min)
            ids = get_batch(step).to(device)
            with router.soft(tau):
                out, trace = routed_forward(model, ids, router, labels=ids)
            penalty = budget_penalty(trace.probs, targets)
            loss = out.loss + alpha * penalty
            if not torch.isfinite(loss):
                raise ValueError(f"router training stopped at step {step}: loss {float(loss)} is not finite "
                                 f"(nothing saved); lower lr={lr} or alpha={alpha}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], grad_clip)
            opt.step()
            if step % log_every == 0 or step == steps - 1:
                history.append(history_row(step, tau, loss, out.loss, penalty, trace.probs))
    finish_training(router, model, targets, kind=router.meta.get("kind", "router"),
                    trained_steps=router.meta.get("trained_steps", 0) + steps,
                    budget=budget, option_budget={ROUTE_NAMES[c]: f for c, f in targets.items()},
                    alpha=alpha, lr=lr, tau0=tau0, tau_min=tau_min, freeze_base=freeze_base)
    return history


def check_router_fits(model, router: Router) -> int:
    """The model's number of layers; ValueError when ``router`` was sized for another model."""
    hidden, L = model_sizes(model)
    if router.num_layers != L or router.hidden_size != hidden:
        raise ValueError(f"router sized for hidden_size={router.hidden_size}, {router.num_layers} layers; the model "
                         f"has hidden_size={hidden}, {L} layers")
    return L


def history_row(step: int, tau: float, loss: torch.Tensor, ce: torch.Tensor, penalty: torch.Tensor,
                probs: torch.Tensor) -> dict:
    """One logged step of :func:`train_router`: losses, and the soft route shares of ``probs [B, T, L, 3]``."""
    probs = probs.detach().float()
    return {
        "step": step, "tau": tau, "loss": float(loss.detach()), "ce": float(ce.detach()),
        "penalty": float(penalty.detach()),
        "mean_big_layers": float(probs[..., BIG].sum(-1).mean()),
        **{f"frac_{ROUTE_NAMES[c]}": float(probs[..., c].mean()) for c in (SKIP, SMALL, BIG)},
    }


def finish_training(router: Router, model, targets: dict[int, float], **meta) -> None:
    """A trained router: eval and hard mode, its ``targets`` and training ``meta`` recorded, the base model's
    signature kept (for :func:`duolib.router.policy.load_router`'s check)."""
    router.eval()
    router.mode = "hard"
    router.targets = targets
    router.meta.update(**meta)
    if router.base is None:
        router.base = base_record(model)


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


def check_finite(**values) -> None:
    """ValueError naming the first value that is not a finite, positive number (booleans are not numbers)."""
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name}={v!r} must be a finite positive number")


# ----------------------------------------------------------------------------- oracle distillation (ours)


class _TeacherForced(RoutingPolicy):
    """Routes along given per-token codes and records the hidden state entering each FFN slot."""

    def __init__(self, routes: torch.Tensor):
        self.inner = TokenRoutes(routes)
        self.hidden: dict[int, torch.Tensor] = {}

    def route_layer(self, layer_idx, hidden_states, position_ids):
        self.hidden[layer_idx] = hidden_states.detach()
        return self.inner.route_layer(layer_idx, hidden_states, position_ids)


def oracle_routes_per_sequence(input_ids: torch.Tensor, oracle_routes: torch.Tensor, fill: int = BIG,
                               token_index: tuple[torch.Tensor, torch.Tensor] | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Reshape an oracle's winning patterns to ``[N, T, L]`` codes plus a mask ``[N, T]`` of scored tokens.

    ``oracle_routes``: ``[N, T, L]``, ``[N, T - 1, L]`` (one pattern per scored token: token t's
    pattern is the route of position t, whose output predicts token t + 1), or flat
    ``[N * T, L]`` / ``[N * (T - 1), L]`` (sequence-major).  With ``token_index = (seq, position)``
    (``[M]`` each, e.g. a loss matrix's ``seq`` / ``position``) the flat rows ``[M, L]`` go to those
    tokens, in any order and for any subset.  Unscored positions take ``fill`` and mask 0.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [N, T]; got shape {tuple(input_ids.shape)}")
    N, T = input_ids.shape
    r = torch.as_tensor(oracle_routes)
    check_codes(r, "oracle routes")
    if token_index is not None:
        seq, pos = (torch.as_tensor(t).long() for t in token_index)
        if r.dim() != 2 or not (len(seq) == len(pos) == r.shape[0]):
            raise ValueError(f"with token_index, oracle routes must be [M, L] with M = len(seq) = len(position); got "
                             f"{tuple(r.shape)}, {len(seq)}, {len(pos)}")
        if len(seq) and (seq.min() < 0 or seq.max() >= N or pos.min() < 0 or pos.max() >= T):
            raise ValueError(f"token_index points outside input_ids of shape {tuple(input_ids.shape)}")
        full = torch.full((N, T, r.shape[1]), fill, dtype=torch.long)
        full[seq, pos] = r.long()
        mask = torch.zeros(N, T, dtype=torch.bool)
        mask[seq, pos] = True
        return full, mask
    if r.dim() == 2:
        if r.shape[0] == N * T:
            r = r.view(N, T, -1)
        elif r.shape[0] == N * (T - 1):
            r = r.view(N, T - 1, -1)
        else:
            raise ValueError(f"oracle routes have {r.shape[0]} rows; expected N*T={N * T} or N*(T-1)={N * (T - 1)} "
                             f"for input_ids of shape {tuple(input_ids.shape)}")
    if r.dim() != 3 or r.shape[0] != N or r.shape[1] not in (T, T - 1):
        raise ValueError(f"oracle routes of shape {tuple(r.shape)} do not match input_ids {tuple(input_ids.shape)}; "
                         f"expected [N, T, L] or [N, T-1, L]")
    mask = torch.ones(N, T, dtype=torch.bool)
    if r.shape[1] == T - 1:
        r = torch.cat([r, torch.full((N, 1, r.shape[2]), fill, dtype=r.dtype)], dim=1)
        mask[:, -1] = False
    return r.long(), mask


def train_distilled_router(model, router: Router, input_ids: torch.Tensor, oracle_routes: torch.Tensor,
                           steps: int, *, batch_size: int = 8, lr: float = DEFAULT_LR, seed: int = 0,
                           token_index: tuple[torch.Tensor, torch.Tensor] | None = None,
                           progress: bool = True, log_every: int = 1) -> list[dict]:
    """Train ``router`` to imitate an oracle's per-layer choices (cross-entropy), teacher-forced.

    ``input_ids [N, T]`` and the oracle's winning patterns (see :func:`oracle_routes_per_sequence`)
    are plain inputs (e.g. ``matrix.patterns[matrix.oracle(k).winners]`` with ``token_index=(matrix.seq,
    matrix.position)`` from :mod:`duolib.oracle.engine`; any ``[N_tokens, L]`` codes at budget k).  Each step runs
    the frozen model
    along the oracle's own routes, takes the hidden state entering every FFN slot and trains
    the layer's linear router to predict the oracle's code there.  History: step, loss, accuracy.
    """
    L = check_router_fits(model, router)
    routes, mask = oracle_routes_per_sequence(input_ids, oracle_routes, fill=router.options[-1],
                                              token_index=token_index)
    if routes.shape[2] != L:
        raise ValueError(f"oracle patterns have {routes.shape[2]} layers but the model has {L}")
    targets = option_targets(router, routes, mask)
    gen = torch.Generator().manual_seed(seed)
    device = next(router.parameters()).device
    opt = torch.optim.AdamW(router.parameters(), lr=lr, weight_decay=0.0)
    N = input_ids.shape[0]
    history = []
    router.train()
    with frozen(model, True):
        for step in progress_bar(range(steps), progress, "distil"):
            idx = torch.randperm(N, generator=gen)[:batch_size]
            ids, r, tgt = input_ids[idx].to(device), routes[idx].to(device), targets[idx].to(device)
            teacher = _TeacherForced(r)
            with torch.no_grad():
                routed_forward(model, ids, teacher)
            loss, correct, count = imitation_loss(router, teacher.hidden, tgt)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % log_every == 0 or step == steps - 1:
                history.append({"step": step, "loss": float(loss.detach()), "accuracy": correct / max(1, count)})
    k = float((routes[mask] == BIG).sum(-1).float().mean()) if mask.any() else float("nan")
    finish_training(router, model, {BIG: k / L}, kind="distilled",
                    trained_steps=router.meta.get("trained_steps", 0) + steps, budget=k, lr=lr, teacher="oracle")
    return history


def option_targets(router: Router, routes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The oracle's codes ``routes [N, T, L]`` as indices into the router's options (-100 where ``mask`` is
    False: not scored); ValueError when the oracle uses an option the router lacks."""
    used = sorted(set(routes[mask].unique().tolist()))
    if not set(used) <= set(router.options):
        raise ValueError(f"oracle routes use {[ROUTE_NAMES[c] for c in used]} but the router's options are "
                         f"{list(router.option_names)}")
    to_index = torch.full((3,), -100, dtype=torch.long)
    to_index[list(router.options)] = torch.arange(len(router.options))
    targets = to_index[routes]  # [N, T, L] option indices
    targets[~mask] = -100
    return targets


def imitation_loss(router: Router, hidden: dict[int, torch.Tensor], targets: torch.Tensor
                   ) -> tuple[torch.Tensor, int, int]:
    """Cross-entropy of the router's choices at every layer against the oracle's option indices
    ``targets [b, T, L]`` (-100: not scored), averaged over layers; also the correct and scored counts."""
    losses, correct, count = [], 0, 0
    for layer in range(targets.shape[-1]):
        logits = router.logits(layer, hidden[layer]).float()  # [b, T, n]
        losses.append(F.cross_entropy(logits.transpose(1, 2), targets[..., layer], ignore_index=-100))
        valid = targets[..., layer] != -100
        correct += int((logits.argmax(-1) == targets[..., layer])[valid].sum())
        count += int(valid.sum())
    return torch.stack(losses).mean(), correct, count
