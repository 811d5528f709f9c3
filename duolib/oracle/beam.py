"""Approximate per-token oracle by beam search over the trie of route prefixes (spaces too large to
enumerate: 3^12, deeper models).  See :func:`beam_oracle`."""

from __future__ import annotations

from dataclasses import dataclass, field

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import checks
from ..utils import eval_mode
from .engine import check_ids, check_semantics
from .setup import ffn_residual, oracle_setup, reference_routes
from .brute_force import attention_node_flops
from .patterns import parse_choices
from .reductions import MeanTokenLoss
from ..routing import BIG, ROUTE_NAMES, SKIP
from ..flops import ffn_flops, head_flops

@dataclass
class BeamResult(MeanTokenLoss):
    """Approximate per-token oracle from :func:`beam_oracle`.

    token_losses ``[N]`` float32, patterns ``[N, L]`` int8 (each token's best pattern found);
    cost: rows evaluated per kind and the forward FLOPs they amount to (:func:`trie_flops` units)."""

    token_losses: torch.Tensor
    patterns: torch.Tensor
    width: int
    proxy: str
    semantics: str
    k: int | None
    proxy_vocab: int | None = None
    cost: dict = field(default_factory=dict)


PROXIES = ("early-exit", "suffix", "linear")


@torch.no_grad()
def beam_oracle(model, input_ids, width: int, *, choices=("small", "big"), k: int | None = None,
                semantics: str = "fixed-context", reference="big", proxy: str = "early-exit",
                proxy_vocab: int | None = None, max_rows: int = 16384, leaf_rows: int = 1024,
                progress: bool = False) -> BeamResult:
    """Approximate per-token oracle by beam search over the trie of route prefixes.

    Layer by layer, every kept prefix is extended by every choice (respecting exactly ``k`` big
    layers when given) and each token keeps the ``width`` candidates of lowest *proxy* loss:

    - ``"early-exit"`` [ours]: the loss of the prefix state read out directly by the final norm and
      head (one leaf per candidate);
    - ``"suffix"`` [ours]: the loss after completing the prefix with the reference route's
      remaining layers (more layers per candidate, a much better guide).  Even with a budget k the
      all-big reference suffix guides best: on the benchmark model, budget-completing suffixes
      (remaining big layers first, or last) gave 2-5x larger perplexity gaps;
    - ``"linear"`` [ours], fixed-context only: the suffix proxy linearised around the reference route,
      ``loss_ref + g_i . (h - h_ref_i)``, where ``g_i`` is the gradient of the token's reference loss
      with respect to its state after layer i (one forward and one backward of the reference route for
      all tokens, before the search).  A candidate then costs one dot product instead of the suffix's
      remaining layers and head.  Under fixed-context a token's loss depends only on its own path (the
      context is the reference's keys and values), so ``g_i`` is per token; under shared a token's
      state also moves every later token's loss, which one gradient per token cannot express.

    ``proxy_vocab=M`` [ours] makes the proxy cheap: its ``logsumexp`` runs over each token's M most
    likely tokens under the reference route (plus the target) instead of the whole vocabulary, so
    a candidate costs ``(M + 1) * d`` instead of ``V * d`` multiply-adds at its leaf.

    At the last layer the score is the exact loss; each token returns its best complete pattern.
    fixed-context: tokens are independent, so the beam is truly per token (state ``[W, B, T-1, d]``,
    slot w of each token holding its own prefix).  shared: a prefix's state is the whole sequence,
    so the nodes expanded are the *union* of the tokens' beams (cost grows when tokens disagree).
    ``cost`` counts rows and forward FLOPs, to compare with :func:`trie_flops` of the exhaustive search."""
    input_ids, codes, k, ref_pattern = _beam_inputs(model, input_ids, width, choices, k, semantics, reference,
                                                   proxy, proxy_vocab)
    start = time.perf_counter()
    with eval_mode(model):
        setup = oracle_setup(model, input_ids, semantics, reference, leaf_rows, proxy_vocab)
        search = _BeamSearch(model, setup, codes, k, ref_pattern, width, proxy, proxy_vocab, max_rows)
        bar = tqdm(total=search.L, desc=f"beam w={width} ({semantics})", unit="layer", disable=not progress)
        if semantics == "fixed-context":
            token_losses, patterns = search.per_token(bar)
        else:
            token_losses, patterns = search.shared_prefixes(bar)
        bar.close()
    cost = search.cost
    cost["seconds"] = time.perf_counter() - start
    return BeamResult(token_losses.float().cpu(), patterns.to(torch.int8).cpu(), int(width), proxy, semantics, k,
                      proxy_vocab, cost)


def _beam_inputs(model, input_ids, width, choices, k, semantics, reference, proxy, proxy_vocab):
    """Checked arguments of :func:`beam_oracle`: ids, choice codes, budget and the reference pattern
    (None for per-token reference routes)."""
    check_semantics(semantics)
    if proxy not in PROXIES:
        raise ValueError(f"proxy={proxy!r} is unknown; allowed: {', '.join(PROXIES)}")
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise ValueError(f"width={width!r} must be a positive integer")
    if proxy_vocab is not None and (isinstance(proxy_vocab, bool) or int(proxy_vocab) < 1):
        raise ValueError(f"proxy_vocab={proxy_vocab!r} must be a positive number of tokens or None")
    input_ids = check_ids(model, input_ids)
    L = model.config.num_hidden_layers
    codes = parse_choices(choices)
    if k is not None:
        k = checks.budget("k", k, L)
        if k > 0 and BIG not in codes:
            raise ValueError(f"k={k} big layers needs 'big' among the choices")
    ref = reference_routes(reference, L, *input_ids.shape)
    if ref.dim() == 3 and not (ref == ref[:1, :1]).all():
        ref_pattern = None
    else:
        ref_pattern = ref[0, 0]
    if proxy in ("suffix", "linear") and ref_pattern is None:
        raise ValueError(f"proxy={proxy!r} needs a single reference pattern (not per-token routes)")
    if proxy == "linear" and semantics != "fixed-context":
        raise ValueError("proxy='linear' needs semantics='fixed-context' (under shared a token's state also "
                         "changes later tokens' losses, which its own gradient does not capture)")
    if proxy == "linear" and proxy_vocab is not None:
        raise ValueError("proxy_vocab restricts the read-out of the early-exit and suffix proxies; "
                         "proxy='linear' reads nothing out before the last layer")
    return input_ids, codes, k, ref_pattern


def linearize(model, setup, ref_pattern) -> tuple[list, torch.Tensor, list]:
    """The reference route's states after layers ``0 .. L-2`` (``[1, B, T1, d]`` each), every token's
    reference loss ``[1, N]`` and the gradients ``g_i`` of each token's loss with respect to its own
    states (same shapes as the states), for a fixed-context ``setup`` (:func:`oracle_setup`).

    The head's gradient ``softmax(hn W^T) W - w_target`` is formed in row chunks of ``setup.leaf_rows``
    (the ``[N, vocab]`` logits never exist at once), then one backward runs through the layers.  Under
    fixed-context a token's context is the reference's constant keys and values, so the summed
    backward gives each token the gradient of its own loss."""
    N = setup.targets.numel()
    with torch.enable_grad():
        h, states = setup.h0[None].detach().requires_grad_(), []  # a graph even with frozen weights
        for i, layer in enumerate(model.model.layers):
            a = setup.attend(i, h)
            h = ffn_residual(layer, int(ref_pattern[i]), a, layer.post_attention_layernorm(a))
            states.append(h)
        hn = model.model.norm(h).float()  # [1, B, T1, d]
        with torch.no_grad():
            weight, flat = model.lm_head.weight.float(), hn.detach().reshape(N, -1)
            grad = torch.cat([torch.softmax(flat[s:s + setup.leaf_rows] @ weight.T, -1) @ weight
                              for s in range(0, N, setup.leaf_rows)]) - setup.w_target  # [N, d]
            ref_loss = setup.leaf(h.detach())  # [1, N]
        grads = torch.autograd.grad(hn, states[:-1], grad.view_as(hn)) if len(states) > 1 else ()
    return [x.detach() for x in states[:-1]], ref_loss, [g.detach() for g in grads]


class _BeamSearch:
    """One beam search: the cost ledger, proxy scoring, the budget rule and the two layer loops."""

    def __init__(self, model, setup, codes, k, ref_pattern, width, proxy, proxy_vocab, max_rows):
        self.model, self.setup, self.codes, self.k, self.ref_pattern = model, setup, codes, k, ref_pattern
        self.width, self.proxy, self.proxy_vocab = width, proxy, proxy_vocab
        self.cfg = model.config
        self.L = self.cfg.num_hidden_layers
        self.B, self.T1, self.d = setup.h0.shape
        self.N = self.B * self.T1
        self.cost = {"attention_rows": 0, "ffn_rows": {n: 0 for n in ROUTE_NAMES}, "leaf_rows": 0, "proxy_rows": 0,
                     "flops": 0.0}
        self.attn_row = attention_node_flops(self.cfg, self.B, self.T1) / self.N  # mean attention FLOPs per row
        self.group = max(1, max_rows // self.N)
        if proxy == "linear":
            self.linearize()

    def count(self, kind: str, rows: int, code: int | None = None):
        cost, cfg = self.cost, self.cfg
        if kind == "attention":
            cost["attention_rows"] += rows
            cost["flops"] += rows * self.attn_row
        elif kind == "ffn":
            cost["ffn_rows"][ROUTE_NAMES[code]] += rows
            cost["flops"] += rows * ffn_flops(cfg, code)
        elif kind == "proxy":
            cost["proxy_rows"] += rows
            vocab = 0 if self.proxy == "linear" else self.setup.proxy_rows.shape[1] + 1
            cost["flops"] += rows * 2 * cfg.hidden_size * max(1, vocab)  # linear: one dot product
        else:
            cost["leaf_rows"] += rows
            cost["flops"] += rows * head_flops(cfg)

    def suffix_step(self, j, h):
        """Layer j of the reference suffix on states ``h [G, B, T1, d]``."""
        layer, code = self.model.model.layers[j], int(self.ref_pattern[j])
        a = self.setup.attend(j, h)
        self.count("attention", len(h) * self.N)
        self.count("ffn", len(h) * self.N, code)
        return ffn_residual(layer, code, a, layer.post_attention_layernorm(a))

    def linearize(self):
        """Reference states, losses and gradients of the ``"linear"`` proxy (:func:`linearize`), and their cost."""
        self.ref_states, self.ref_loss, self.grads = linearize(self.model, self.setup, self.ref_pattern)
        forward = sum(self.attn_row + ffn_flops(self.cfg, int(c)) for c in self.ref_pattern) + head_flops(self.cfg)
        self.cost["linearization_rows"] = self.N
        self.cost["flops"] += 3 * self.N * forward  # the forward, and a backward of about twice its cost

    def score(self, i, h):
        """Proxy (or, at the last layer, exact) losses ``[G, N]`` of depth-(i + 1) states ``h``."""
        setup, group, L, N = self.setup, self.group, self.L, self.N
        if self.proxy == "linear" and i < L - 1:
            self.count("proxy", len(h) * N)
            return self.ref_loss + ((h - self.ref_states[i]) * self.grads[i]).sum(-1).reshape(len(h), N)
        losses = []
        for s in range(0, len(h), group):
            c = h[s:s + group]
            if self.proxy == "suffix":
                for j in range(i + 1, L):
                    c = self.suffix_step(j, c)
            if self.proxy_vocab and i < L - 1:
                losses.append(setup.proxy_leaf(c))
                self.count("proxy", len(c) * N)
            else:
                losses.append(setup.leaf(c))
                self.count("leaf", len(c) * N)
        return torch.cat(losses)

    def allowed(self, nbig, depth_done):
        """Whether prefixes with ``nbig`` bigs after ``depth_done`` layers can end with exactly k."""
        k = self.k
        if k is None:
            return torch.ones_like(nbig, dtype=torch.bool)
        room = (self.L - depth_done) if BIG in self.codes else 0
        return (nbig <= k) & (nbig + room >= k)

    def per_token(self, bar):
        """fixed-context: slot w of every token holds that token's own prefix (state ``[W, B, T1, d]``)."""
        setup, codes, width, group, count, score, allowed = (self.setup, self.codes, self.width, self.group,
                                                             self.count, self.score, self.allowed)
        B, T1, d, N, L, C = self.B, self.T1, self.d, self.N, self.L, len(codes)
        code_t = torch.tensor(codes, device=setup.h0.device)
        h = setup.h0[None]  # [W, B, T1, d]: slot w of every token
        hist = torch.zeros(1, B, T1, 0, dtype=torch.int8, device=h.device)  # [W, B, T1, depth]
        for i in range(L):
            W = h.shape[0]
            layer = self.model.model.layers[i]
            a = torch.cat([setup.attend(i, h[s:s + group]) for s in range(0, W, group)])
            x = layer.post_attention_layernorm(a)
            count("attention", W * N)
            cand = []
            for code in codes:  # [C * W, B, T1, d], code-major
                cand.append(ffn_residual(layer, code, a, x))
                if code != SKIP:
                    count("ffn", W * N, code)
            cand = torch.cat(cand)
            new = code_t.to(torch.int8).repeat_interleave(W)[:, None, None, None]  # [C * W, 1, 1, 1]
            cand_hist = torch.cat([hist.repeat(C, 1, 1, 1), new.expand(C * W, B, T1, 1)], dim=-1)
            nbig = (cand_hist == BIG).sum(-1)  # [C * W, B, T1]
            sc = score(i, cand).view(C * W, B, T1)
            sc = sc.masked_fill(~allowed(nbig, i + 1), float("inf"))
            if i < L - 1:
                keep = min(width, C * W)
                idx = sc.topk(keep, dim=0, largest=False).indices  # [keep, B, T1]
                h = cand.gather(0, idx[..., None].expand(keep, B, T1, d))
                hist = cand_hist.gather(0, idx[..., None].expand(keep, B, T1, i + 1))
            else:
                best, arg = sc.min(0)  # [B, T1]
                token_losses = best.reshape(-1)
                patterns = cand_hist.gather(0, arg[None, ..., None].expand(1, B, T1, L))[0].reshape(N, L)
            bar.update(1)
        return token_losses, patterns

    def shared_prefixes(self, bar):
        """shared: a prefix's state is the whole sequence, so the expanded nodes are the union of the
        tokens' beams (state ``[S, B, T1, d]``, one per kept prefix)."""
        setup, codes, width, group, count, score, allowed = (self.setup, self.codes, self.width, self.group,
                                                             self.count, self.score, self.allowed)
        N, L = self.N, self.L
        h = setup.h0[None]  # [S, B, T1, d]: one state per kept prefix
        hist = torch.zeros(1, 0, dtype=torch.int8)  # [S, depth]
        for i in range(L):
            S = h.shape[0]
            layer = self.model.model.layers[i]
            cand, cand_hist = [], []
            for s in range(0, S, group):
                a = setup.attend(i, h[s:s + group])
                x = layer.post_attention_layernorm(a)
                for code in codes:
                    cand.append(ffn_residual(layer, code, a, x))
                    new = torch.full((len(a), 1), code, dtype=torch.int8)
                    cand_hist.append(torch.cat([hist[s:s + group], new], 1))
                    if code != SKIP:
                        count("ffn", len(a) * N, code)
            count("attention", S * N)
            cand, cand_hist = torch.cat(cand), torch.cat(cand_hist)  # [S * C, B, T1, d], [S * C, i + 1]
            ok = allowed((cand_hist == BIG).sum(-1), i + 1)
            cand, cand_hist = cand[ok.to(cand.device)], cand_hist[ok]
            sc = score(i, cand)  # [S', N]
            if i < L - 1:
                idx = sc.topk(min(width, len(sc)), dim=0, largest=False).indices  # [width, N]
                kept = idx.unique().cpu()
                h, hist = cand[kept.to(cand.device)], cand_hist[kept]
            else:
                best, arg = sc.min(0)  # [N]
                token_losses, patterns = best, cand_hist[arg.cpu()]
            bar.update(1)
        return token_losses, patterns
