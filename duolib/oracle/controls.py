"""Controls that separate selection from compute in the per-token oracle [ours].

The per-token oracle sees the target token and keeps the best of ``C(L, k)`` candidate routes, so part of its
gain over all-big is *selection* (the minimum of many noisy candidates), not compute.  This module measures
that part three ways:

- :func:`placebo_losses` — the **placebo oracle**: per token, the best of ``n`` candidates that all cost the
  same compute (all-big forwards, each with its own seeded mask that drops the same share of every big FFN's
  hidden units).  Any gain of their per-token minimum over all-big is selection alone.  Candidate ``c``'s mask
  depends only on ``(seed, c)``, so the candidate sets are nested: the first ``C(L, k)`` candidates are the
  placebo of budget ``k`` (:meth:`PlaceboLosses.for_budget`) and one set of ``max_k C(L, k)`` forwards serves
  every ``k``.
- :func:`matched_candidates` — ``oracle(k) - oracle(L - k)`` per token for ``1 <= k < L / 2``: the same number of
  candidates (``C(L, k) = C(L, L - k)``) at less and at more compute.  Negative: the budget with *less* compute
  wins, so the candidate count, not compute, drives the curve there.
- :func:`split_half_difficulty` — per-token difficulty (all-small loss minus the oracle loss at ``k``) from two
  disjoint, equally large halves of the ``k``-big pattern set (seeded split); their rank agreement
  (:func:`duolib.book.selection.split_half_ci`) says whether difficulty is a property of the token or of
  which candidate happened to win.

The label-free oracle (the pattern of lowest prediction entropy, chosen without the target) is
:meth:`duolib.oracle.reductions.LossMatrix.label_free`, on a matrix computed with ``loss_matrix(entropy=True)``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import checks
from ..routing import SMALL
from ..utils import eval_mode
from .engine import check_ids, check_semantics
from .reductions import LossMatrix
from .setup import oracle_setup, reference_routes

#: Default share of each big FFN's hidden units a placebo candidate drops.
PLACEBO_DROP = 0.05


# ----------------------------------------------------------------------------- the placebo oracle

def placebo_keep(num_layers: int, inner: int, drop: float, seed: int, candidate: int) -> np.ndarray:
    """Kept hidden units ``[L, inner - n_drop]`` (sorted, int64) of candidate ``candidate``: per layer,
    ``n_drop = round(drop * inner)`` units dropped at random from ``numpy.random.default_rng([seed, candidate])``,
    so a candidate's mask does not depend on how many candidates are drawn (the sets are nested)."""
    if not 0.0 <= drop < 1.0:
        raise ValueError(f"drop={drop!r} must be a share of hidden units in [0, 1)")
    n_drop = int(round(drop * inner))
    rng = np.random.default_rng([int(seed), int(candidate)])
    return np.stack([np.sort(rng.permutation(inner)[n_drop:]) for _ in range(num_layers)])


@dataclass
class PlaceboLosses:
    """Per-token losses of the placebo candidates, in :class:`LossMatrix` token order (``n = seq * (T-1) + t``).

    losses ``[C, N]``: candidate ``c`` (all-big, its own dropped units); reference ``[N]``: all-big with no unit
    dropped, computed by the same code (so ``drop = 0`` gives candidates equal to it bit for bit)."""

    losses: torch.Tensor
    reference: torch.Tensor
    seq: torch.Tensor
    position: torch.Tensor
    target: torch.Tensor
    seq_len: int
    num_layers: int
    semantics: str = "shared"
    drop: float = PLACEBO_DROP
    seed: int = 0
    stats: dict = field(default_factory=dict)

    def __post_init__(self):
        C, N = self.losses.shape
        if C < 1 or not (len(self.reference) == len(self.seq) == len(self.position) == len(self.target) == N):
            raise ValueError(f"inconsistent placebo shapes: losses {tuple(self.losses.shape)}, reference "
                             f"{tuple(self.reference.shape)}, tokens {len(self.seq)}")

    @property
    def n_candidates(self) -> int:
        return self.losses.shape[0]

    def best(self, n: int) -> torch.Tensor:
        """Per-token minimum ``[N]`` over the first ``n`` candidates."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= self.n_candidates:
            raise ValueError(f"n={n!r}: the placebo holds {self.n_candidates} candidates; compute more "
                             "(placebo_losses(n_candidates=...)) or ask for fewer")
        return self.losses[:int(n)].min(0).values

    def for_budget(self, k: int) -> torch.Tensor:
        """The placebo of budget ``k``: the per-token best of the first ``C(L, k)`` candidates ``[N]``."""
        return self.best(math.comb(self.num_layers, checks.budget("k", k, self.num_layers)))

    def covers(self, k: int) -> bool:
        return math.comb(self.num_layers, int(k)) <= self.n_candidates

    def check_tokens(self, matrix: LossMatrix) -> None:
        """ValueError unless the placebo scored the same tokens as ``matrix``, in its order."""
        same = (self.seq_len == matrix.seq_len and self.num_layers == matrix.num_layers
                and self.semantics == matrix.semantics and len(self.seq) == matrix.num_tokens
                and all(torch.equal(a, b) for a, b in ((self.seq, matrix.seq), (self.position, matrix.position),
                                                       (self.target, matrix.target))))
        if not same:
            raise ValueError("the placebo losses and the loss matrix cover different tokens, layers or semantics; "
                             "compute the placebo on the matrix's input ids with its semantics")

    def state(self) -> dict:
        """Plain tensors and numbers (``torch.save`` / ``torch.load(weights_only=True)``): :meth:`from_state`."""
        return {f: getattr(self, f) for f in self.__dataclass_fields__}

    @classmethod
    def from_state(cls, state: dict) -> "PlaceboLosses":
        return cls(**state)


def _masked_big(layer, keep: torch.Tensor, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``a + big(x)`` with only the hidden units ``keep`` (the big FFN's weights sliced: a dropped unit costs
    nothing, and every candidate of one drop share costs the same)."""
    big = layer.big
    gate, up = big.gate_proj.weight.index_select(0, keep), big.up_proj.weight.index_select(0, keep)
    down = big.down_proj.weight.index_select(1, keep)
    return a + F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)


def _candidate_losses(setup, keep: torch.Tensor) -> torch.Tensor:
    """Per-token losses ``[N]`` of the all-big path with hidden units ``keep [L, I']`` per layer."""
    h = setup.h0[None]
    for i, layer in enumerate(setup.model.model.layers):
        a = setup.attend(i, h)
        h = _masked_big(layer, keep[i], a, layer.post_attention_layernorm(a))
    return setup.leaf(h)[0]


@torch.no_grad()
def placebo_losses(model, input_ids, n_candidates: int, *, drop: float = PLACEBO_DROP, seed: int = 0,
                   semantics: str = "shared", reference="big", leaf_rows: int = 1024,
                   progress: bool = False) -> PlaceboLosses:
    """The placebo oracle's candidates on ``input_ids [B, T]`` (the module docstring): ``n_candidates`` all-big
    forwards, candidate ``c`` dropping the hidden units of :func:`placebo_keep` ``(L, I, drop, seed, c)``.

    Why this construction: every candidate runs the same FFN sizes at every layer (equal compute), differs from
    all-big only by a small seeded ablation (its mean loss stays near all-big's), and the candidates differ
    from each other, so their per-token minimum measures how much choosing among ``n`` perturbed routes gains
    by itself.  No rescaling of the kept units: the model never trained with dropout, so a dropped unit is an
    ablation.  Under ``"fixed-context"`` the context keeps ``reference`` (unmasked) and only the scored token's
    own path is a candidate, as in :func:`~duolib.oracle.engine.loss_matrix`.  Use ``n_candidates =
    max_k C(L, k)`` (924 for 12 layers) to serve every budget.  Costs one full forward per candidate (the trie
    cannot share prefixes: masks differ from layer 0)."""
    check_semantics(semantics)
    input_ids = check_ids(model, input_ids)
    if isinstance(n_candidates, bool) or not isinstance(n_candidates, (int, np.integer)) or n_candidates < 1:
        raise ValueError(f"n_candidates={n_candidates!r} must be a positive number of candidates")
    L, inner = model.config.num_hidden_layers, model.config.big_ffn_size
    if semantics == "fixed-context":
        reference_routes(reference, L, *input_ids.shape)  # validate before any work
    device = next(model.parameters()).device
    B, T = input_ids.shape
    start = time.perf_counter()
    losses = torch.empty(int(n_candidates), B * (T - 1), dtype=torch.float32)
    with eval_mode(model):
        setup = oracle_setup(model, input_ids, semantics, reference, leaf_rows)
        full = torch.arange(inner, device=device).expand(L, inner)
        ref = _candidate_losses(setup, full).cpu()
        for c in tqdm(range(int(n_candidates)), desc=f"placebo ({semantics})", unit="candidate", disable=not progress):
            keep = torch.from_numpy(placebo_keep(L, inner, drop, seed, c)).to(device)
            losses[c] = _candidate_losses(setup, keep).cpu()
    return PlaceboLosses(losses, ref, seq=torch.arange(B).repeat_interleave(T - 1),
                         position=torch.arange(T - 1).repeat(B), target=input_ids[:, 1:].reshape(-1).cpu(), seq_len=T, num_layers=L, semantics=semantics,
                         drop=float(drop), seed=int(seed),
                         stats={"seconds": time.perf_counter() - start, "forwards": int(n_candidates) + 1})


# ----------------------------------------------------------------------------- reductions of a loss matrix

def matched_candidates(matrix: LossMatrix) -> dict[int, torch.Tensor]:
    """``{k: oracle(k) - oracle(L - k)}`` per-token loss differences ``[N]`` for every ``1 <= k < L / 2`` whose
    two budgets the matrix holds: equal candidate counts, less minus more compute (negative: less wins)."""
    L = matrix.num_layers
    present = set(matrix.n_big.tolist())
    return {k: matrix.oracle(k).token_losses - matrix.oracle(L - k).token_losses
            for k in range(1, (L + 1) // 2) if k in present and L - k in present}


def split_half_difficulty(matrix: LossMatrix, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token difficulty ``[N]`` twice: all-small loss minus the per-token best of each of two disjoint halves
    of the ``k``-big patterns (a seeded random split into equal halves; one pattern is left out when their
    number is odd, so both minima take the same number of candidates).

    The all-small term is common to both halves: the agreement of the two vectors counts the spread of the
    all-small loss across tokens as reliable, as it is (one fixed route, no selection); what the split tests
    is whether the oracle part of the difficulty is a property of the token or of which candidate won."""
    rows = matrix.budget_rows(k)
    if matrix.exact is not None and not bool(matrix.exact.all()):
        raise ValueError("split_half_difficulty needs a loss matrix computed with precision='fp32' (the halves' "
                         "minima are not among those a bf16 run certifies)")
    if len(rows) < 2:
        raise ValueError(f"k={k} has {len(rows)} pattern(s); a split-half needs at least two")
    g = torch.Generator().manual_seed(int(seed))
    perm = rows[torch.randperm(len(rows), generator=g)]
    half = len(rows) // 2
    small = matrix.loss_of([SMALL] * matrix.num_layers)
    return tuple(small - matrix.losses[part].min(0).values for part in (perm[:half], perm[half:2 * half]))
