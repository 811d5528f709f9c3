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
enumerate; both start from :func:`~duolib.oracle.setup.oracle_setup`.  ``loss_matrix(..., distributed=True)`` shards the sequences over ``torch.distributed``
ranks and gathers the full matrix on every rank.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import check_context
from ..utils import eval_mode
from .leaf import BF16Leaf, certify_sets, resolve_precision
from .patterns import resolve_patterns
from .reductions import SEMANTICS, LossMatrix
from .setup import OracleSetup, ffn_residual, oracle_setup, reference_routes
from ..routing import BIG, ROUTE_NAMES, SKIP, SMALL

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
    check_context(cfg, input_ids.shape[1], "seq_len")
    if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= cfg.vocab_size):
        raise ValueError(f"input_ids must lie in 0..{cfg.vocab_size - 1} (the vocabulary)")
    return input_ids.long()


def make_matrix(losses, patterns, input_ids, semantics, reference, codes, stats, exact=None, bound=None,
                entropy=None) -> LossMatrix:
    """A :class:`LossMatrix` for sequences ``input_ids [B, T]`` (tokens sequence-major)."""
    B, T = input_ids.shape
    ref = None
    if semantics == "fixed-context":  # the reference: a pattern [L], or per-token routes [B, T, L]
        ref = reference if torch.is_tensor(reference) and reference.dim() == 3 else \
            reference_routes(reference, patterns.shape[1], 1, 1)[0, 0]
        ref = ref.to(torch.int8).cpu()
    return LossMatrix(losses, patterns, seq=torch.arange(B).repeat_interleave(T - 1),
                      position=torch.arange(T - 1).repeat(B), target=input_ids[:, 1:].reshape(-1).cpu(), seq_len=T,
                      semantics=semantics, reference=ref, choices=codes, stats=stats, exact=exact, error_bound=bound,
                      entropy=entropy)


def leaf_precision(precision: str, entropy: bool, device) -> str:
    """The leaf's precision: :func:`~duolib.oracle.leaf.resolve_precision`, fp32 whenever entropies are wanted."""
    if entropy and precision == "bf16":
        raise ValueError("entropy=True needs precision='fp32' (the bf16 leaf rescores only the entries a minimum "
                         "can use, and an entropy needs every logit); pass precision='fp32' or 'auto'")
    return "fp32" if entropy else resolve_precision(precision, device)


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
    def __init__(self, setup: OracleSetup, trie: _Trie, max_rows: int, bar, entropy: bool = False):
        self.setup, self.trie, self.bar = setup, trie, bar
        rows = setup.h0.shape[0] * setup.h0.shape[1]
        self.max_group = max(1, max_rows // max(1, rows))
        self.out = torch.empty(len(trie.patterns), rows, dtype=torch.float32)
        self.entropy = torch.empty(len(trie.patterns), rows, dtype=torch.float32) if entropy else None

    def descend(self, depth: int, h: torch.Tensor, nodes: list[tuple[int, int]]) -> None:
        """Expand the nodes ``nodes`` (row ranges) of ``depth`` whose states are ``h [G, B, T1, d]``."""
        setup = self.setup
        if depth == setup.num_layers:
            rows = torch.tensor([lo for lo, _ in nodes])
            if self.entropy is None:
                self.out[rows] = setup.leaf(h, rows).cpu()  # [G, N]
            else:
                losses, entropy = setup.leaf_entropy(h)
                self.out[rows], self.entropy[rows] = losses.cpu(), entropy.cpu()
            self.bar.update(len(nodes))
            return
        layer = setup.model.model.layers[depth]
        a = setup.attend(depth, h)  # [G, B, T1, d], shared by all children
        x = layer.post_attention_layernorm(a)
        kids = [(g, code, lo, hi) for g, node in enumerate(nodes) for code, lo, hi in self.trie.children(depth, *node)]
        for s in range(0, len(kids), self.max_group):
            chunk, child_nodes = kids[s:s + self.max_group], []
            out = a.new_empty(len(chunk), *a.shape[1:])  # the children's states, written in place
            for code in _FFN_ORDER:  # one module call per route for the whole chunk
                sel = [kid for kid in chunk if kid[1] == code]
                if not sel:
                    continue
                parents = [kid[0] for kid in sel]
                first, n = parents[0], len(parents)
                if parents == list(range(first, first + n)):  # consecutive parents: views, no copy
                    a_sel, x_sel = a[first:first + n], x[first:first + n]
                else:
                    index = torch.tensor(parents, device=a.device)
                    a_sel, x_sel = a.index_select(0, index), x.index_select(0, index)
                ffn_residual(layer, code, a_sel, x_sel, out=out[len(child_nodes):len(child_nodes) + n])
                child_nodes += [(lo, hi) for _, _, lo, hi in sel]
            self.descend(depth + 1, out, child_nodes)


@torch.no_grad()
def loss_matrix(model, input_ids, patterns=None, *, choices=("small", "big"), k: int | None = None,
                semantics: str = "shared", reference="big", max_rows: int = 16384, leaf_rows: int = 1024,
                progress: bool = False, distributed: bool = False, precision: str = "fp32",
                best_of: tuple[int, int] | None = (100, 0), entropy: bool = False) -> LossMatrix:
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
    entry shows the bf16 bound unsafe for the model, the work is redone in fp32 (``stats["precision"]``).
    entropy: also each prediction's softmax entropy (:attr:`LossMatrix.entropy`, :meth:`LossMatrix.label_free`) in the
    same head chunks; fp32 only ("auto" gives fp32); losses then agree with the default path's within rounding."""
    check_semantics(semantics)
    precision = leaf_precision(precision, entropy, next(model.parameters()).device)
    input_ids = check_ids(model, input_ids)
    L = model.config.num_hidden_layers
    patterns, codes = resolve_patterns(L, patterns, choices, k)
    if semantics == "fixed-context":
        reference_routes(reference, L, *input_ids.shape)  # validate before any work
    if distributed:
        return _distributed(model, input_ids, patterns, codes, semantics, reference, max_rows, leaf_rows, progress,
                            precision, best_of, entropy)
    B, T = input_ids.shape
    start = time.perf_counter()
    uniq, inverse = np.unique(patterns.numpy(), axis=0, return_inverse=True)
    inverse = torch.from_numpy(inverse.reshape(-1))
    trie, exact, bound, ent = _Trie(uniq), None, None, None
    stats = {**trie.counts(), "batch": B, "seq_len": T, "precision": "fp32"}
    losses = torch.empty(len(patterns), 0)
    if B > 0:
        sets = [] if best_of is None else [inverse[r].unique().numpy() for r in certify_sets(*best_of, patterns)]
        with eval_mode(model):
            losses, leaf, ent = _walk(model, input_ids, semantics, reference, leaf_rows, trie, max_rows, progress,
                                      precision, sets, entropy)
            if leaf is not None and not leaf.safe:
                warnings.warn(f"bf16 leaf error reached {leaf.worst_ratio:.2f} of its bound on this model; "
                              "the loss matrix is recomputed in fp32")
                stats["bf16_fallback"] = leaf.stats()
                losses, leaf, _ = _walk(model, input_ids, semantics, reference, leaf_rows, trie, max_rows, progress)
        losses = losses[inverse]
        ent = None if ent is None else ent[inverse]
        if leaf is not None:
            exact, bound = leaf.exact[inverse], leaf.error_bound[inverse]
            stats.update(leaf.stats())
    stats["seconds"] = time.perf_counter() - start
    return make_matrix(losses, patterns, input_ids, semantics, reference, codes, stats, exact, bound, ent)


def _walk(model, input_ids, semantics, reference, leaf_rows, trie, max_rows, progress, precision="fp32",
          random_sets=(), entropy=False) -> tuple[torch.Tensor, BF16Leaf | None, torch.Tensor | None]:
    """Losses ``[P_unique, N]`` of the trie's patterns, the bf16 leaf's record (None in fp32) and, with
    ``entropy``, the prediction entropies ``[P_unique, N]`` (else None)."""
    with tqdm(total=len(trie.patterns), desc=f"oracle ({semantics}, {precision})", unit="pattern",
              disable=not progress) as bar:
        setup = oracle_setup(model, input_ids, semantics, reference, leaf_rows)
        if precision == "bf16":
            setup.bf16_leaf = BF16Leaf(model.lm_head.weight.float(), setup.w_target, trie.patterns,
                                       setup.w_target.shape[0], leaf_rows, random_sets)
        walk = _TrieWalk(setup, trie, max_rows, bar, entropy)
        walk.descend(0, setup.h0[None], [(0, len(trie.patterns))])
    return walk.out, setup.bf16_leaf, walk.entropy


def _distributed(model, input_ids, patterns, codes, semantics, reference, max_rows, leaf_rows, progress, precision,
                 best_of, entropy=False):
    """Rank r computes sequences ``r::world``; every rank gathers the full matrix (sequence order kept)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("distributed=True needs an initialised torch.distributed process group")
    rank, world = dist.get_rank(), dist.get_world_size()
    B, T = input_ids.shape
    mine = torch.arange(B)[rank::world]
    ref = reference[mine] if torch.is_tensor(reference) and reference.dim() == 3 else reference
    local = loss_matrix(model, input_ids[mine], patterns, semantics=semantics, reference=ref, max_rows=max_rows,
                        leaf_rows=leaf_rows, progress=progress and rank == 0, precision=precision, best_of=best_of,
                        entropy=entropy)
    gathered = [None] * world
    dist.all_gather_object(gathered, (mine, local.losses, local.exact, local.error_bound, local.entropy))
    T1 = T - 1
    losses = torch.empty(len(patterns), B * T1, dtype=torch.float32)
    bf16 = any(part[2] is not None for part in gathered)  # each rank certified its own tokens
    exact, bound = (torch.ones(losses.shape, dtype=torch.bool), torch.zeros(len(patterns))) if bf16 else (None, None)
    ent = torch.empty_like(losses) if entropy else None
    for seqs, part, part_exact, part_bound, part_ent in gathered:
        cols = (seqs[:, None] * T1 + torch.arange(T1)).reshape(-1)
        losses[:, cols] = part
        if ent is not None and part_ent is not None:
            ent[:, cols] = part_ent
        if bf16 and part_exact is not None:
            exact[:, cols], bound = part_exact, torch.maximum(bound, part_bound)
    stats = {**local.stats, "world_size": world, "batch": B}
    return make_matrix(losses, patterns, input_ids, semantics, reference, codes, stats, exact, bound, ent)
