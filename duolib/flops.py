"""Analytic FLOP ledger: the compute axis of every plot.

Counts matrix-multiply FLOPs (one multiply-add = 2 FLOPs) of a forward pass; norms, rotary,
softmax and SwiGLU element-wise work are left out (they are O(d) per token, not O(d^2)).
Backward costs twice the forward, so training is 3x.  Per token and per layer:

- attention projections  2 * d * (2 * H * hd + 2 * Hkv * hd)       (q, o and k, v)
- attention scores       4 * ctx * H * hd                          (QK^T and AV over ctx keys)
- big FFN                6 * d * big_ffn_size                       (gate, up, down)
- small FFN              6 * d * small_ffn_size
- skip                   0
- head                   2 * d * vocab_size  (once per token; embeddings are a lookup: 0)
"""

from __future__ import annotations

from typing import Sequence

import torch

from .routing import BIG, SKIP, SMALL, as_pattern


def attention_flops(config, context_len: int | torch.Tensor) -> float | torch.Tensor:
    """One layer's attention FLOPs for a token that attends over ``context_len`` keys."""
    d, hd = config.hidden_size, config.hidden_size // config.num_attention_heads
    q_o = 2 * d * (2 * config.num_attention_heads * hd)
    k_v = 2 * d * (2 * config.num_key_value_heads * hd)
    return q_o + k_v + 4 * context_len * config.num_attention_heads * hd


def ffn_flops(config, route: int) -> int:
    """One layer's FFN FLOPs for one token on ``route`` (SKIP, SMALL or BIG)."""
    widths = {SKIP: 0, SMALL: config.small_ffn_size, BIG: config.big_ffn_size}
    if route not in widths:
        raise ValueError(f"route {route!r} is not a route code; allowed: 0 (skip), 1 (small), 2 (big)")
    return 6 * config.hidden_size * widths[route]


def head_flops(config) -> int:
    """The output projection onto the vocabulary, once per token."""
    return 2 * config.hidden_size * config.vocab_size


def pattern_flops(config, pattern: Sequence[int] | str | torch.Tensor, context_len: int) -> float:
    """Forward FLOPs of one token routed by ``pattern`` at context length ``context_len``."""
    codes = as_pattern(pattern, config.num_hidden_layers)
    ffn = sum(ffn_flops(config, int(c)) for c in codes)
    return float(config.num_hidden_layers * attention_flops(config, context_len) + ffn + head_flops(config))


def routes_flops(config, routes: torch.Tensor, context_start: int = 0) -> float:
    """Total forward FLOPs of a batch routed by ``routes`` ``[B, T, L]`` (e.g. ``trace.routes``).

    Token t (0-based) attends over ``context_start + t + 1`` keys (causal)."""
    if routes.dim() != 3 or routes.shape[-1] != config.num_hidden_layers:
        raise ValueError(f"routes must be [batch, seq, {config.num_hidden_layers}]; got {tuple(routes.shape)}")
    B, T, L = routes.shape
    ctx = torch.arange(context_start + 1, context_start + T + 1, dtype=torch.float64)  # [T]
    attention = B * L * float(attention_flops(config, ctx).sum())
    per_route = torch.tensor([ffn_flops(config, c) for c in (SKIP, SMALL, BIG)], dtype=torch.float64)
    ffn = float(per_route[routes.long().cpu()].sum())
    return attention + ffn + B * T * head_flops(config)


def mean_flops_per_token(config, routes: torch.Tensor, context_start: int = 0) -> float:
    """Average forward FLOPs per token of a routed batch ``[B, T, L]``."""
    return routes_flops(config, routes, context_start) / (routes.shape[0] * routes.shape[1])


def training_flops_per_token(config, p_big: float, p_skip: float = 0.0, seq_len: int = 128) -> float:
    """Expected training FLOPs (forward + backward = 3x forward) per token under random routing,
    averaged over the positions of a ``seq_len`` sequence."""
    L = config.num_hidden_layers
    ffn = L * (p_big * ffn_flops(config, BIG) + (1 - p_big - p_skip) * ffn_flops(config, SMALL))
    mean_ctx = (seq_len + 1) / 2
    return 3.0 * (L * attention_flops(config, mean_ctx) + ffn + head_flops(config))


def dense_equivalent_width(config, p_big: float, p_skip: float = 0.0) -> int:
    """Inner width w of a plain FFN with the FLOPs of ``p_big * big + (1 - p_big - p_skip) * small``."""
    w = p_big * config.big_ffn_size + (1 - p_big - p_skip) * config.small_ffn_size
    return max(1, round(w))
