"""Oracle distillation [ours]: teach a router to imitate an oracle's per-layer choices (cross-entropy,
teacher-forced along the oracle's own routes), on Duo models and on retrofitted ones."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..routing import BIG, ROUTE_NAMES, RoutingPolicy, TokenRoutes, check_codes
from ..utils import frozen, progress as progress_bar
from .base import Router
from .budgets import DEFAULT_LR
from .policy import routed_forward
from .train import check_router_fits, finish_training


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
