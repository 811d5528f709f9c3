"""Per-budget reductions of a loss matrix: the one place to add a way of routing tokens under a budget.

A reduction answers "which pattern with ``k`` big layers does each token take?" from a
:class:`~duolib.oracle.reductions.LossMatrix`.  Every reduction registered here appears, under its
``name``, in

- :meth:`LossMatrix.summary` (``per_k[k][summary_key]``, so in ``duo oracle``'s ``summary.json``);
- the oracle chapter's curves and tables (:func:`duolib.book.analysis.oracle_results`, ``curves_frame``);
- the chapter's window-bootstrap intervals (:func:`duolib.book.evidence.oracle_intervals`).

Two kinds, which the intervals treat differently:

- ``per_token=True``: each token takes its own pattern (the oracle).  A bootstrap draw reweights the
  windows' losses; the tokens' choices stay as made on the whole slice.
- ``per_token=False``: one pattern for every token, the one of lowest mean loss among ``candidates``
  (the best fixed pattern).  Each draw re-chooses it on the resampled windows: the choice is part of
  the estimate.

By default a per-token reduction takes each token's minimum over ``candidates`` and a one-pattern
reduction the candidate of lowest mean loss; ``reduce`` replaces that rule (a per-token reduction
that chooses otherwise, e.g. by the prediction entropy).  ``CONTRIBUTING.md`` has the checklist; a
test registers a toy reduction and finds it in all three places.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from .sampling import random_rows

#: ``(matrix, k, n_random, seed) -> rows``: indices of the candidate patterns at budget ``k``.
Candidates = Callable[[Any, int, int, int], torch.Tensor]
#: ``(matrix, k, n_random, seed) -> Reduction``.
Reduce = Callable[[Any, int, int, int], Any]


@dataclass(frozen=True)
class BudgetReduction:
    """One registered reduction (module docstring).

    name: key of the book's results and intervals; label: its name in figures and tables (``{n}`` is the
    best-of-N count); summary_key: its key in ``summary()["per_k"][k]`` (``{n}`` likewise); record_pattern:
    the summary also records the chosen pattern as ``<summary_key>_pattern`` (one-pattern reductions)."""

    name: str
    label: str
    summary_key: str
    candidates: Candidates
    per_token: bool
    reduce: Reduce | None = None
    record_pattern: bool = False

    def __post_init__(self):
        if not self.name.isidentifier():
            raise ValueError(f"reduction name {self.name!r} must be an identifier (it names result keys)")
        if self.reduce is not None and not self.per_token:
            raise ValueError(f"reduction {self.name!r}: a one-pattern reduction is the candidate of lowest mean "
                             "loss (its intervals re-choose it); give reduce only with per_token=True")
        if self.record_pattern and self.per_token:
            raise ValueError(f"reduction {self.name!r}: record_pattern needs one pattern (per_token=False)")

    def key(self, n_random: int) -> str:
        return self.summary_key.format(n=n_random)

    def text(self, n_random: int | None = None) -> str:
        return self.label.format(n="N" if n_random is None else n_random)

    def rows(self, matrix, k: int, n_random: int, seed: int) -> torch.Tensor:
        return self.candidates(matrix, k, n_random, seed)

    def compute(self, matrix, k: int, n_random: int = 100, seed: int = 0):
        """The :class:`~duolib.oracle.reductions.Reduction` at budget ``k``."""
        if self.reduce is not None:
            return self.reduce(matrix, k, n_random, seed)
        rows = self.rows(matrix, k, n_random, seed)
        name = f"{self.name}@k={k}"
        return matrix.per_token_min(rows, name) if self.per_token else matrix.best_single(rows, name)


#: The registered reductions, in the order summaries, tables and figures show them.
REDUCTIONS: dict[str, BudgetReduction] = {}


def register_reduction(reduction: BudgetReduction, replace: bool = False) -> BudgetReduction:
    """Add ``reduction`` (ValueError if its name is taken, unless ``replace``); returns it."""
    if reduction.name in REDUCTIONS and not replace:
        raise ValueError(f"a reduction named {reduction.name!r} is already registered (replace=True to swap it)")
    REDUCTIONS[reduction.name] = reduction
    return reduction


def unregister_reduction(name: str) -> None:
    """Remove a registered reduction (KeyError naming the registered ones if absent)."""
    if name not in REDUCTIONS:
        raise KeyError(f"no reduction {name!r}; registered: {', '.join(REDUCTIONS)}")
    del REDUCTIONS[name]


def _budget(matrix, k, n_random, seed):
    return matrix.budget_rows(k)


def _sample(matrix, k, n_random, seed):
    return random_rows(matrix.budget_rows(k), n_random, seed)


for _r in (
    BudgetReduction("oracle", "oracle (per token)", "oracle", _budget, per_token=True),
    BudgetReduction("fixed", "fixed (best single pattern)", "fixed", _budget, per_token=False, record_pattern=True),
    BudgetReduction("best_of_random", "best of {n} random (one pattern)", "best_of_{n}_pattern", _sample,
                    per_token=False),
    BudgetReduction("best_of_random_per_token", "best of {n} random (per token)", "best_of_{n}_token", _sample,
                    per_token=True),
):
    register_reduction(_r)
