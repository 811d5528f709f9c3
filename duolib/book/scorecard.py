"""The reproduction scorecard: a computed verdict for each finding C1-C10 of the paper.

Each experiment notebook writes its headline numbers with ``duolib.book.pipeline.save_results`` to
``run_dir/results/<step>.json``; :func:`scorecard` reads them and applies the rules of
:mod:`duolib.book.rules` (verdict logic: :mod:`duolib.book.verdicts`).  Every
number a rule uses carries a 95% window-bootstrap interval (:mod:`duolib.book.evidence`), stored as
``{"value", "low", "high"}``.  Outcomes:

- **holds** / **partly** / **does not hold**: the interval lies wholly inside one zone of the rule;
- **inconclusive**: the interval straddles a boundary of the rule;
- **not testable**: a stated precondition fails (no model trained with skip, a router that does not
  beat random routing, models too weak or trained for unequal steps);
- **not measured**: the step's results are missing from the run.

The thresholds are ours (the paper gives figures, not numbers), fixed here before any run and
printed with the verdicts (:data:`RULES_TEXT`).  Per holdout (or budget) verdicts combine as: the
parts that are not testable are left out (all of them: not testable); all the same -> that verdict;
inconclusive parts with the rest agreeing -> inconclusive; else partly.

Result files and keys (budgets ``k`` and p values are JSON strings; ``ci`` = interval dict; typed in
:mod:`duolib.book.results`):

- ``03_oracle``: ``num_layers``; ``holdouts.<h>.{all_big, all_small}``, ``.{oracle, fixed, best100,
  best100_per_token}.<k>``; ``holdouts.<h>.ci`` = :func:`duolib.book.evidence.oracle_intervals`.
- ``04_schedules``: ``holdouts.<h>.{falling, rising, constant, shuffled}``; ``holdouts.<h>.ci`` =
  :func:`duolib.book.evidence.schedule_intervals`.
- ``05_oracle_routes``: ``holdouts.<h>.big_centre.<k>`` and ``.big_centre_ci.<k>``; ``skip_study.<m>`` per
  model ``m`` (``no_skip``, ``skip_trained``): ``model``, ``p_skip``, ``holdouts.<h>.skip_fraction_ci``
  (per layer).  C7 is judged on ``skip_study.skip_trained`` only.
- ``06_difficulty``: ``holdouts.<h>.spearman_ci``; optional ``synthetic.gain_ci`` =
  :func:`duolib.book.evidence.label_gain_intervals` of the difficulty, and ``synthetic.small_minus_big_ci``
  = the same function on the all-small minus all-big loss (its ``compute`` entry is C9's precondition).
- ``07_routers``: ``p_skip``; ``holdouts.<h>.c2.<k>`` = :func:`duolib.book.evidence.router_intervals`;
  ``late_big_fraction_ci.<k>``, ``early_position_big_ratio_ci``, ``skip_late_fraction_ci`` (no-skip model);
  ``skip_model.{model, p_skip, skip_late_fraction_ci, router_minus_random_ci}`` (routers of the skip-trained model).
- ``08_dense``: ``steps.{duo, dense, freeze}``, ``unigram``, ``duo.<p>``, ``dense.<p>``,
  ``joint_small``, ``freeze_small`` (perplexities), optional ``gap_ci.<p>`` and ``approach_ci`` =
  :func:`duolib.book.evidence.dense_gap_intervals`, ``freeze_excess_ci``.
"""

from __future__ import annotations

from ..router.evaluate import FLAT_TOL
from .rules import (C10_UNIGRAM_BAR, C1_FAR, C2_HALF, C2_NEAR, C3_BAND, C6_EVEN, C7_ALWAYS, C7_EXIT, C7_NEVER, C8_EVEN,
                    C8_RATIO, C9_RHO, RULES)
from .verdicts import MISSING, ci_text

CLAIMS = {
    "C1": "The oracle is far better than the best of 100 random patterns.",
    "C2": "Trained routers land near fixed patterns / best-of-100, far from the oracle.",
    "C3": "Oracle perplexity vs k big layers is U-shaped, lowest near k = L/2.",
    "C4": "The oracle with ONE big layer per token beats all layers big.",
    "C5": "A constant budget beats the falling and the rising schedules.",
    "C6": "Oracle big layers: late at k = L/3, even at L/2, early at 2L/3.",
    "C7": "With {big, skip} the oracle skips some layers almost always, others almost never; not early exit.",
    "C8": "Routers put compute in later layers; early positions use big more; with skip, routers skip late layers.",
    "C9": "Difficulty is not loss: high-loss tokens can gain nothing from more compute.",
    "C10": "Duo approaches dense as p(big) grows; freeze-big-then-train-small is worse than joint training.",
}

#: The chapter (executed notebook) that measures each claim.
CHAPTERS = {"C1": "03_oracle", "C2": "07_routers", "C3": "03_oracle", "C4": "03_oracle", "C5": "04_schedules",
            "C6": "05_oracle_routes", "C7": "05_oracle_routes", "C8": "07_routers", "C9": "06_difficulty",
            "C10": "08_dense"}

RULES_TEXT = {
    "C1": f"gap = 1 - oracle / best-of-N (one-pattern reading) at k = L/2; holds if gap >= {C1_FAR:.0%}, partly if "
          f"0 < gap < {C1_FAR:.0%}, does not hold if gap <= 0 (the per-token reading is reported beside it).",
    "C2": "precondition: the router's loss is below random routing's at its realised budget (interval of the "
          "difference below 0), else not testable (router did not learn); r = (router - oracle) / (fixed - oracle) "
          f"in mean loss at each budget; holds if r >= {C2_NEAR:.2f}, partly if {C2_HALF} <= r < {C2_NEAR:.2f}, "
          f"does not hold if r < {C2_HALF}.",
    "C3": f"budget k* of the lowest oracle perplexity (bootstrap range); holds if every k* in the range is interior "
          f"and within L*{C3_BAND:.3f} of L/2, partly if interior elsewhere, does not hold at k = 0 or L.",
    "C4": "gap(k) = 1 - oracle(k) / all-big; holds if gap(1) > 0, partly if only gap(2) > 0, does not hold if "
          "both <= 0.",
    "C5": "excess = schedule / constant - 1 for falling and rising; holds if both > 0, partly if one, does not hold "
          "if neither; the shuffled control (same budgets, permuted positions) is reported beside it.",
    "C6": f"centre (mean relative depth of the oracle's big layers) at k = L/3 above {C6_EVEN} and at k = 2L/3 "
          f"below {C6_EVEN}; holds if both, partly if one, does not hold if neither.",
    "C7": f"judged on the model trained with skip (notebook 02b); precondition: its results exist and p_skip > 0, "
          f"else not testable; polarised: some layer's "
          f"skip rate >= {C7_ALWAYS} and some <= {C7_NEVER}; early exit: the later half of the layers holds >= "
          f"{C7_EXIT:.0%} of the skips; holds if polarised and not early exit, partly if polarised and early exit, "
          "does not hold if not polarised.",
    "C8": "precondition (C2's): a router beat random routing at its realised budget (interval of the difference "
          "below 0), else not testable (routers did not learn); judged on the budgets whose router learned on "
          f"every holdout: share of big decisions in the later half > {C8_EVEN} at each; early-position big ratio > "
          f"{C8_RATIO}; with skip, on the routers of the model trained with skip (absent, or a skip router no "
          f"better than random routing at its realised route shares: that part is not testable): share of skips "
          f"in the later half > {C8_EVEN}; holds if every testable part holds, does not hold if none, else partly.",
    "C9": "mechanism (synthetic corpus, ground truth): precondition: the synthetic model's all-big loss on "
          "`compute` tokens is below its all-small loss (interval of all-small - all-big above 0), else the check "
          "is not testable; `compute` tokens gain more from compute than `easy` and "
          "`noise` tokens (intervals of both differences above 0), else does not hold (mechanism check failed); "
          f"not loss: |Spearman(loss, difficulty)| < {C9_RHO} on every holdout; holds if both, partly if not "
          "loss but no synthetic check, does not hold if either fails.",
    "C10": f"precondition: Duo, dense and freeze models trained for equal steps and each at most "
           f"{C10_UNIGRAM_BAR:.0%} of the unigram perplexity, else not testable; approaches: (Duo / dense - 1) "
           "lower at the highest p(big) than at the lowest (interval of the paired difference); freeze worse: all-small perplexity after "
           "freeze-big-then-train-small above joint training's; holds if both, partly if one, does not hold if "
           "neither.",
}


def converged(improvement: float) -> bool:
    """The Stage-1 plateau rule: the tail's relative improvement (:func:`duolib.book.evidence.tail_improvement`)
    below :data:`duolib.router.evaluate.FLAT_TOL` (the threshold pair
    ``FLAT_TAIL`` / ``FLAT_TOL`` of a flattened router curve; the two computations differ)."""
    return improvement < FLAT_TOL


def verdict(claim: str, results: dict[str, dict]) -> tuple[str, str]:
    """``(verdict, measured)`` of one claim from (partial) results, e.g. in the notebook that measures it;
    "not measured" when a key the rule needs is missing."""
    try:
        v, measured, _ = RULES[claim](results)
    except KeyError as missing:
        return MISSING, f"no result {missing} in this run"
    return v, measured


def scorecard(results: dict[str, dict]):
    """A DataFrame: claim, finding, verdict, rule (with its margin), measured (the numbers behind the
    verdict, intervals in brackets) and key (the claim's key number with its interval, as text)."""
    import pandas as pd

    rows = []
    for claim, rule in RULES.items():
        try:
            verdict, measured, key = rule(results)
        except KeyError as missing:
            verdict, measured, key = MISSING, f"no result {missing} in this run", None
        key_text = f"{key[0]}: {ci_text(key[1], key[2])}" if key else ""
        rows.append(dict(claim=claim, finding=CLAIMS[claim], verdict=verdict, rule=RULES_TEXT[claim],
                         measured=measured, key=key_text))
    return pd.DataFrame(rows)


def headline_html(card, link_prefix: str = "") -> str:
    """The book's headline table as HTML: claim, finding, verdict, key number with its 95% interval and a
    link to the claim's chapter (``link_prefix`` + chapter + ``.html``, relative to the page showing it)."""
    import html

    rows = []
    for r in card.itertuples():
        chapter = CHAPTERS[r.claim]
        rows.append(f"<tr><td>{r.claim}</td><td>{html.escape(r.finding)}</td><td><b>{html.escape(r.verdict)}</b></td>"
                    f"<td>{html.escape(r.key) or '&mdash;'}</td>"
                    f'<td><a href="{link_prefix}{chapter}.html">{chapter}</a></td></tr>')
    head = "<tr><th>claim</th><th>finding</th><th>verdict</th><th>key number [95% interval]</th><th>chapter</th></tr>"
    return f'<table class="table"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'
