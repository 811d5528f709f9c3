"""What every oracle engine shares for one batch of sequences: the embeddings, rotary tables and target
head rows (:func:`oracle_setup`), the fixed-context reference (its routes and per-layer keys / values),
the fixed-context attention (the model's own attention function over reference and own keys), the FFN
slot of one route, and the leaf losses (full vocabulary, bf16 with fp32 rescoring, or the beam's proxy).

Used by the trie engine (:mod:`duolib.oracle.engine`) and the beam search (:mod:`duolib.oracle.beam`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layers import attention_function
from ..routing import ROUTE_NAMES, SKIP, as_pattern, check_codes
from .leaf import BF16Leaf, logsumexp_entropy_rows, logsumexp_rows


def reference_routes(reference, num_layers: int, batch: int, seq: int) -> torch.Tensor:
    """The fixed-context reference as per-token routes ``[B, T, L]`` (long)."""
    if isinstance(reference, str) and reference.lower() in ROUTE_NAMES:
        reference = [ROUTE_NAMES.index(reference.lower())] * num_layers
    if torch.is_tensor(reference) and reference.dim() == 3:
        if tuple(reference.shape) != (batch, seq, num_layers):
            raise ValueError(f"reference routes must be [{batch}, {seq}, {num_layers}]; got {tuple(reference.shape)}")
        check_codes(reference, "reference")
        return reference.long()
    return as_pattern(reference, num_layers)[None, None].expand(batch, seq, num_layers)


def fixed_context_mask(seq: int, device) -> torch.Tensor:
    """``[T, 2T]`` bool (True = attend) over the keys ``cat(reference keys, own keys)``: query t reads the
    reference keys of the positions before t and its own key at t."""
    pos = torch.arange(seq, device=device)
    earlier = pos[None, :] < pos[:, None]  # [T, T]
    return torch.cat((earlier, pos[None, :] == pos[:, None]), dim=1)


def fixed_context_attention(layer, h: torch.Tensor, ref_k: torch.Tensor, ref_v: torch.Tensor,
                            rotations: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``h + attn(norm(h))`` where every token (row) reads the reference keys / values of the
    *earlier* positions and its own key / value at its own position: the model's projection, rotary
    and attention function over the keys ``cat(reference, own)`` under :func:`fixed_context_mask`.

    h ``[..., B, T, d]`` (any leading dims: nodes or beam slots; each row has its own path);
    ref_k / ref_v ``[B, Hkv, T, hd]`` (:meth:`Attention.project` of the reference route); rotations
    ``[1, T, 1, hd/2]``; mask ``[T, 2T]``."""
    attn = layer.self_attn
    B, T, d = h.shape[-3:]
    x = layer.input_layernorm(h).reshape(-1, T, d)  # [N, T, d], N = (leading dims) * B
    q, k, v = attn.project(x, rotations)  # [N, H, T, hd], [N, Hkv, T, hd] x 2
    n = x.shape[0] // B
    keys = torch.cat((ref_k.repeat(n, 1, 1, 1), k), dim=2)  # [N, Hkv, 2T, hd]
    values = torch.cat((ref_v.repeat(n, 1, 1, 1), v), dim=2)
    y, _ = attention_function(attn.config)(attn, q, keys, values, mask, scaling=attn.scaling)  # [N, T, H, hd]
    return h + attn.o_proj(y.reshape(*h.shape[:-1], -1))


@dataclass
class OracleSetup:
    """Everything the engines share for one batch of sequences (on the model's device)."""

    model: object
    semantics: str
    h0: torch.Tensor  # [B, T1, d] embeddings of the scored positions (T1 = T - 1)
    rotations: torch.Tensor  # [1, T1, 1, hd/2] complex
    mask: torch.Tensor  # [T1, 2 T1] bool: fixed-context attention's keys
    targets: torch.Tensor  # [B, T1]
    w_target: torch.Tensor  # [N, d] float32 head rows of the targets (N = B * T1)
    ref_kv: list | None = None  # per layer (K, V) [B, Hkv, T1, hd] of the reference route
    leaf_rows: int = 1024
    proxy_rows: torch.Tensor | None = None  # [N, M, d] head rows of each token's reference top-M tokens
    proxy_is_target: torch.Tensor | None = None  # [N, M]
    bf16_leaf: BF16Leaf | None = None  # bf16 scoring with fp32 rescoring (precision="bf16")

    @property
    def num_layers(self) -> int:
        return len(self.model.model.layers)

    def attend(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Layer i's attention block on node states ``h [G, B, T1, d]``."""
        layer = self.model.model.layers[i]
        if self.semantics == "fixed-context":
            return fixed_context_attention(layer, h, *self.ref_kv[i], self.rotations, self.mask)
        G, B, T1, d = h.shape
        out = layer.attention_block(h.reshape(G * B, T1, d), self.rotations, None)
        return out.view(G, B, T1, d)

    def leaf(self, h: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Target-token losses ``[G, N]`` of final states ``h [G, B, T1, d]`` (norm, head, loss), in row
        chunks of ``leaf_rows`` (:func:`~duolib.oracle.leaf.logsumexp_rows`); with a bf16 leaf, ``rows [G]``
        are the states' pattern rows (it tracks what to rescore per pattern)."""
        G, d = h.shape[0], h.shape[-1]
        hn = self.model.model.norm(h).reshape(G, -1, d).float()  # [G, N, d]
        if self.bf16_leaf is not None:
            return self.bf16_leaf(hn, rows)
        target_logit = (hn * self.w_target).sum(-1)  # [G, N]
        lse = logsumexp_rows(hn.reshape(-1, d), self.model.lm_head.weight.float(), self.leaf_rows)
        return lse.view(G, -1) - target_logit

    def leaf_entropy(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Target-token losses and prediction entropies ``[G, N]`` each of final states ``h [G, B, T1, d]``
        (fp32, row chunks of ``leaf_rows``: :func:`~duolib.oracle.leaf.logsumexp_entropy_rows`)."""
        G, d = h.shape[0], h.shape[-1]
        hn = self.model.model.norm(h).reshape(G, -1, d).float()  # [G, N, d]
        target_logit = (hn * self.w_target).sum(-1)  # [G, N]
        lse, ent = logsumexp_entropy_rows(hn.reshape(-1, d), self.model.lm_head.weight, self.leaf_rows)
        return lse.view(G, -1) - target_logit, ent.view(G, -1)

    def proxy_leaf(self, h: torch.Tensor) -> torch.Tensor:
        """Restricted-vocabulary losses ``[G, N]``: ``logsumexp`` over each token's reference top-M
        tokens and its target only, minus the target logit (a cheap stand-in for :meth:`leaf`)."""
        G, d = h.shape[0], h.shape[-1]
        hn = self.model.model.norm(h).reshape(G, -1, d).float()  # [G, N, d]
        target_logit = (hn * self.w_target).sum(-1)  # [G, N]
        sub = torch.bmm(hn.transpose(0, 1), self.proxy_rows.transpose(1, 2)).transpose(0, 1)  # [G, N, M]
        sub = sub.masked_fill(self.proxy_is_target, float("-inf"))
        return torch.logsumexp(torch.cat([sub, target_logit[..., None]], -1), -1) - target_logit


def ffn_residual(layer, code: int, a: torch.Tensor, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Residual after the FFN slot: ``a + module(x)`` (``a`` for skip), written into ``out`` when given."""
    if code == SKIP:
        return a if out is None else out.copy_(a)
    return torch.add(a, layer.module(code)(x), out=out)


@torch.no_grad()
def oracle_setup(model, input_ids: torch.Tensor, semantics: str, reference="big", leaf_rows: int = 1024,
           proxy_vocab: int | None = None) -> OracleSetup:
    """Embeddings, rotary tables and target head rows; for fixed-context the reference keys /
    values of every layer; with ``proxy_vocab`` the reference route's top tokens (beam proxy)."""
    device = next(model.parameters()).device
    ids = input_ids.to(device)
    B, T = ids.shape
    T1 = T - 1
    h0 = model.model.embed_tokens(ids[:, :T1])  # [B, T1, d]
    positions = torch.arange(T1, device=device)[None]  # [1, T1]
    rotations = model.model.rotary_emb(positions)  # [1, T1, 1, hd/2]
    targets = ids[:, 1:]  # [B, T1]
    w_target = model.lm_head.weight.float()[targets.reshape(-1)]  # [N, d]
    setup = OracleSetup(model, semantics, h0, rotations, fixed_context_mask(T1, device), targets, w_target,
                   leaf_rows=leaf_rows)
    if semantics == "fixed-context" or proxy_vocab:
        routes = reference_routes(reference, setup.num_layers, B, T).to(device)[:, :T1]  # [B, T1, L]
        ref_kv, h = [], h0
        for i, layer in enumerate(model.model.layers):
            _, k, v = layer.self_attn.project(layer.input_layernorm(h), rotations)
            ref_kv.append((k, v))  # [B, Hkv, T1, hd]
            a = layer.attention_block(h, rotations, None)
            h = layer.ffn_hard(layer.post_attention_layernorm(a), routes[..., i], residual=a)
        if semantics == "fixed-context":
            setup.ref_kv = ref_kv
        if proxy_vocab:
            weight = model.lm_head.weight.float()
            logits = model.model.norm(h).reshape(-1, h.shape[-1]).float() @ weight.T  # [N, V]
            top = logits.topk(min(int(proxy_vocab), weight.shape[0]), dim=-1).indices  # [N, M]
            setup.proxy_rows = weight[top]  # [N, M, d]
            setup.proxy_is_target = top == targets.reshape(-1, 1)  # [N, M]: counted once, via the target
    return setup
