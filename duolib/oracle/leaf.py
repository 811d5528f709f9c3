"""The oracle's leaves: target-token losses of final states, in fp32 or in bfloat16 with exact rescoring.

A leaf turns final hidden states into ``loss = logsumexp(norm(h) W^T) - norm(h) . w_target``.  Its
``[rows, vocab]`` head product is most of the oracle's multiply-adds, and the CPU's bfloat16 matrix units
run it several times faster than fp32.  :class:`BF16Leaf` scores every leaf row that way and then
rescores in fp32 every entry that could still matter, so the reductions stay those of the fp32 engine:

*Error bound.*  With ``hn`` and ``W`` rounded to bf16 (relative error ``u = 2^-9`` each), fp32
accumulation and the logits rounded to bf16, every logit is off by at most about ``3 u |hn| |w_v|``;
``logsumexp`` (in fp32) moves by at most the largest logit error.
:data:`ERROR_SCALE` replaces the worst-case ``3 u`` by a measured safe multiple (see its comment); every
rescored entry checks it (:attr:`BF16Leaf.worst_ratio`) and :func:`duolib.oracle.engine.loss_matrix` redoes
the work in fp32 if an observed error exceeds half the bound.  Each pattern row ``p`` gets one bound
``e_p`` (its largest ``|hn|`` over the tokens).

*Rescoring rule.*  The trie visits leaves in order.  For every group of patterns whose per-token
minimum a reduction takes (same number of big layers; the seeded best-of-N subsets), ``best[g, n]``
is the lowest *exact* loss of token ``n`` seen so far.  An entry is rescored in fp32 when its lower
bound ``v - e_p`` is ``<= best`` of one of its groups; otherwise it can be the minimum of none of them
(``best`` only falls; within one batch of leaves it is first lowered to the smallest upper bound
``v + e_p`` of the batch, whose entry is itself rescored).  Rows whose bf16 mean is within
:data:`MEAN_MARGIN` of the best mean of a group are rescored whole (the fixed pattern and the best of
N keep exact rows and means), and so are the patterns with at most one change of route along the
layers (all big, all small, all skip, early exit: rows the book reads whole).
:class:`~duolib.oracle.reductions.LossMatrix` keeps the mask of exact entries and the bounds, and certifies
every per-token minimum it reports.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..routing import BIG
from ..utils import amx_usable
from .sampling import random_rows

PRECISIONS = ("auto", "fp32", "bf16")
#: Bound on a bf16 leaf loss error per unit of ``|norm(h)| max_v |w_v|``.  The worst case is 3 * 2^-9;
#: the largest ratio observed on the default model was 4.7e-4, so 2^-9 (4x that) is used, with the
#: run-time check as the fallback.
ERROR_SCALE = 2.0 ** -9
#: fp32 rounding of the exponentials and their sum (relative, far below the bf16 terms).
ERROR_EXP = 1e-5
#: Margin on a row's mean loss for rescoring it whole.  The errors of a row's tokens cancel only partly
#: in its mean (the bf16 head rows err the same way for every token): up to 5.6e-4 was measured on a
#: 128-token slice of the default model.  Checked at run time like the entry bound.
MEAN_MARGIN = 2e-3
#: An observed error above this share of its bound means the bound is unsafe for the model.
CHECK_SHARE = 0.5


def resolve_precision(precision: str, device) -> str:
    """``"fp32"`` or ``"bf16"``; ``"auto"`` is bf16 on a CPU with AMX-BF16 matrix units that oneDNN may use
    (:func:`duolib.utils.amx_usable`; there the bf16 head product measured several times faster than fp32:
    ``benchmarks/bench_levers.py``), else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is unknown; allowed: {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    # not Linux: no flags, no way to tell, stay with fp32
    return "bf16" if torch.device(device).type == "cpu" and amx_usable() else "fp32"


def logsumexp_rows(flat: torch.Tensor, weight: torch.Tensor, chunk: int) -> torch.Tensor:
    """``logsumexp(flat W^T)`` per row ``[R]`` (fp32), in row chunks of ``chunk`` (one reused buffer).

    When every logit of a chunk is provably in [-64, 64] (``|h| max_v |w_v|``) the max subtraction is
    skipped (exp cannot overflow or underflow there): one pass fewer."""
    bound = flat.float().norm(dim=-1) * weight.float().norm(dim=-1).max()  # [R] >= |every logit|
    lse = torch.empty(flat.shape[0], dtype=torch.float32, device=flat.device)
    n = min(chunk, flat.shape[0])
    buf = torch.empty(n, weight.shape[0], dtype=torch.float32, device=flat.device)
    low = torch.empty(n, weight.shape[0], dtype=weight.dtype, device=flat.device) if weight.dtype != buf.dtype else buf
    for s in range(0, flat.shape[0], chunk):
        rows = flat[s:s + chunk]
        r = rows.shape[0]
        logits = torch.mm(rows, weight.T, out=low[:r])  # [r, V]
        if logits.dtype != buf.dtype:  # bf16 products: exp and sum in fp32 (faster and exact there)
            logits = buf[:r].copy_(logits)
        if bool(bound[s:s + chunk].max() < 64.0):
            lse[s:s + r] = logits.exp_().sum(-1).log_()
        else:
            top = logits.amax(-1, keepdim=True)
            lse[s:s + r] = logits.sub_(top).exp_().sum(-1).log_() + top[:, 0]
    return lse


def logsumexp_entropy_rows(flat: torch.Tensor, weight: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``logsumexp(z)`` and the softmax entropy ``H = logsumexp(z) - sum softmax(z) z`` per row ``[R]``
    (fp32) of ``z = flat W^T``, in row chunks of ``chunk``: the label-free oracle's confidence of a route.

    With ``e = exp(z - max z)`` and ``s = sum e``: ``H = log s - sum e (z - max z) / s`` (shifted logits,
    so no term overflows).  A separate function from :func:`logsumexp_rows`, which the default engine keeps
    using unchanged: this one reads every logit twice more (the shifted product and its sum)."""
    flat, weight = flat.float(), weight.float()
    lse = torch.empty(flat.shape[0], dtype=torch.float32, device=flat.device)
    ent = torch.empty_like(lse)
    n = min(chunk, flat.shape[0])
    buf = torch.empty(n, weight.shape[0], dtype=torch.float32, device=flat.device)
    e = torch.empty_like(buf)
    for s in range(0, flat.shape[0], chunk):
        r = min(chunk, flat.shape[0] - s)
        z = torch.mm(flat[s:s + r], weight.T, out=buf[:r])  # [r, V]
        top = z.amax(-1, keepdim=True)
        z.sub_(top)
        torch.exp(z, out=e[:r])
        total = e[:r].sum(-1)
        lse[s:s + r] = total.log() + top[:, 0]
        ent[s:s + r] = total.log() - z.mul_(e[:r]).sum(-1) / total
    return lse, ent


class BF16Leaf:
    """bf16 leaf scoring with online fp32 rescoring (the module docstring) for one loss matrix.

    patterns ``[P, L]`` (the engine's unique patterns, the order of the ``rows`` it passes);
    ``random_sets``: the row sets of the best-of-N subsets to certify; weight ``[V, d]`` fp32."""

    def __init__(self, weight: torch.Tensor, w_target: torch.Tensor, patterns: np.ndarray, n_tokens: int,
                 chunk: int, random_sets: list[np.ndarray] = ()):
        self.weight, self.w_target, self.chunk = weight, w_target, chunk
        self.weight16 = weight.bfloat16()
        self.w_max = float(weight.norm(dim=-1).max())
        P = len(patterns)
        n_big = (patterns == BIG).sum(1)
        ks = sorted(set(n_big.tolist()))
        member = [n_big == k for k in ks]  # groups: one per budget, then the random subsets
        for rows in random_sets:
            m = np.zeros(P, dtype=bool)
            m[rows] = True
            member.append(m)
        self.member = torch.from_numpy(np.stack(member))  # [n_groups, P]
        self.best = torch.full((len(member), n_tokens), math.inf)  # lowest exact loss per group and token
        self.best_mean = torch.full((len(member),), math.inf, dtype=torch.float64)  # lowest exact row mean
        changes = (patterns[:, 1:] != patterns[:, :-1]).sum(1) if patterns.shape[1] > 1 else np.zeros(P, dtype=int)
        self.whole = torch.from_numpy(changes <= 1)  # uniform and early-exit-like rows: rescored whole
        self.exact = torch.zeros(P, n_tokens, dtype=torch.bool)
        self.error_bound = torch.zeros(P)
        self.rescored = 0
        self.worst_ratio = 0.0  # largest observed |bf16 - fp32| / bound, entries and row means

    def __call__(self, hn: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Losses ``[G, N]`` of normalised final states ``hn [G, N, d]`` (fp32) of pattern rows ``rows [G]``."""
        G, N, d = hn.shape
        flat = hn.reshape(-1, d)
        target_logit = (hn * self.w_target).sum(-1)  # [G, N] fp32
        lse = logsumexp_rows(flat.bfloat16(), self.weight16, self.chunk).view(G, N)
        losses = lse - target_logit
        bound = (ERROR_SCALE * hn.norm(dim=-1).amax(-1) * self.w_max + ERROR_EXP).cpu()  # [G]
        need = self._need(losses.cpu(), bound, rows)  # [G, N]
        if need.any():
            idx = need.to(hn.device).reshape(-1).nonzero().squeeze(1)
            exact = logsumexp_rows(flat.index_select(0, idx), self.weight, self.chunk) - target_logit.reshape(-1)[idx]
            observed = (losses.reshape(-1)[idx] - exact).abs().view(-1).cpu()
            per_entry = bound[:, None].expand(G, N)[need]
            self.worst_ratio = max(self.worst_ratio, float((observed / per_entry).max()))
            full = need.all(1)
            if full.any():
                mean_b = losses[full.to(hn.device)].double().mean(1).cpu()
            losses.view(-1)[idx] = exact
            self.rescored += len(idx)
            if full.any():
                mean_err = (mean_b - losses[full.to(hn.device)].double().mean(1).cpu()).abs()
                self.worst_ratio = max(self.worst_ratio, float(mean_err.max()) / MEAN_MARGIN)
        self._update(losses.cpu(), need, rows)
        self.exact[rows] = need
        self.error_bound[rows] = bound
        return losses

    def _need(self, losses: torch.Tensor, bound: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Entries ``[G, N]`` that could be a group minimum, and whole rows that could be the fixed pattern."""
        low, high = losses - bound[:, None], losses + bound[:, None]
        mean = losses.double().mean(1)
        need = self.whole[rows][:, None].expand_as(losses).clone()
        whole = torch.zeros(len(rows), dtype=torch.bool)
        member = self.member[:, rows]  # [n_groups, G]
        for g in member.any(1).nonzero().flatten().tolist():
            sel = member[g]
            upper = torch.minimum(self.best[g], high[sel].min(0).values)  # the batch's best entry is rescored
            need[sel] |= low[sel] <= upper
            upper_mean = min(float(self.best_mean[g]), float(mean[sel].min()) + MEAN_MARGIN)
            whole[sel] |= mean[sel] - MEAN_MARGIN <= upper_mean
        return need | whole[:, None]

    def _update(self, losses: torch.Tensor, need: torch.Tensor, rows: torch.Tensor) -> None:
        exact_vals = losses.masked_fill(~need, math.inf)
        member = self.member[:, rows]
        for g in member.any(1).nonzero().flatten().tolist():
            self.best[g] = torch.minimum(self.best[g], exact_vals[member[g]].min(0).values)
        full = need.all(1)
        means = losses.double().mean(1).masked_fill(~full, math.inf)
        for g in member.any(1).nonzero().flatten().tolist():
            self.best_mean[g] = min(self.best_mean[g], means[member[g]].min())

    @property
    def safe(self) -> bool:
        """Whether every rescored entry stayed within :data:`CHECK_SHARE` of its bound."""
        return self.worst_ratio <= CHECK_SHARE

    def stats(self) -> dict:
        total = self.exact.numel()
        return {"precision": "bf16", "rescored": self.rescored, "rescored_share": self.rescored / max(1, total),
                "worst_error_ratio": self.worst_ratio}


def certify_sets(n_random: int | None, seed: int, patterns: torch.Tensor) -> list[np.ndarray]:
    """Row sets of the seeded best-of-``n_random`` subsets (:meth:`LossMatrix.best_of_random`) of
    ``patterns [P, L]``: one per budget present and one over all rows."""
    if not n_random:
        return []
    n_big = (patterns == BIG).sum(1)
    sets = [random_rows((n_big == k).nonzero().flatten(), n_random, seed) for k in sorted(set(n_big.tolist()))]
    sets.append(random_rows(torch.arange(len(patterns)), n_random, seed))
    return [s.numpy() for s in sets]
