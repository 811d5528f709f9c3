"""The Duo model: a Llama-2-style causal LM whose every layer has a big and a small FFN.

Attention is shared and always runs.  Per token and per layer the FFN slot is served by the big
module, the small module, or nothing (skip: identity residual).  Each FFN runs only on the token
rows routed to it (gather / scatter), so skipped and small routes really save compute.

Weight names follow ``transformers.LlamaForCausalLM`` (``model.layers.i.self_attn.q_proj`` ...),
with ``mlp`` replaced by ``big`` and ``small``: an all-big Duo model *is* a Llama model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from . import flops as flops_mod
from .config import DuoConfig
from .routing import BIG, SKIP, SMALL, FixedRoutes, RoutingPolicy, RoutingTrace, make_policy


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt((x * x).mean(-1, keepdim=True) + self.eps)  # x * x: faster than pow(2), same bits
        return self.weight * x.to(dtype)


class RotaryEmbedding(nn.Module):
    """Rotary positions (the Llama "rotate half" convention): dims ``i`` and ``i + hd/2`` of a head
    rotate together by the angle ``position * theta^(-2i/hd)``.

    The inverse frequencies are recomputed on every call (head_dim / 2 numbers) rather than kept in
    a buffer, so models built on the meta device and loaded with ``from_pretrained`` stay exact."""

    def __init__(self, config: DuoConfig):
        super().__init__()
        self.dim, self.theta = config.head_dim, config.rope_theta

    def angles(self, position_ids: torch.Tensor) -> torch.Tensor:
        exponents = torch.arange(0, self.dim, 2, dtype=torch.float, device=position_ids.device) / self.dim
        inv_freq = 1.0 / (self.theta ** exponents)  # [hd/2]
        return position_ids[..., None].float() * inv_freq  # [B, T, hd/2]

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """HF-style ``cos, sin`` tables ``[B, T, hd]`` (the oracle's attention uses them)."""
        freqs = self.angles(position_ids)
        emb = torch.cat((freqs, freqs), dim=-1)  # [B, T, hd]
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    @torch.no_grad()
    def rotations(self, position_ids: torch.Tensor) -> torch.Tensor:
        """Unit complex numbers ``e^(i angle)`` ``[B, T, 1, hd/2]`` (complex64): what :class:`Attention` takes."""
        freqs = self.angles(position_ids)
        return torch.polar(torch.ones_like(freqs), freqs)[:, :, None]


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
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim
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

    def forward(self, x, rotations, mask, cache: Cache | None = None):
        """x ``[B, T, d]``; rotations ``[B or 1, T, 1, hd/2]`` complex (:meth:`RotaryEmbedding.rotations`);
        mask: None (plain causal, or one query seeing all keys) or bool ``[B, 1, T, S]``."""
        B, T, _ = x.shape
        H, Hkv, hd = self.n_heads, self.n_kv, self.head_dim
        qk, v = F.linear(x, self.fused_weight()).split(((H + Hkv) * hd, Hkv * hd), dim=-1)  # [B, T, (H+Hkv) hd], [B, T, Hkv hd]
        pairs = torch.view_as_complex(qk.float().unflatten(-1, (H + Hkv, hd // 2, 2)))  # [B, T, H+Hkv, hd/2]
        qk = torch.view_as_real(pairs * rotations).flatten(-2).to(x.dtype).transpose(1, 2)  # [B, H+Hkv, T, hd]
        q, k = qk.split((H, Hkv), dim=1)  # [B, H, T, hd], [B, Hkv, T, hd]
        v = v.unflatten(-1, (Hkv, hd)).transpose(1, 2)  # [B, Hkv, T, hd]
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # [B, Hkv, S, hd]
        if self.n_kv != self.n_heads:
            k = k.repeat_interleave(self.n_heads // self.n_kv, dim=1)
            v = v.repeat_interleave(self.n_heads // self.n_kv, dim=1)
        causal = mask is None and T > 1  # one query (cached decoding) may see every key
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)  # [B, H, T, hd]
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, inner_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, inner_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, inner_size, bias=False)
        self.down_proj = nn.Linear(inner_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


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
        if idx.numel():
            out.index_add_(0, idx, module_for(code)(flat_x.index_select(0, idx)))
    return out.view_as(x)


class DuoLayer(nn.Module):
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
        return h + self.self_attn(self.input_layernorm(h), rotations, mask, cache)

    def ffn_hard(self, x: torch.Tensor, routes: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """FFN output under hard routes ``[B, T]`` (plus ``residual`` when given): :func:`hard_ffn`."""
        return hard_ffn(x, routes, self.module, residual)

    def ffn_soft(self, x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """Soft mixture ``P(small) * small(x) + P(big) * big(x)`` (skip contributes zero); probs ``[B, T, 3]``."""
        return probs[..., SMALL, None] * self.small(x) + probs[..., BIG, None] * self.big(x)

    def forward(self, h, rotations, mask, policy: RoutingPolicy, position_ids, cache=None):
        """Returns the new hidden state ``[B, T, d]`` and the layer's decision (codes ``[B, T]`` or probs ``[B, T, 3]``)."""
        h = self.attention_block(h, rotations, mask, cache)
        x = self.post_attention_layernorm(h)
        decision = policy.route_layer(self.self_attn.layer_idx, x, position_ids)
        if decision.is_floating_point():
            return h + self.ffn_soft(x, decision), decision
        return self.ffn_hard(x, decision, residual=h), decision


@dataclass
class DuoCausalLMOutput(CausalLMOutputWithPast):
    """``CausalLMOutputWithPast`` plus, on request:

    token_losses: ``[B, T-1]`` float32, entry (b, t) = -log p(labels[b, t+1] | tokens <= t); 0 where ignored.
    routing: :class:`~duolib.routing.RoutingTrace` of the routes taken (``[B, T, L]``).
    """

    token_losses: torch.Tensor | None = None
    routing: RoutingTrace | None = None


class DuoPreTrainedModel(PreTrainedModel):
    config_class = DuoConfig
    config: DuoConfig
    base_model_prefix = "model"
    _no_split_modules = ["DuoLayer"]
    _supports_sdpa = True

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)


class DuoModel(DuoPreTrainedModel):
    """Embeddings, L Duo layers and the final norm (no head)."""

    def __init__(self, config: DuoConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DuoLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value


def attention_mask_for(attention_mask, batch: int, seq: int, past: int, device) -> torch.Tensor | None:
    """None when plain causal attention suffices, else a bool mask ``[B, 1, T, past + T]`` (True = attend)."""
    if attention_mask is None and (past == 0 or seq == 1):
        return None
    total = past + seq
    q_pos = torch.arange(past, total, device=device)[:, None]  # [T, 1]
    mask = torch.arange(total, device=device)[None, :] <= q_pos  # [T, S] causal
    mask = mask[None, None].expand(batch, 1, seq, total)
    if attention_mask is not None:
        if attention_mask.shape != (batch, total):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}; expected [batch, past + seq] = [{batch}, {total}]"
            )
        mask = mask & attention_mask[:, None, None, :].bool()
        diagonal = torch.arange(total, device=device)[None, :] == q_pos  # [T, S]
        mask = mask | diagonal  # a padded query still sees itself: no all-masked (NaN) rows
    return mask


class DuoForCausalLM(DuoPreTrainedModel, GenerationMixin):
    """Duo causal LM.  ``forward(input_ids, labels=None, routes=None, ...)``.

    ``routes`` (see :mod:`duolib.routing`): a pattern of L codes for every token, a per-token tensor
    ``[B, T, L]``, or a :class:`~duolib.routing.RoutingPolicy`.  **Default (None): every token takes
    the big FFN at every layer**, i.e. the model behaves as the plain dense Llama it contains.
    Training with random routing passes ``routes=RandomRoutes(p_big=0.5, generator=g)``.
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: DuoConfig):
        super().__init__(config)
        self.model = DuoModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.layers

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def default_policy(self) -> RoutingPolicy:
        return FixedRoutes([BIG] * self.config.num_hidden_layers)

    def _positions(self, input_ids, position_ids, past: int) -> torch.Tensor:
        B, T = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=input_ids.device)[None].expand(B, T)
        top = int(position_ids.max()) if position_ids.numel() else -1
        if top >= self.config.max_position_embeddings:
            raise ValueError(
                f"sequence reaches position {top} but max_position_embeddings={self.config.max_position_embeddings}; "
                f"use sequences of at most {self.config.max_position_embeddings} tokens"
            )
        return position_ids

    def forward(
        self,
        input_ids: torch.LongTensor,
        labels: torch.LongTensor | None = None,
        routes=None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        return_token_losses: bool = False,
        return_routes: bool = False,
        output_hidden_states: bool = False,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> DuoCausalLMOutput:
        """input_ids ``[B, T]``; labels ``[B, T]`` (shifted inside, -100 ignored); returns logits ``[B, T, V]``."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq]; got shape {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        cache = cache if cache is not None else past_key_values
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past = cache.get_seq_length() if cache is not None else 0
        position_ids = self._positions(input_ids, position_ids, past)
        policy = make_policy(routes, B, T, self.config.num_hidden_layers, self.default_policy())
        mask = attention_mask_for(attention_mask, B, T, past, input_ids.device)

        h = self.model.embed_tokens(input_ids)  # [B, T, d]
        rotations = self.model.rotary_emb.rotations(position_ids)  # [B, T, 1, hd/2]
        decisions, hidden_states = [], [h] if output_hidden_states else None
        for layer in self.model.layers:
            h, decision = layer(h, rotations, mask, policy, position_ids, cache)
            decisions.append(decision)
            if output_hidden_states:
                hidden_states.append(h)
        h = self.model.norm(h)
        logits = self.lm_head(h[:, -logits_to_keep:] if logits_to_keep else h)  # [B, T, V]

        loss = token_losses = None
        if labels is not None:
            token_losses = shifted_token_losses(logits, labels)
            n = (labels[:, 1:] != -100).sum().clamp(min=1)
            loss = token_losses.sum() / n
        return DuoCausalLMOutput(
            loss=loss,
            logits=logits,
            cache=cache,
            hidden_states=tuple(hidden_states) if hidden_states else None,
            token_losses=token_losses if return_token_losses else None,
            routing=trace_from(decisions) if return_routes else None,
        )

    # ---- accounting -------------------------------------------------------------------------
    def parameter_breakdown(self) -> dict[str, int]:
        """Parameter counts by part: big_ffn, small_ffn, attention, embeddings, norms, total."""
        parts = dict(big_ffn=0, small_ffn=0, attention=0, embeddings=0, norms=0)
        for name, p in self.named_parameters():  # tied weights are listed once
            if ".big." in name:
                parts["big_ffn"] += p.numel()
            elif ".small." in name:
                parts["small_ffn"] += p.numel()
            elif ".self_attn." in name:
                parts["attention"] += p.numel()
            elif "embed_tokens" in name or "lm_head" in name:
                parts["embeddings"] += p.numel()
            else:
                parts["norms"] += p.numel()
        parts["total"] = sum(parts.values())
        return parts

    def flops_per_token(self, pattern, context_len: int) -> float:
        """Forward FLOPs of one token at context length ``context_len`` routed by ``pattern``."""
        return flops_mod.pattern_flops(self.config, pattern, context_len)


def shifted_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token next-token cross-entropy ``[B, T-1]`` (float32; 0 where labels are -100).

    The labels are shifted (padded with -100), not the logits: slicing ``logits[:, :-1]`` would copy the
    ``[B, T, V]`` tensor and zero-fill its gradient."""
    targets = F.pad(labels[:, 1:], (0, 1), value=-100)  # [B, T]: the last position has no next token
    flat = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                           reduction="none")  # [B*T], row-major: much faster than a [B, V, T] view
    return flat.view(targets.shape)[:, :-1]  # [B, T-1]


def trace_from(decisions: list[torch.Tensor]) -> RoutingTrace:
    """Stack per-layer decisions into a trace ``[B, T, L]`` (soft decisions keep their probabilities)."""
    if decisions[0].is_floating_point():
        probs = torch.stack(decisions, dim=2)  # [B, T, L, 3]
        return RoutingTrace(routes=probs.argmax(-1), probs=probs)
    return RoutingTrace(routes=torch.stack(decisions, dim=2))


# Importing the model registers the "duo" type, so AutoModelForCausalLM.from_pretrained loads saved Duo folders.
AutoConfig.register("duo", DuoConfig, exist_ok=True)
AutoModelForCausalLM.register(DuoConfig, DuoForCausalLM, exist_ok=True)
