"""References for the trie engine: the brute-force loss matrix (one full forward per pattern) and the
FLOP accounting of both searches (:func:`trie_flops`, :func:`brute_force_flops`)."""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from ..flops import attention_flops, ffn_flops, head_flops
from ..routing import BIG, ROUTE_NAMES, SKIP, SMALL
from ..utils import eval_mode
from .engine import check_ids, check_semantics, make_matrix
from .patterns import resolve_patterns
from .setup import reference_routes
from .reductions import LossMatrix

@torch.no_grad()
def brute_force_loss_matrix(model, input_ids, patterns=None, *, choices=("small", "big"), k: int | None = None,
                            semantics: str = "shared", reference="big", progress: bool = False,
                            entropy: bool = False) -> LossMatrix:
    """The same matrix as :func:`loss_matrix`, by full :class:`~duolib.DuoForCausalLM` forwards.

    shared: one forward per pattern with ``routes=pattern``.  fixed-context: per pattern one forward
    of ``T - 1`` copies of the batch, copy t routed by the reference everywhere except token t
    (which takes the pattern); token t's loss is read from copy t (causal attention: only later
    tokens read token t, so this is exactly the fixed-context loss).  entropy: also the softmax entropy
    of each prediction, from the full logits (the reference of ``loss_matrix(..., entropy=True)``)."""
    check_semantics(semantics)
    input_ids = check_ids(model, input_ids)
    L = model.config.num_hidden_layers
    patterns, codes = resolve_patterns(L, patterns, choices, k)
    device = next(model.parameters()).device
    ids = input_ids.to(device)
    B, T = ids.shape
    T1 = T - 1
    start = time.perf_counter()
    losses = torch.empty(len(patterns), B * T1, dtype=torch.float32)
    ent = torch.empty(len(patterns), B * T1, dtype=torch.float32) if entropy else None
    if semantics == "fixed-context":
        ref = reference_routes(reference, L, B, T).to(device)
        copies = ids.repeat(T1, 1)  # [T1 * B, T]
        eye = torch.arange(T1, device=device)
    with eval_mode(model):
        for p, pattern in enumerate(tqdm(patterns, desc="brute force", unit="pattern", disable=not progress)):
            if semantics == "shared":
                out = model(ids, routes=pattern.long().to(device), labels=ids, return_token_losses=True, use_cache=False)
                losses[p] = out.token_losses.reshape(-1).float().cpu()
                if entropy:
                    ent[p] = softmax_entropy(out.logits[:, :T1]).reshape(-1).cpu()
            else:
                routes = ref[None].repeat(T1, 1, 1, 1)  # [T1 copies, B, T, L]
                routes[eye, :, eye] = pattern.long().to(device)
                out = model(copies, routes=routes.view(T1 * B, T, L), labels=copies, return_token_losses=True,
                            use_cache=False)
                tl = out.token_losses.view(T1, B, T1)  # [copy, B, position]
                losses[p] = tl[eye, :, eye].T.reshape(-1).float().cpu()  # copy t at position t
                if entropy:
                    h = softmax_entropy(out.logits[:, :T1]).view(T1, B, T1)
                    ent[p] = h[eye, :, eye].T.reshape(-1).cpu()
    stats = {"seconds": time.perf_counter() - start, "forwards": len(patterns)}
    return make_matrix(losses, patterns, input_ids, semantics, reference, codes, stats, entropy=ent)


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy ``-sum p log p`` (nats, fp32) of ``softmax(logits)`` over the last axis."""
    logp = torch.log_softmax(logits.float(), -1)
    return -(logp.exp() * logp).sum(-1)


def attention_node_flops(config, batch: int, t1: int) -> float:
    """Attention FLOPs of one node: ``batch`` sequences of ``t1`` positions (position t sees t + 1 keys)."""
    ctx = torch.arange(1, t1 + 1, dtype=torch.float64)
    return batch * float(attention_flops(config, ctx).sum())


def trie_flops(config, counts: dict, batch: int, seq_len: int) -> float:
    """Forward FLOPs of the trie engine for ``counts`` (:attr:`LossMatrix.stats`): one attention per
    internal node, one FFN per edge, one head per leaf, each over ``batch * (seq_len - 1)`` rows."""
    rows = batch * (seq_len - 1)
    ffn = sum(n * ffn_flops(config, ROUTE_NAMES.index(name)) for name, n in counts["edges"].items())
    return (counts["internal_nodes"] * attention_node_flops(config, batch, seq_len - 1)
            + rows * (ffn + counts["leaves"] * head_flops(config)))


def brute_force_flops(config, patterns: torch.Tensor, batch: int, seq_len: int) -> float:
    """Forward FLOPs of one full forward per pattern over the ``seq_len - 1`` scored positions."""
    L, rows = patterns.shape[1], batch * (seq_len - 1)
    per_code = torch.tensor([ffn_flops(config, c) for c in (SKIP, SMALL, BIG)], dtype=torch.float64)
    ffn = float(per_code[patterns.long()].sum())
    return (len(patterns) * (L * attention_node_flops(config, batch, seq_len - 1) + rows * head_flops(config))
            + rows * ffn)
