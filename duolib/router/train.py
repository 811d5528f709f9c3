"""Router training, the paper's Stage 3: :func:`train_router` trains a router (any
:class:`~duolib.router.base.Router` type, e.g. the linear :class:`~duolib.router.policy.RouterPolicy`) on a
frozen (by default) base model with the soft mixture, the annealed temperature and the budget penalty
described in :mod:`duolib.router.policy`.  It works on Duo models and on models retrofitted by
:func:`duolib.retrofit.retrofit_model`.  Calibration to a budget is :mod:`duolib.router.calibration`, oracle
distillation :mod:`duolib.router.distill`.
"""

from __future__ import annotations

from typing import Mapping

import torch

from ..moves import moved
from .. import checks
from ..routing import BIG, ROUTE_NAMES, SKIP, SMALL
from ..utils import batch_source, frozen, progress as progress_bar
from .base import Router, base_record, model_sizes
from .budgets import (DEFAULT_ALPHA, DEFAULT_LR, DEFAULT_TAU0, DEFAULT_TAU_MIN, budget_penalty, budget_targets,
                      temperature)
from .policy import routed_forward

#: Names that moved out of this module in this release (an import of one names its new module).
__getattr__ = moved(__name__, {"calibrate_router": "duolib.router.calibration.calibrate_router",
    "match_fractions": "duolib.router.calibration.match_fractions",
    "CALIBRATION_TOL_LAYERS": "duolib.router.calibration.CALIBRATION_TOL_LAYERS",
    "train_distilled_router": "duolib.router.distill.train_distilled_router",
    "oracle_routes_per_sequence": "duolib.router.distill.oracle_routes_per_sequence",
    "check_finite": "duolib.checks.positive"})



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
    checks.whole("steps", steps)
    for name, value in dict(alpha=alpha, lr=lr, tau0=tau0, tau_min=tau_min, base_lr=base_lr).items():
        checks.positive(name, value)
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
