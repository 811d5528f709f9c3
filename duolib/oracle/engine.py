"""Routing oracles: the loss of every token under every routing pattern, computed fast.

:func:`loss_matrix` returns a :class:`~duolib.oracle.reductions.LossMatrix` ``L[pattern, token]`` for
sequences ``[B, T]`` and a set of patterns (all of ``choices ** L``, optionally only those with
exactly ``k`` big layers, or an explicit list), under one of two context semantics:

``shared``
    the pattern routes every token of the sequence (one full forward per pattern).
``fixed-context``
    context tokens keep a *reference* route (default all-big); only the scored token's own path
    changes: at each layer its attention reads the reference keys / values of the earlier positions
    (computed once) plus its own key / value computed on its own path.

The engine walks the trie of route prefixes depth first.  Layer i's state depends only on the
routes of layers ``< i``, so each distinct prefix is computed once for all tokens: the attention of
a node is computed once and shared by its children, which differ only by their FFN.  Nodes of the
same depth are batched (a leading "node" dimension, at most ``max_rows`` token rows at a time, which
also bounds memory), and the FFN of all children taking the same module runs as one call.  Leaves
compute only the target token's loss, ``logsumexp(h W^T) - h . w_target``, in row chunks: the
``[patterns, tokens, vocab]`` log-softmax never exists.  All tokens of the last position are dropped
up front (no target, and nothing reads them under causal attention).

:func:`~duolib.oracle.brute_force.brute_force_loss_matrix` is the reference (one :class:`~duolib.DuoForCausalLM` forward per
pattern); :func:`~duolib.oracle.beam.beam_oracle` approximates the per-token oracle when the space is too large to
enumerate.  ``loss_matrix(..., distributed=True)`` shards the sequences over ``torch.distributed``
ranks and gathers the full matrix on every rank.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..utils import eval_mode
from .leaf import BF16Leaf, certify_sets, logsumexp_rows, resolve_precision
from .reductions import SEMANTICS, LossMatrix, check_budget, enumerate_patterns, parse_choices
from ..layers import attention_function
from ..routing import BIG, ROUTE_NAMES, SKIP, SMALL, as_pattern, check_codes

_FFN_ORDER = (BIG, SMALL, SKIP)


# ----------------------------------------------------------------------------- validation

def check_semantics(semantics: str) -> str:
    if semantics not in SEMANTICS:
        raise ValueError(f"semantics={semantics!r} is unknown; allowed: {', '.join(SEMANTICS)}")
    return semantics


def check_ids(model, input_ids: torch.Tensor) -> torch.Tensor:
    input_ids = torch.as_tensor(input_ids)
    if input_ids.dim() != 2 or input_ids.shape[1] < 2:
        raise ValueError(f"input_ids must be [batch, seq_len] with seq_len >= 2; got shape {tuple(input_ids.shape)}")
    cfg = model.config
    if input_ids.shape[1] > cfg.max_position_embeddings:
        raise ValueError(f"seq_len={input_ids.shape[1]} exceeds max_position_embeddings={cfg.max_position_embeddings}")
    if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= cfg.vocab_size):
        raise ValueError(f"input_ids must lie in 0..{cfg.vocab_size - 1} (the vocabulary)")
    return input_ids.long()


def resolve_patterns(num_layers: int, patterns=None, choices=("small", "big"), k: int | None = None
                     ) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The pattern set ``[P, L]`` int8 and its choices: ``patterns`` if given (validated; rows with
    exactly ``k`` big layers if k is given), else every pattern over ``choices`` (with ``k`` bigs)."""
    if patterns is None:
        codes = parse_choices(choices)
        return enumerate_patterns(num_layers, codes, k), codes
    if isinstance(patterns, str):
        patterns = [patterns]
    if not torch.is_tensor(patterns):
        patterns = [as_pattern(p, num_layers) for p in patterns] if len(patterns) else []
        if not patterns:
            raise ValueError("the pattern set is empty; give at least one pattern of "
                             f"{num_layers} route codes (0 skip, 1 small, 2 big)")
        patterns = torch.stack(patterns)
    if patterns.dim() != 2 or patterns.shape[1] != num_layers:
        raise ValueError(f"patterns must be [num_patterns, {num_layers}]; got shape {tuple(patterns.shape)}")
    if patterns.shape[0] == 0:
        raise ValueError(f"the pattern set is empty; give at least one pattern of {num_layers} route codes")
    check_codes(patterns, "patterns")
    patterns = patterns.to(torch.int8)
    if k is not None:
        k = check_budget(k, num_layers)
        patterns = patterns[(patterns == BIG).sum(1) == k]
        if patterns.shape[0] == 0:
            raise ValueError(f"no given pattern has exactly k={k} big layers")
    return patterns, tuple(sorted(set(patterns.unique().tolist())))


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


def make_matrix(losses, patterns, input_ids, semantics, reference, codes, stats, exact=None, bound=None
                ) -> LossMatrix:
    """A :class:`LossMatrix` for sequences ``input_ids [B, T]`` (tokens sequence-major)."""
    B, T = input_ids.shape
    ref = None
    if semantics == "fixed-context":  # the reference: a pattern [L], or per-token routes [B, T, L]
        ref = reference if torch.is_tensor(reference) and reference.dim() == 3 else \
            reference_routes(reference, patterns.shape[1], 1, 1)[0, 0]
        ref = ref.to(torch.int8).cpu()
    return LossMatrix(losses, patterns, seq=torch.arange(B).repeat_interleave(T - 1),
                      position=torch.arange(T - 1).repeat(B), target=input_ids[:, 1:].reshape(-1).cpu(), seq_len=T,
                      semantics=semantics, reference=ref, choices=codes, stats=stats, exact=exact, error_bound=bound)


# ----------------------------------------------------------------------------- layer pieces

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

    def proxy_leaf(self, h: torch.Tensor) -> torch.Tensor:
        """Restricted-vocabulary losses ``[G, N]``: ``logsumexp`` over each token's reference top-M
        tokens and its target only, minus the target logit (a cheap stand-in for :meth:`leaf`)."""
        G, d = h.shape[0], h.shape[-1]
        hn = self.model.model.norm(h).reshape(G, -1, d).float()  # [G, N, d]
        target_logit = (hn * self.w_target).sum(-1)  # [G, N]
        sub = torch.bmm(hn.transpose(0, 1), self.proxy_rows.transpose(1, 2)).transpose(0, 1)  # [G, N, M]
        sub = sub.masked_fill(self.proxy_is_target, float("-inf"))
        return torch.logsumexp(torch.cat([sub, target_logit[..., None]], -1), -1) - target_logit


def ffn_residual(layer, code: int, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Residual after the FFN slot: ``a + module(x)`` (``a`` for skip)."""
    return a if code == SKIP else a + layer.module(code)(x)


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


# ----------------------------------------------------------------------------- trie engine

class _Trie:
    """Trie of lexicographically sorted unique patterns ``[P, L]``: a depth-i node is a row range
    ``[lo, hi)`` sharing a prefix of length i; ``starts[i]`` lists the first rows of depth-i nodes."""

    def __init__(self, patterns: np.ndarray):
        self.patterns = patterns
        P, L = patterns.shape
        change = np.zeros(P, dtype=bool)
        change[0] = True
        self.starts = [np.array([0])]
        for i in range(L):
            change = change | np.r_[True, patterns[1:, i] != patterns[:-1, i]]
            self.starts.append(np.flatnonzero(change))

    def children(self, depth: int, lo: int, hi: int) -> list[tuple[int, int, int]]:
        """(code, lo, hi) of the children of node ``[lo, hi)`` at ``depth``."""
        s = self.starts[depth + 1]
        bounds = list(s[np.searchsorted(s, lo):np.searchsorted(s, hi)]) + [hi]
        return [(int(self.patterns[b, depth]), int(b), int(e)) for b, e in zip(bounds[:-1], bounds[1:])]

    def counts(self) -> dict:
        """Nodes per kind: internal nodes (one attention each), FFN edges by route, leaves."""
        L = self.patterns.shape[1]
        edges = {name: 0 for name in ROUTE_NAMES}
        for i in range(L):
            codes = self.patterns[self.starts[i + 1], i]
            for c in (SKIP, SMALL, BIG):
                edges[ROUTE_NAMES[c]] += int((codes == c).sum())
        return {"internal_nodes": int(sum(len(s) for s in self.starts[:L])), "edges": edges,
                "leaves": int(len(self.starts[L]))}


class _TrieWalk:
    def __init__(self, setup: OracleSetup, trie: _Trie, max_rows: int, bar):
        self.setup, self.trie, self.bar = setup, trie, bar
        rows = setup.h0.shape[0] * setup.h0.shape[1]
        self.max_group = max(1, max_rows // max(1, rows))
        self.out = torch.empty(len(trie.patterns), rows, dtype=torch.float32)

    def descend(self, depth: int, h: torch.Tensor, nodes: list[tuple[int, int]]) -> None:
        """Expand the nodes ``nodes`` (row ranges) of ``depth`` whose states are ``h [G, B, T1, d]``."""
        setup = self.setup
        if depth == setup.num_layers:
            rows = torch.tensor([lo for lo, _ in nodes])
            self.out[rows] = setup.leaf(h, rows).cpu()  # [G, N]
            self.bar.update(len(nodes))
            return
        layer = setup.model.model.layers[depth]
        a = setup.attend(depth, h)  # [G, B, T1, d], shared by all children
        x = layer.post_attention_layernorm(a)
        kids = [(g, code, lo, hi) for g, node in enumerate(nodes) for code, lo, hi in self.trie.children(depth, *node)]
        for s in range(0, len(kids), self.max_group):
            chunk, parts, child_nodes = kids[s:s + self.max_group], [], []
            for code in _FFN_ORDER:  # one module call per route for the whole chunk
                sel = [kid for kid in chunk if kid[1] == code]
                if not sel:
                    continue
                idx = [kid[0] for kid in sel]
                if idx == list(range(len(nodes))):
                    parts.append(ffn_residual(layer, code, a, x))
                else:
                    index = torch.tensor(idx, device=a.device)
                    parts.append(ffn_residual(layer, code, a.index_select(0, index), x.index_select(0, index)))
                child_nodes += [(lo, hi) for _, _, lo, hi in sel]
            self.descend(depth + 1, parts[0] if len(parts) == 1 else torch.cat(parts), child_nodes)


@torch.no_grad()
def loss_matrix(model, input_ids, patterns=None, *, choices=("small", "big"), k: int | None = None,
                semantics: str = "shared", reference="big", max_rows: int = 16384, leaf_rows: int = 1024,
                progress: bool = False, distributed: bool = False, precision: str = "fp32",
                best_of: tuple[int, int] | None = (100, 0)) -> LossMatrix:
    """The loss matrix ``[P, N]`` of ``patterns`` (default: every pattern over ``choices``, only
    those with exactly ``k`` big layers if k is given) on ``input_ids [B, T]``.

    semantics: ``"shared"`` or ``"fixed-context"`` (the module docstring); reference: the context
    route of fixed-context (a pattern, a route name such as ``"big"``, or routes ``[B, T, L]``).
    max_rows: token rows per batched node group (``max(1, max_rows // (B * (T-1)))`` nodes).  It
    bounds memory: about ``3 * L * max_rows * d`` floats of node states along the depth-first path,
    plus one FFN's ``max_rows x ffn_size`` and, for fixed-context, ``max_rows x heads x (T-1)``
    attention scores (lower it for long sequences or wide models);
    leaf_rows: rows per head chunk (the logits chunk is ``leaf_rows x vocab`` floats).
    distributed: shard sequences over the initialised ``torch.distributed`` ranks and gather.
    precision: ``"fp32"``; ``"bf16"``: leaves scored with bf16 products and every entry that a per-token
    minimum, the fixed pattern or a uniform pattern can use rescored in fp32 (:mod:`duolib.oracle.leaf`);
    the matrix records which entries are exact and certifies its minima; ``"auto"``: bf16 on a CPU with
    AMX-BF16 units, else fp32.  The default stays fp32: a bf16 matrix's other entries are bf16 scores.
    best_of: ``(n, seed)`` of the best-of-N samples a bf16 run certifies too (None: none).  If a rescored
    entry shows the bf16 bound unsafe for the model, the work is redone in fp32 (``stats["precision"]``)."""
    check_semantics(semantics)
    precision = resolve_precision(precision, next(model.parameters()).device)
    input_ids = check_ids(model, input_ids)
    L = model.config.num_hidden_layers
    patterns, codes = resolve_patterns(L, patterns, choices, k)
    if semantics == "fixed-context":
        reference_routes(reference, L, *input_ids.shape)  # validate before any work
    if distributed:
        return _distributed(model, input_ids, patterns, codes, semantics, reference, max_rows, leaf_rows, progress,
                            precision, best_of)
    B, T = input_ids.shape
    start = time.perf_counter()
    uniq, inverse = np.unique(patterns.numpy(), axis=0, return_inverse=True)
    inverse = torch.from_numpy(inverse.reshape(-1))
    trie, exact, bound = _Trie(uniq), None, None
    stats = {**trie.counts(), "batch": B, "seq_len": T, "precision": "fp32"}
    losses = torch.empty(len(patterns), 0)
    if B > 0:
        sets = [] if best_of is None else [inverse[r].unique().numpy() for r in certify_sets(*best_of, patterns)]
        with eval_mode(model):
            losses, leaf = _walk(model, input_ids, semantics, reference, leaf_rows, trie, max_rows, progress,
                                 precision, sets)
            if leaf is not None and not leaf.safe:
                warnings.warn(f"bf16 leaf error reached {leaf.worst_ratio:.2f} of its bound on this model; "
                              "the loss matrix is recomputed in fp32")
                stats["bf16_fallback"] = leaf.stats()
                losses, leaf = _walk(model, input_ids, semantics, reference, leaf_rows, trie, max_rows, progress)
        losses = losses[inverse]
        if leaf is not None:
            exact, bound = leaf.exact[inverse], leaf.error_bound[inverse]
            stats.update(leaf.stats())
    stats["seconds"] = time.perf_counter() - start
    return make_matrix(losses, patterns, input_ids, semantics, reference, codes, stats, exact, bound)


def _walk(model, input_ids, semantics, reference, leaf_rows, trie, max_rows, progress, precision="fp32",
          random_sets=()) -> tuple[torch.Tensor, BF16Leaf | None]:
    """Losses ``[P_unique, N]`` of the trie's patterns, and the bf16 leaf's record (None in fp32)."""
    with tqdm(total=len(trie.patterns), desc=f"oracle ({semantics}, {precision})", unit="pattern",
              disable=not progress) as bar:
        setup = oracle_setup(model, input_ids, semantics, reference, leaf_rows)
        if precision == "bf16":
            setup.bf16_leaf = BF16Leaf(model.lm_head.weight.float(), setup.w_target, trie.patterns,
                                       setup.w_target.shape[0], leaf_rows, random_sets)
        walk = _TrieWalk(setup, trie, max_rows, bar)
        walk.descend(0, setup.h0[None], [(0, len(trie.patterns))])
    return walk.out, setup.bf16_leaf


def _distributed(model, input_ids, patterns, codes, semantics, reference, max_rows, leaf_rows, progress, precision,
                 best_of):
    """Rank r computes sequences ``r::world``; every rank gathers the full matrix (sequence order kept)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("distributed=True needs an initialised torch.distributed process group")
    rank, world = dist.get_rank(), dist.get_world_size()
    B, T = input_ids.shape
    mine = torch.arange(B)[rank::world]
    ref = reference[mine] if torch.is_tensor(reference) and reference.dim() == 3 else reference
    local = loss_matrix(model, input_ids[mine], patterns, semantics=semantics, reference=ref, max_rows=max_rows,
                        leaf_rows=leaf_rows, progress=progress and rank == 0, precision=precision, best_of=best_of)
    gathered = [None] * world
    dist.all_gather_object(gathered, (mine, local.losses, local.exact, local.error_bound))
    T1 = T - 1
    losses = torch.empty(len(patterns), B * T1, dtype=torch.float32)
    bf16 = any(part[2] is not None for part in gathered)  # each rank certified its own tokens
    exact, bound = (torch.ones(losses.shape, dtype=torch.bool), torch.zeros(len(patterns))) if bf16 else (None, None)
    for seqs, part, part_exact, part_bound in gathered:
        cols = (seqs[:, None] * T1 + torch.arange(T1)).reshape(-1)
        losses[:, cols] = part
        if bf16 and part_exact is not None:
            exact[:, cols], bound = part_exact, torch.maximum(bound, part_bound)
    stats = {**local.stats, "world_size": world, "batch": B}
    return make_matrix(losses, patterns, input_ids, semantics, reference, codes, stats, exact, bound)
