"""Every threshold, margin and precondition of the scorecard's rules, with its rationale, registered
before the default run whose book shows the verdicts (:data:`RULES_REGISTERED`).

One yardstick runs through them: an effect smaller than :data:`NEGLIGIBLE` (0.01 nats of mean loss,
about 1% of perplexity; 1% for relative perplexity gaps) is negligible.  It is ours, chosen as the
smallest difference a reader of the paper's figures could see.  Margins are that yardstick (or, for
depths and shares on a 0-1 scale, :data:`SHARE_MARGIN`); a precondition asks for at least ten negligible effects (:data:`CAPACITY_MIN`) of the capacity the
claim is about, so that an effect of a tenth of it is still resolvable.  The thresholds of the paper's
own words ("far better", "almost always") are unchanged from the first scorecard.
"""

from __future__ import annotations

from typing import NamedTuple

from ..router.evaluate import FLAT_TAIL, FLAT_TOL

#: Date of registration (its commit is read from git by duolib.book.registration.rules_commit).
RULES_REGISTERED = ("2026-12-05, before any default-profile run under them (issue 22 rules; the registering commit is "
                    "the last commit that changed a file of duolib.book.registration.RULE_FILES, printed on the "
                    "scorecard page)")

NEGLIGIBLE = 0.01  # nats of mean loss (~1% perplexity), or 1% for relative perplexity gaps
SHARE_MARGIN = 0.03  # depth / share margin around 0.5 (C6, C8)
RATIO_NULL = 0.05  # a ratio within +-5% of 1 is no effect (C8's early-position ratio)
CAPACITY_MIN = 10 * NEGLIGIBLE  # a capacity the claim needs: at least ten negligible effects (0.10 nats)

C1_FAR = 0.10  # "far better": the oracle at least 10% lower perplexity than best-of-N (one pattern)
C2_NEAR, C2_HALF = 2 / 3, 1 / 2  # router position r between oracle (0) and fixed (1), in mean loss
C3_BAND = 1 / 6  # the U's minimum within L/6 of L/2
C6_EVEN = 0.5  # mean relative depth of evenly spread big layers
C7_ALWAYS, C7_NEVER, C7_EXIT = 0.75, 0.25, 0.90  # skip-rate poles; early exit: late half holds 90% of skips
C8_EVEN, C8_RATIO = 0.5, 1.0
C9_RHO = 0.7  # |Spearman(loss, difficulty)| below this: difficulty is not loss
C9_RELIABLE = 0.5  # split-half rank correlation of difficulty: Spearman-Brown whole-set reliability 0.67
C10_UNIGRAM_BAR = 0.5  # every model's perplexity at most half the unigram baseline's
PLATEAU_TOL = FLAT_TOL  # relative loss change over the last FLAT_TAIL of the steps: the book's plateau rule


class Precondition(NamedTuple):
    """A measured quantity a claim needs before it can be tested (``preconditions.<name>`` in any step's
    results, an interval dict): it holds when the whole interval is at least (``at_most``: at most)
    ``threshold``; ``testable`` says what would make a failed one hold."""

    name: str
    quantity: str
    threshold: float
    claims: tuple[str, ...]
    testable: str
    at_most: bool = False
    why: str = ""


PRECONDITIONS = (
    Precondition("small_big_gap", "all-small minus all-big mean loss of the Stage-1 model (nats; the smaller holdout)",
                 CAPACITY_MIN, ("C2", "C6", "C8"),
                 f"testable once all-small and all-big differ by at least {CAPACITY_MIN:.2f} nats: a wider big FFN "
                 "relative to the small one, or a longer Stage-1",
                 why="routers and the oracle's big layers can only move the loss within this gap; a router or "
                     "placement effect of a tenth of it must still exceed the negligible effect"),
    Precondition("half_skip_cost", "mean loss with half the FFNs skipped at random minus all-big, skip-trained "
                 "model (nats)", CAPACITY_MIN, ("C7",),
                 f"testable once skipping half the FFNs at random costs the skip-trained model at least "
                 f"{CAPACITY_MIN:.2f} nats (~10% perplexity): FFNs that carry more of the prediction",
                 why="which layers the oracle skips only means something if skipping costs more than the "
                     "choice among patterns can hide"),
    Precondition("duo_curve_spread", "Duo's mean loss at p(big) = 0 minus at p(big) = 1 (nats)", CAPACITY_MIN,
                 ("C10",),
                 f"testable once Duo's loss falls by at least {CAPACITY_MIN:.2f} nats from p(big) = 0 to 1: "
                 "models where the big FFN adds capacity (C10's models at the Stage-1 depth, or longer training)",
                 why="'Duo approaches dense as p(big) grows' needs a curve that moves with p(big)"),
    Precondition("stage1_plateau", f"largest relative drop of the Stage-1 holdout loss over the last {FLAT_TAIL:.0%} "
                 "of steps at a constant or final learning rate", PLATEAU_TOL, ("C3", "C6", "C8"),
                 f"testable once the Stage-1 loss changes by at most {PLATEAU_TOL:.0%} over its last {FLAT_TAIL:.0%} "
                 "of steps at a constant learning rate: a longer Stage-1",
                 at_most=True,
                 why="where the oracle and routers put compute in depth moves while the layers still learn; a "
                     "schedule that runs out is not a plateau"),
)
