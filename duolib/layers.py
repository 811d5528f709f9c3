"""The layer building blocks of the Duo model: RMSNorm, rotary positions, the one attention function,
attention, the SwiGLU FFN, the hard-route FFN dispatch and the Duo layer that joins them.

:mod:`duolib.model` stacks these layers into ``DuoModel`` / ``DuoForCausalLM``; the oracle's
fixed-context path reuses :func:`attention_function` and retrofitted models reuse :func:`hard_ffn`.

Like ``model.py``, this file may import only the same-level modules ``config`` and ``routing``: it is
saved beside the weights so that ``trust_remote_code=True`` loads a model without duolib.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import Cache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .config import DuoConfig
from .routing import BIG, SKIP, SMALL, RoutingPolicy


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if dtype == torch.float32 and not torch.is_grad_enabled():
            # the same formula in one fused kernel (about 1.5x faster on CPU), for the oracle's many node states
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        x = x.float()
        x = x * torch.rsqrt((x * x).mean(-1, keepdim=True) + self.eps)  # x * x: faster than pow(2), same bits
        return self.weight * x.to(dtype)


class RotaryEmbedding(nn.Module):
    """Rotary positions: dims ``i`` and ``i + hd/2`` of a head (Llama's "rotate half" convention)
    rotate together by the angle ``position * inv_freq[i]``, scaled by ``attention_scaling``, with the
    frequencies of ``config.rope_parameters`` computed by transformers' own functions, as
    ``LlamaRotaryEmbedding`` does (default rope: ``inv_freq[i] = theta^(-2i/hd)``, scaling 1).

    Rope types without state ("default", "linear", "yarn", "llama3", ...) recompute their inverse
    frequencies on every call (head_dim / 2 numbers) rather than reading a buffer, so models built on
    the meta device, loaded with ``from_pretrained`` or cast to another dtype stay exact.  "dynamic" and
    "longrope" depend on the longest sequence seen, so they keep Llama's buffers and its update
    (``dynamic_rope_update``); ``DuoPreTrainedModel._init_weights`` recomputes those buffers after
    meta-device loading, as transformers does for Llama."""

    STATEFUL = ("dynamic", "longrope")

    def __init__(self, config: DuoConfig):
        super().__init__()
        self.config = config
        self.rope_type = config.rope_parameters["rope_type"]
        self.max_seq_len_cached = self.original_max_seq_len = config.max_position_embeddings
        inv_freq, self.attention_scaling = self.init_fn(self.config)
        self.inv_freq = nn.Buffer(inv_freq, persistent=False)
        self.original_inv_freq = nn.Buffer(inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config: DuoConfig, device=None, **kwargs) -> tuple[torch.Tensor, float]:
        """``theta^(-2i/hd)`` ``[hd/2]`` and attention scaling 1 (the name transformers' init looks up)."""
        dim = config.head_dim
        exponents = torch.arange(0, dim, 2, dtype=torch.float, device=device) / dim
        return 1.0 / (config.rope_parameters["rope_theta"] ** exponents), 1.0

    @property
    def init_fn(self) -> Callable:
        if self.rope_type == "default":
            return self.compute_default_rope_parameters
        return ROPE_INIT_FUNCTIONS[self.rope_type]

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor | None = None):
        """``forward(position_ids)``: ``attention_scaling * e^(i angle)`` ``[B, T, 1, hd/2]`` (complex64), what
        :meth:`Attention.project` takes.  ``forward(x, position_ids)``: Llama's ``(cos, sin)`` ``[B, T, hd]`` in
        x's dtype, for tools written against ``LlamaRotaryEmbedding``."""
        if position_ids is None:
            return self.rotations(x, x)  # the update reads only the first one's device
        rot = self.rotations(x, position_ids)[:, :, 0]  # [B, T, hd/2]
        return torch.cat((rot.real,) * 2, -1).to(x.dtype), torch.cat((rot.imag,) * 2, -1).to(x.dtype)

    @dynamic_rope_update
    def rotations(self, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        if self.rope_type in self.STATEFUL:
            inv_freq, scaling = self.inv_freq.to(device=x.device, dtype=torch.float), self.attention_scaling
        else:
            inv_freq, scaling = self.init_fn(self.config, x.device)
        freqs = position_ids[..., None].float() * inv_freq  # [B, T, hd/2]
        return torch.polar(torch.full_like(freqs, scaling), freqs)[:, :, None]


def eager_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0, **kwargs):
    """``softmax(q k^T * scaling + mask) v`` with the weights returned (transformers' "eager" attention).

    query ``[B, H, T, hd]``; key / value ``[B, Hkv, S, hd]`` (repeated to H heads here); mask: bool
    ``[B or 1, 1, T, S]`` (True = attend), additive float, or None: causal for several queries, as
    transformers' SDPA function reads None.  Returns the output ``[B, T, H, hd]`` and the weights
    ``[B, H, T, S]``."""
    if attention_mask is None and query.shape[2] > 1 and getattr(module, "is_causal", True):
        attention_mask = torch.ones(query.shape[2], key.shape[2], dtype=torch.bool, device=query.device).tril()
    groups = module.num_key_value_groups
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # [B, H, T, S]
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    elif attention_mask is not None:
        scores = scores + attention_mask
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def attention_function(config) -> Callable:
    """The attention function of ``config._attn_implementation`` ("eager", "sdpa", ...), read at call
    time so ``set_attn_implementation`` switches a built model.  Every attention in duolib (the
    model's and the oracle's fixed-context attention) goes through it."""
    return ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager_attention_forward)


class Attention(nn.Module):
    """Causal multi-head (optionally grouped-query) attention with rotary positions.

    The q, k and v projections run as one matrix product.  In it, the q and k rows of every head are
    reordered from Llama's rotate-half layout (dims ``i`` and ``i + hd/2`` rotate together) to adjacent
    pairs, so the rotary step is one complex multiplication instead of half-swaps, negations and
    broadcast products (about 5x less time on CPU).  q and k are reordered alike, so the attention
    scores, and everything after them, are those of the Llama layout (up to float rounding); only
    the keys in a KV cache are stored in the pair order."""

    def __init__(self, config: DuoConfig, layer_idx: int):
        super().__init__()
        self.config = config  # the attention implementation is looked up per call
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv = config.num_attention_heads, config.num_key_value_heads
        self.num_key_value_groups = self.n_heads // self.n_kv
        self.head_dim = config.head_dim
        self.scaling = self.head_dim ** -0.5
        self.is_causal = True
        d = config.hidden_size
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=False)
        self._row_order: dict[torch.device, torch.Tensor] = {}

    def row_order(self, device) -> torch.Tensor:
        """Rows of ``cat(Wq, Wk, Wv)`` in the fused order: q and k heads as pairs ``(i, i + hd/2)``, then v."""
        if device not in self._row_order:
            hd, qk_heads = self.head_dim, self.n_heads + self.n_kv
            pairs = torch.arange(hd).view(2, hd // 2).t().reshape(-1)  # [0, hd/2, 1, hd/2 + 1, ...]
            qk = (torch.arange(qk_heads)[:, None] * hd + pairs).reshape(-1)
            self._row_order[device] = torch.cat((qk, torch.arange(qk_heads * hd, (qk_heads + self.n_kv) * hd))).to(device)
        return self._row_order[device]

    def fused_weight(self) -> torch.Tensor:
        """``[(H + 2 Hkv) hd, d]``: the stacked q, k, v projection weights in :meth:`row_order`."""
        w = torch.cat((self.q_proj.weight, self.k_proj.weight, self.v_proj.weight))
        return w.index_select(0, self.row_order(w.device))

    def project(self, x: torch.Tensor, rotations: torch.Tensor):
        """Rotated q ``[B, H, T, hd]``, rotated k and v ``[B, Hkv, T, hd]`` of normalised input x ``[B, T, d]``;
        rotations ``[B or 1, T, 1, hd/2]`` complex (:class:`RotaryEmbedding`)."""
        H, Hkv, hd = self.n_heads, self.n_kv, self.head_dim
        qk, v = F.linear(x, self.fused_weight()).split(((H + Hkv) * hd, Hkv * hd), dim=-1)  # [B, T, (H+Hkv) hd], [B, T, Hkv hd]
        pairs = torch.view_as_complex(qk.float().unflatten(-1, (H + Hkv, hd // 2, 2)))  # [B, T, H+Hkv, hd/2]
        qk = torch.view_as_real(pairs * rotations).flatten(-2).to(x.dtype).transpose(1, 2)  # [B, H+Hkv, T, hd]
        q, k = qk.split((H, Hkv), dim=1)
        return q, k, v.unflatten(-1, (Hkv, hd)).transpose(1, 2)

    def forward(self, x, rotations, mask, cache: Cache | None = None, **kwargs):
        """x ``[B, T, d]``; mask from ``create_causal_mask`` (None: plain causal).  Returns the output
        ``[B, T, d]`` and the attention weights ``[B, H, T, S]`` (None unless the implementation is eager)."""
        q, k, v = self.project(x, rotations)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # [B, Hkv, S, hd]
        y, weights = attention_function(self.config)(self, q, k, v, mask, scaling=self.scaling,
                                                     dropout=0.0, **kwargs)  # [B, T, H, hd]
        return self.o_proj(y.reshape(*x.shape[:-1], -1)), weights


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, inner_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, inner_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, inner_size, bias=False)
        self.down_proj = nn.Linear(inner_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        # no autograd graph to keep: the same numbers, computed in place (no [rows, inner] temporaries)
        return self.down_proj(F.silu(self.gate_proj(x), inplace=True).mul_(self.up_proj(x)))


def hard_ffn(x: torch.Tensor, routes: torch.Tensor, module_for, residual: torch.Tensor | None = None) -> torch.Tensor:
    """The hard-route FFN dispatch of Duo layers and retrofitted models: ``module_for(code)`` gives the module
    of a route code (None for skip).  FFN output for normalised input x ``[B, T, d]`` under hard routes ``[B, T]``; with
    ``residual`` ``[B, T, d]``, ``residual + FFN output`` (the same numbers, one pass fewer).

    Each module runs only on its own rows (gather, compute, add into the output rows); skipped rows
    get zero.  The residual form adds each module's rows straight into the residual stream instead of
    into a zero buffer that is then added; **with autograd off it writes into** ``residual``
    **itself** (the callers pass a fresh attention output)."""
    flat_x, flat_r = x.reshape(-1, x.shape[-1]), routes.reshape(-1)  # [N, d], [N]
    rows = {code: (flat_r == code).nonzero().squeeze(1) for code in (BIG, SMALL)}  # [n_code] each
    for code, idx in rows.items():
        if idx.numel() == flat_r.numel():  # every token takes one module: no gather / scatter
            out = module_for(code)(x)
            return out if residual is None else residual + out
    if residual is None:
        out = flat_x.new_zeros(flat_x.shape)  # [N, d]
    else:
        out = residual.reshape(flat_x.shape)  # [N, d]
        if torch.is_grad_enabled():
            out = out.clone()
    for code, idx in rows.items():
        if idx.numel():  # under autocast the module returns bf16 rows: add them at the stream's dtype
            out.index_add_(0, idx, module_for(code)(flat_x.index_select(0, idx)).to(out.dtype))
    return out.view_as(x)


class DuoLayer(GradientCheckpointingLayer):
    """Pre-norm block: ``h += attn(norm(h))``, then ``h += FFN_route(norm(h))`` per token."""

    def __init__(self, config: DuoConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.big = SwiGLU(config.hidden_size, config.big_ffn_size)
        self.small = SwiGLU(config.hidden_size, config.small_ffn_size)

    def module(self, code: int) -> nn.Module | None:
        return {BIG: self.big, SMALL: self.small, SKIP: None}[code]

    def attention_block(self, h, rotations, mask, cache=None):
        return h + self.self_attn(self.input_layernorm(h), rotations, mask, cache)[0]

    def ffn_hard(self, x: torch.Tensor, routes: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """FFN output under hard routes ``[B, T]`` (plus ``residual`` when given): :func:`hard_ffn`."""
        return hard_ffn(x, routes, self.module, residual)

    def ffn_soft(self, x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """Soft mixture ``P(small) * small(x) + P(big) * big(x)`` (skip contributes zero); probs ``[B, T, 3]``."""
        return probs[..., SMALL, None] * self.small(x) + probs[..., BIG, None] * self.big(x)

    def forward(self, h, rotations, mask=None, policy: RoutingPolicy | None = None, position_ids=None, cache=None,
                **kwargs):
        """Returns the new hidden state ``[B, T, d]`` and the layer's decision (codes ``[B, T]`` or probs ``[B, T, 3]``)."""
        a, _ = self.self_attn(self.input_layernorm(h), rotations, mask, cache, **kwargs)
        h = h + a
        x = self.post_attention_layernorm(h)
        i = self.self_attn.layer_idx
        code = policy.uniform_code(i)
        if code is not None:  # one module for every token: no routing tensor to read back (no host sync)
            module = self.module(code)
            return (h if module is None else h + module(x)), torch.full(x.shape[:2], code, device=x.device)
        decision = policy.route_layer(i, x, position_ids)
        if decision.is_floating_point():
            return h + self.ffn_soft(x, decision), decision
        return self.ffn_hard(x, decision, residual=h), decision
