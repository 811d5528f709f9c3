"""Trained routers (the paper's Stage 3): the router policy, save / load.  Options, budgets, the penalty
and the temperature: :mod:`duolib.router.budgets`.

A router is one linear layer per transformer layer on the (normalised) hidden state entering the
FFN slot; its logits choose among the router's *options*, a subset of {skip, small, big}:

- ``("small", "big")``: the paper's main setting (budgets of 4, 6, 8 big layers out of 12);
- ``("skip", "big")`` / ``("skip", "small", "big")``: the paper's skip settings
  (70% small / 30% big, 50% big / 50% skip, 50% big / 30% small / 20% skip: see
  :data:`duolib.router.budgets.SETTINGS`).

**Training** (:func:`duolib.router.train.train_router`, as in the paper): the FFN slot outputs the soft mixture
``sum_x P(x) * module_x(h)`` with ``P = softmax(logits / tau)``; the temperature is annealed toward
hard choices by :func:`duolib.router.budgets.temperature`.  The loss is ``CE + alpha * penalty`` where,
per sequence, ``penalty = (mean over tokens and layers of P(big) - budget / L)^2`` (averaged over the
batch), or, with per-option budgets, the sum of that term over the options, each against its target fraction.
The base model is frozen by default.

**Inference**: hard argmax routes (``router.mode == "hard"``, the default) with real sparse
execution.  Decisions depend only on each token's own hidden state, so ``generate(routes=router)``
works with the KV cache.

**Beyond the paper**: :func:`duolib.router.distill.train_distilled_router` trains the same router with
cross-entropy to imitate an oracle's per-token, per-layer choices at a budget, teacher-forced along the oracle's routes.

Evaluation helpers (in :mod:`duolib.router.evaluate`) return tidy pandas DataFrames: perplexity vs average big layers
(:func:`perplexity_vs_budget`), perplexity vs FLOPs per token (:func:`perplexity_vs_flops`),
layer x position heatmaps (:func:`decision_heatmap`) and single-sequence decision grids
(:func:`decision_grid`).  Routers are saved as safetensors + json (:meth:`RouterPolicy.save`,
:func:`load_router`); loading one for a different base model raises ValueError.

:class:`RouterPolicy` is the linear type of :class:`duolib.router.base.Router`, the base class that holds
what every router type shares (calibration offsets, hard / soft routing, save / load by type); a new type
goes beside it (``CONTRIBUTING.md``).

Every function here works on a :class:`~duolib.DuoForCausalLM` and on a model retrofitted by
:func:`duolib.retrofit` (Llama / OPT / GPT-2 families).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from ..model import DuoForCausalLM, shifted_token_losses
from ..retrofit import routing
from .base import (FORMAT, FORMAT_VERSION, ROUTER_TYPES, Router, base_record, base_signature, config_fingerprint,
                   load_router, model_sizes, prior_logits, register_router, weights_fingerprint)

__all__ = ["FORMAT", "FORMAT_VERSION", "ROUTER_TYPES", "Router", "RouterPolicy", "base_record", "base_signature",
           "config_fingerprint", "is_duo_model", "load_router", "model_sizes", "register_router", "routed_forward",
           "token_losses", "weights_fingerprint"]


# ----------------------------------------------------------------------------- the linear router


@register_router
class RouterPolicy(Router):
    """The paper's router: one ``nn.Linear(hidden_size, n_options)`` per layer on the hidden state entering
    the FFN slot (type ``"linear"``; the rest is :class:`~duolib.router.base.Router`'s)."""

    kind = "linear"

    def __init__(self, hidden_size: int, num_layers: int, options: Sequence[str | int] | str = ("small", "big"),
                 init_fractions: Mapping[int, float] | None = None, init_std: float = 0.02, seed: int | None = 0):
        super().__init__(hidden_size, num_layers, options)
        self.layers = nn.ModuleList(nn.Linear(hidden_size, len(self.options)) for _ in range(num_layers))
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        with torch.no_grad():
            for lin in self.layers:
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen) * init_std)
                lin.bias.zero_()
        if init_fractions:
            self.set_prior(init_fractions)

    @torch.no_grad()
    def set_prior(self, fractions: Mapping[int, float]) -> None:
        """Set every layer's bias to the centred log-fractions (:func:`~duolib.router.base.prior_logits`), so
        that a zero-input router hits the given fractions."""
        bias = prior_logits(self.options, fractions)
        for lin in self.layers:
            lin.bias.copy_(bias)

    def raw_logits(self, layer_idx: int, hidden_states: torch.Tensor) -> torch.Tensor:
        lin = self.layers[layer_idx]
        return lin(hidden_states.to(lin.weight.dtype))

    def hard_codes(self, layer_idx: int, hidden_states: torch.Tensor) -> torch.Tensor:
        if len(self.options) != 2:
            return super().hard_codes(layer_idx, hidden_states)
        # argmax of two logits is the sign of their difference: one mat-vec
        lin, (first, second) = self.layers[layer_idx], self.options
        flat = hidden_states.reshape(-1, hidden_states.shape[-1]).to(lin.weight.dtype)  # [B*T, d]
        margin = torch.mv(flat, lin.weight[1] - lin.weight[0])  # [B*T]
        bias = lin.bias + self.offsets[layer_idx].to(lin.bias.dtype)
        codes = (margin > bias[0] - bias[1]).long()  # [B*T] 1 where the second option wins
        if second - first != 1:
            codes.mul_(second - first)
        return codes.add_(first).view(hidden_states.shape[:-1])


# ----------------------------------------------------------------------------- forward on any routable model


def is_duo_model(model) -> bool:
    return isinstance(model, DuoForCausalLM)


def routed_forward(model, input_ids: torch.Tensor, policy, labels: torch.Tensor | None = None):
    """Run ``model`` (Duo or retrofitted) on ``input_ids`` routed by ``policy``; returns
    ``(output, RoutingTrace)``; ``output.loss`` is the mean next-token loss when labels are given."""
    if is_duo_model(model):
        out = model(input_ids, labels=labels, routes=policy, return_routes=True, use_cache=False)
        return out, out.routing
    with routing(model, policy) as recorder:
        out = model(input_ids=input_ids, labels=labels, use_cache=False)
    return out, recorder.trace()


def token_losses(out, input_ids: torch.Tensor) -> torch.Tensor:
    return shifted_token_losses(out.logits, input_ids)
