"""Stage 2: the exhaustive oracle over routing patterns.

``engine`` computes loss matrices ``L[pattern, token]`` (a trie over the patterns' shared prefixes; ``entropy=True``
adds the prediction entropies), ``reductions`` reduces them (:class:`LossMatrix`: oracle, fixed, best-of-N,
label-free, schedules), ``registry`` is where a new per-budget reduction goes, ``controls`` separates selection
from compute (placebo oracle, matched candidates, split-half difficulty), ``beam`` approximates the oracle,
``difficulty`` tabulates token difficulty, ``runs`` is ``duo oracle``.
"""

from .beam import beam_oracle
from .controls import matched_candidates, placebo_losses, split_half_difficulty
from .difficulty import token_difficulty
from .engine import loss_matrix
from .reductions import LossMatrix, Reduction
from .registry import REDUCTIONS, BudgetReduction, register_reduction, unregister_reduction

__all__ = ["REDUCTIONS", "BudgetReduction", "LossMatrix", "Reduction", "beam_oracle", "loss_matrix",
           "matched_candidates", "placebo_losses", "register_reduction", "split_half_difficulty", "token_difficulty",
           "unregister_reduction"]
