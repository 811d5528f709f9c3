"""Loss matrices of routing patterns and their reductions (oracles, baselines, schedules).

A :class:`LossMatrix` holds ``losses[p, n]``: the next-token loss of scored token ``n`` when routed
by pattern ``p`` (``patterns[p]``, one route code per layer).  Tokens are numbered sequence-major:
``n = seq * (T - 1) + t`` for sequence ``seq`` of ``T`` tokens, ``t`` in ``0..T-2`` (the token at
position ``t`` predicting token ``t + 1``).  :mod:`duolib.oracle` computes these matrices; this module
reduces them:

- :meth:`LossMatrix.oracle` — per-token minimum over the patterns (with exactly ``k`` big layers);
- :meth:`LossMatrix.fixed` — the single pattern with the best mean loss (at ``k``);
- :meth:`LossMatrix.best_of_random` — best of N seeded random patterns, both readings;
- :meth:`LossMatrix.label_free` — [ours] per token, the pattern of lowest prediction entropy (no target seen);
- :meth:`LossMatrix.schedule_oracle` — per-position budgets ``k(t)`` (:mod:`duolib.oracle.schedules`);
- :meth:`LossMatrix.winner_usage` — where the winning patterns put big (or skip) layers;
- :func:`~duolib.oracle.difficulty.token_difficulty` — the per-token difficulty table (all-small minus oracle).

Perplexity is ``exp`` of the mean token loss everywhere.  The pattern sets themselves (route choices,
every pattern over them) come from :mod:`duolib.oracle.patterns`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch

from .. import checks
from ..routing import BIG, ROUTE_NAMES, SKIP, SMALL, as_pattern, pattern_to_str
from .registry import REDUCTIONS
from .sampling import random_rows
from .schedules import SCHEDULES, SHUFFLED, budget_schedule, shuffled_schedule

SEMANTICS = ("shared", "fixed-context")


# ----------------------------------------------------------------------------- budgets and samples

# ----------------------------------------------------------------------------- results

class MeanTokenLoss:
    """``mean_loss`` (the float64 mean of the result's ``token_losses`` ``[N]``) and ``perplexity`` (its exp):
    shared by the reductions here and the beam search's result."""

    @property
    def mean_loss(self) -> float:
        return float(self.token_losses.double().mean())

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_loss)


@dataclass
class Reduction(MeanTokenLoss):
    """One reduction of a loss matrix: per-token losses ``[N]`` and the pattern each token used.

    winners: ``[N]`` indices into the matrix's patterns (for ``fixed`` all equal)."""

    name: str
    token_losses: torch.Tensor
    winners: torch.Tensor
    info: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"name": self.name, "mean_loss": self.mean_loss, "perplexity": self.perplexity, **self.info}


@dataclass
class LossMatrix:
    """``losses[p, n]`` for patterns ``[P, L]`` and scored tokens ``[N]`` (see the module docstring).

    losses:   ``[P, N]`` float32.
    patterns: ``[P, L]`` int8 route codes (0 skip, 1 small, 2 big).
    seq:      ``[N]`` long, the sequence of each scored token.
    position: ``[N]`` long, its position ``t`` (it predicts token ``t + 1``).
    target:   ``[N]`` long, the predicted token id.
    seq_len:  ``T``, the length of every input sequence (``N = B * (T - 1)``).
    semantics: ``"shared"`` or ``"fixed-context"``; reference: the context route (fixed-context).
    choices:  the route codes the patterns were drawn from; stats: engine counters and timings.
    exact:    ``[P, N]`` bool or None: which entries are fp32-exact (None: all of them).  A bf16 engine
              run (:mod:`duolib.oracle.leaf`) stores its scores elsewhere; ``error_bound`` ``[P]`` bounds their
              error per pattern, and every per-token minimum is certified against it.
    entropy:  ``[P, N]`` float32 or None: the softmax entropy of each prediction (``loss_matrix(entropy=True)``).
    """

    losses: torch.Tensor
    patterns: torch.Tensor
    seq: torch.Tensor
    position: torch.Tensor
    target: torch.Tensor
    seq_len: int
    semantics: str = "shared"
    reference: torch.Tensor | None = None
    choices: tuple[int, ...] = (SMALL, BIG)
    stats: dict = field(default_factory=dict)  # engine counters and timings (JSON-ready)
    exact: torch.Tensor | None = None
    error_bound: torch.Tensor | None = None
    entropy: torch.Tensor | None = None

    def __post_init__(self):
        P, N = self.losses.shape
        if self.patterns.shape[0] != P or not (len(self.seq) == len(self.position) == len(self.target) == N):
            raise ValueError(f"inconsistent shapes: losses {tuple(self.losses.shape)}, patterns "
                             f"{tuple(self.patterns.shape)}, tokens {len(self.seq)}")
        given = [t is not None for t in (self.exact, self.error_bound)]
        if any(given) and (not all(given) or (tuple(self.exact.shape), tuple(self.error_bound.shape)) != ((P, N), (P,))):
            raise ValueError("exact [P, N] and error_bound [P] come together and match the losses "
                             f"{tuple(self.losses.shape)}")
        if self.entropy is not None and tuple(self.entropy.shape) != (P, N):
            raise ValueError(f"entropy {tuple(self.entropy.shape)} must match the losses {tuple(self.losses.shape)}")

    def columns(self, cols: torch.Tensor) -> LossMatrix:
        """The matrix restricted to the tokens ``cols`` (everything else kept)."""
        return LossMatrix(self.losses[:, cols], self.patterns, self.seq[cols], self.position[cols], self.target[cols],
                          self.seq_len, self.semantics, self.reference, self.choices, dict(self.stats),
                          None if self.exact is None else self.exact[:, cols], self.error_bound,
                          None if self.entropy is None else self.entropy[:, cols])

    # ---- basics ----------------------------------------------------------------------------
    @property
    def num_patterns(self) -> int:
        return self.losses.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.losses.shape[1]

    @property
    def num_layers(self) -> int:
        return self.patterns.shape[1]

    @property
    def n_big(self) -> torch.Tensor:
        """Big layers per pattern ``[P]``."""
        return (self.patterns == BIG).sum(1)

    def pattern_index(self, pattern) -> int:
        """Row of ``pattern`` (codes or a string like ``"BBS-"``); ValueError if it is not in the matrix."""
        codes = as_pattern(pattern, self.num_layers).to(self.patterns.dtype)
        rows = (self.patterns == codes).all(1).nonzero().flatten()
        if len(rows) == 0:
            raise ValueError(f"pattern {pattern_to_str(codes)!r} is not among the matrix's "
                             f"{self.num_patterns} patterns")
        return int(rows[0])

    def loss_of(self, pattern) -> torch.Tensor:
        """Per-token losses ``[N]`` of one pattern (ValueError if a bf16 run left the row inexact)."""
        row = self.pattern_index(pattern)
        if self.exact is not None and not bool(self.exact[row].all()):
            raise ValueError(f"pattern {pattern_to_str(self.patterns[row])!r} holds bf16 scores in this matrix "
                             "(only minima, the fixed pattern and uniform or early-exit rows are rescored in fp32); "
                             "recompute the loss matrix with precision='fp32'")
        return self.losses[row]

    def perplexity_of(self, pattern) -> float:
        return math.exp(float(self.loss_of(pattern).double().mean()))

    def _rows(self, k: int | None) -> torch.Tensor:
        """Pattern rows with exactly ``k`` big layers (all rows if k is None) ``[P_k]``."""
        if k is None:
            return torch.arange(self.num_patterns)
        k = checks.budget("k", k, self.num_layers)
        rows = (self.n_big == k).nonzero().flatten()
        if len(rows) == 0:
            raise ValueError(f"the matrix has no pattern with exactly k={k} big layers "
                             f"(its patterns have {sorted(set(self.n_big.tolist()))} big layers)")
        return rows

    def budget_rows(self, k: int | None) -> torch.Tensor:
        """Indices of the patterns with exactly ``k`` big layers (all if None); ValueError if there are none."""
        return self._rows(k)

    def per_token_min(self, rows: torch.Tensor, name: str, **info) -> Reduction:
        """Each token takes its best pattern among ``rows``."""
        best, arg = self.losses[rows].min(0)  # [N], [N]
        self._certify(rows, best, name)
        return Reduction(name, best, rows[arg], info)

    def best_single(self, rows: torch.Tensor, name: str, **info) -> Reduction:
        """The one pattern among ``rows`` of lowest mean loss, applied to every token."""
        best = rows[self.losses[rows].double().mean(1).argmin()]
        self._certify_row(best, name)
        return Reduction(name, self.losses[best].clone(), best.expand(self.num_tokens).clone(),
                         {**info, "pattern": pattern_to_str(self.patterns[best])})

    def _certify_row(self, row, name: str) -> None:
        """Raise unless the chosen pattern's row is fp32-exact (the engine rescores near-best rows whole)."""
        if self.exact is not None and not bool(self.exact[row].all()):
            raise ValueError(f"{name}: the best pattern by mean loss, {pattern_to_str(self.patterns[row])}, holds bf16 "
                             "scores in this matrix; recompute the loss matrix with precision='fp32'")

    def _certify(self, rows: torch.Tensor, best: torch.Tensor, name: str) -> None:
        """Raise unless ``best`` (the per-token minimum over ``rows``) is exact: every entry that is not
        fp32-exact must lie above it by more than its error bound."""
        if self.exact is None:
            return
        low = (self.losses[rows] - self.error_bound[rows, None]).masked_fill(self.exact[rows], math.inf)
        bad = int((low.min(0).values < best).sum())
        if bad:
            raise ValueError(f"{name}: the per-token minimum of {bad} token(s) rests on bf16 scores that this matrix "
                             "did not rescore in fp32; recompute the loss matrix with precision='fp32' (or, for "
                             "best-of-N, with the same n and seed given to the engine)")

    # ---- reductions ------------------------------------------------------------------------
    def oracle(self, k: int | None = None) -> Reduction:
        """Per-token oracle: each token takes its best pattern (among those with ``k`` big layers)."""
        rows = self._rows(k)
        return self.per_token_min(rows, "oracle" if k is None else f"oracle@k={k}", k=k, n_patterns=len(rows))

    def label_free(self, k: int | None = None) -> Reduction:
        """[ours] Per token, the pattern (with ``k`` big layers) whose prediction has the lowest entropy: a choice
        made without the target, the ceiling of a router that sees only the prefix.  Needs :attr:`entropy`."""
        if self.entropy is None:
            raise ValueError("label_free needs the prediction entropies: compute the matrix with loss_matrix(..., "
                             "entropy=True)")
        rows = self._rows(k)
        winners = rows[self.entropy[rows].argmin(0)]  # [N]
        cols = torch.arange(self.num_tokens)
        if self.exact is not None and not bool(self.exact[winners, cols].all()):
            raise ValueError("label_free: a chosen entry holds a bf16 score; recompute the matrix with precision='fp32'")
        return Reduction("label_free" if k is None else f"label_free@k={k}", self.losses[winners, cols], winners,
                         dict(k=k, n_patterns=len(rows)))

    def fixed(self, k: int | None = None) -> Reduction:
        """The single pattern (with ``k`` big layers) of lowest mean loss, applied to every token."""
        rows = self._rows(k)
        return self.best_single(rows, "fixed" if k is None else f"fixed@k={k}", k=k, n_patterns=len(rows))

    def best_of_random(self, n: int = 100, seed: int = 0, k: int | None = None) -> dict[str, Reduction]:
        """Best of ``n`` random patterns (drawn without replacement, seeded, among those with ``k``
        big layers; all of them if fewer than ``n`` exist).  Two readings:

        ``"pattern"``: the one sampled pattern of best mean loss; ``"token"``: per-token minimum."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n={n!r} must be a positive number of random patterns")
        rows = self._rows(k)
        chosen = random_rows(rows, n, seed)
        info = dict(k=k, n=int(n), n_used=len(chosen), seed=int(seed))
        suffix = "" if k is None else f"@k={k}"
        return {"pattern": self.best_single(chosen, f"best_of_{n}_pattern{suffix}", **info),
                "token": self.per_token_min(chosen, f"best_of_{n}_token{suffix}", **info)}

    def schedule_oracle(self, budgets, name: str = "schedule") -> Reduction:
        """Per-token oracle under a per-position budget: token at position ``t`` takes its best
        pattern with exactly ``budgets[t]`` big layers.  ``budgets`` has one entry per token position
        of the sequences: length ``T`` (the last entry is unused: that token predicts nothing) or
        ``T - 1`` (the scored positions)."""
        budgets = torch.as_tensor(budgets).long().flatten()
        T = self.seq_len
        if len(budgets) not in (T, T - 1):
            raise ValueError(f"schedule has length {len(budgets)} but the sequences have {T} tokens: give "
                             f"{T} budgets (one per position) or {T - 1} (one per scored position)")
        for t, k in enumerate(budgets.tolist()):
            checks.budget(f"budget at position {t}", k, self.num_layers)
        losses = torch.empty(self.num_tokens, dtype=self.losses.dtype)
        winners = torch.empty(self.num_tokens, dtype=torch.long)
        per_token_k = budgets[self.position]  # [N]
        for k in per_token_k.unique().tolist():
            cols = (per_token_k == k).nonzero().flatten()
            rows = self._rows(k)
            best, arg = self.losses[rows][:, cols].min(0)
            self.columns(cols)._certify(rows, best, f"{name} at k={k}")
            losses[cols], winners[cols] = best, rows[arg]
        return Reduction(name, losses, winners, dict(mean_budget=float(per_token_k.double().mean())))

    def schedules(self, control: bool = True) -> dict[str, Reduction]:
        """The paper's falling / rising / constant schedules (:func:`budget_schedule`) and, with
        ``control``, the ``shuffled`` control (:func:`shuffled_schedule`)."""
        out = {kind: self.schedule_oracle(budget_schedule(kind, self.num_layers, self.seq_len), kind)
               for kind in SCHEDULES}
        if control:
            out[SHUFFLED] = self.schedule_oracle(shuffled_schedule(self.num_layers, self.seq_len), SHUFFLED)
        return out

    def winner_usage(self, k: int | None = None, code: int = BIG, reduction: Reduction | None = None) -> torch.Tensor:
        """``[L, T-1]``: fraction of tokens at each position whose winning pattern (of the per-token
        oracle at ``k``, or of ``reduction``) takes route ``code`` at layer i (a layer x position
        heatmap; average over the last axis for a per-layer profile)."""
        red = reduction if reduction is not None else self.oracle(k)
        uses = (self.patterns[red.winners] == code).double()  # [N, L]
        n_pos = self.seq_len - 1
        total = torch.zeros(n_pos, self.num_layers, dtype=torch.float64).index_add_(0, self.position, uses)
        count = torch.bincount(self.position, minlength=n_pos).clamp(min=1).double()
        return (total / count[:, None]).T.float()

    def sequence_routes(self, seq: int, k: int | None = None, reduction: Reduction | None = None) -> torch.Tensor:
        """``[L, T-1]`` route codes of one sequence (the paper's Fig. 2 grid): column ``t`` is the
        winning pattern of the token scored at position ``t`` (the one predicting token ``t + 1``)
        under the per-token oracle at ``k`` (or under ``reduction``)."""
        n_seq = int(self.seq.max()) + 1 if self.num_tokens else 0
        if isinstance(seq, bool) or not isinstance(seq, (int, np.integer)) or not 0 <= seq < n_seq:
            raise ValueError(f"seq={seq!r} must be a sequence index in 0..{n_seq - 1}")
        red = reduction if reduction is not None else self.oracle(k)
        cols = (self.seq == int(seq)).nonzero().flatten()
        cols = cols[self.position[cols].argsort()]
        return self.patterns[red.winners[cols]].T.clone()

    def early_exit_pattern(self, n_skip: int) -> torch.Tensor:
        """[ours] The early-exit pattern of the {big, skip} study: big for the first ``L - n_skip``
        layers, then skip."""
        n_skip = checks.budget("n_skip", n_skip, self.num_layers)
        return torch.tensor([BIG] * (self.num_layers - n_skip) + [SKIP] * n_skip)

    def summary(self, ks: Iterable[int] | None = None, n_random: int = 100, seed: int = 0) -> dict:
        """Perplexities of every reduction, as plain JSON-ready data.

        Per budget k: every reduction of :data:`duolib.oracle.registry.REDUCTIONS` (oracle, fixed,
        best-of-``n_random`` in both readings, and any registered since); plus all-big / all-small / all-skip when present, the unconstrained oracle, and the schedules when every budget they
        need is present."""
        L = self.num_layers
        present = sorted(set(self.n_big.tolist()))
        ks = present if ks is None else [checks.budget("k", k, L) for k in ks]
        out = {"semantics": self.semantics, "num_layers": L, "num_patterns": self.num_patterns,
               "num_tokens": self.num_tokens, "seq_len": self.seq_len,
               "choices": [ROUTE_NAMES[c] for c in self.choices],
               "reference": (pattern_to_str(self.reference) if self.reference is not None
                             and self.reference.dim() == 1 else None),
               "uniform": {}, "oracle": self.oracle().as_dict(), "per_k": {}}
        for code, name in ((BIG, "all_big"), (SMALL, "all_small"), (SKIP, "all_skip")):
            try:
                out["uniform"][name] = self.perplexity_of([code] * L)
            except ValueError:
                pass
        for k in ks:
            if k not in present:
                continue
            row = out["per_k"][str(k)] = {"n_patterns": int((self.n_big == k).sum())}
            for r in REDUCTIONS.values():  # duolib.oracle.registry: every registered reduction
                red = r.compute(self, k, n_random, seed)
                row[r.key(n_random)] = red.perplexity
                if r.record_pattern:
                    row[f"{r.key(n_random)}_pattern"] = red.info["pattern"]
        needed = {int(v) for kind in SCHEDULES for v in budget_schedule(kind, L, self.seq_len).tolist()}
        if needed <= set(present):
            out["schedules"] = {kind: r.perplexity for kind, r in self.schedules().items()}
        if set(self.choices) == {SKIP, BIG}:
            n_skip = L // 2  # the paper's study: 6 of 12 layers skipped
            red = self.oracle(L - n_skip)
            out["skip_study"] = {
                "n_skip": n_skip, "oracle": red.perplexity,
                "skip_fraction_per_layer": self.winner_usage(code=SKIP, reduction=red).mean(1).tolist(),
            }
            try:
                out["skip_study"]["early_exit"] = self.perplexity_of(self.early_exit_pattern(n_skip))
            except ValueError:
                pass
        return out

    def to_frame(self):
        """The long table (pattern, seq, position, loss) as a pandas DataFrame (P x N rows)."""
        import pandas as pd

        P, N = self.losses.shape
        names = np.array([pattern_to_str(p) for p in self.patterns])
        return pd.DataFrame({
            "pattern": np.repeat(names, N), "n_big": np.repeat(self.n_big.numpy(), N),
            "seq": np.tile(self.seq.numpy(), P), "position": np.tile(self.position.numpy(), P),
            "loss": self.losses.flatten().numpy(),
        })
