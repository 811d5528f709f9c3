"""The reproduction scorecard: a computed verdict for each finding C1-C10 of the paper.

Each experiment notebook writes its headline numbers with ``duolib.book.kit.save_results`` to
``run_dir/results/<step>.json``; :func:`scorecard` reads them and applies the rules of
:mod:`duolib.book.rules` (verdict logic: :mod:`duolib.book.verdicts`).  Every
number a rule uses carries a 95% window-bootstrap interval (:mod:`duolib.book.evidence`), stored as
``{"value", "low", "high"}``.  Outcomes:

- **holds** / **partly** / **does not hold**: the interval lies wholly inside one zone of the rule, each
  zone boundary a test decided under Holm's correction across every claim's tests
  (:func:`duolib.book.verdicts.judge_all`), effects counted only beyond a stated margin, and no effect
  (a null zone: e.g. a ratio within 5% of 1) read as "does not hold";
- **inconclusive**: the interval straddles a boundary of the rule, a test Holm does not decide, or the
  claim's controls (or a precondition) were not measured: such a verdict cannot hold;
- **not testable**: a stated precondition fails (no model trained with skip, a router that does not
  beat random routing, models too weak or trained for unequal steps, or a measured capacity below its
  registered threshold: :data:`duolib.book.thresholds.PRECONDITIONS`, whose text says what size would
  make the claim testable);
- **not measured**: the step's results are missing from the run.

The thresholds are ours (the paper gives figures, not numbers), registered before the default run
(:data:`duolib.book.thresholds.RULES_REGISTERED`) and printed with the verdicts (:data:`RULES_TEXT`,
:data:`PRECONDITIONS_TEXT`, :data:`FAMILY_TEXT`).  A number measured on several training seeds carries
``"seeds": [...]`` and is printed with their range.  Per holdout (or budget) verdicts combine as: the
parts that are not testable are left out (all of them: not testable); all the same -> that verdict;
inconclusive parts with the rest agreeing -> inconclusive; else partly.

Result files and keys (budgets ``k`` and p values are JSON strings; ``ci`` = interval dict; typed in
:mod:`duolib.book.results`):

- ``03_oracle``: ``num_layers``; ``holdouts.<h>.{all_big, all_small}``, ``.{oracle, fixed, best_of_random,
  best_of_random_per_token}.<k>`` (the registered reductions); ``holdouts.<h>.ci`` = :func:`duolib.book.evidence.oracle_intervals`.
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
- controls (C1, C3, C4: ``03_oracle.holdouts.<h>.ci.{oracle_gain, placebo_gain, beyond_placebo}_k<k>``,
  ``matched_k<k>``; C2: ``03_oracle.holdouts.<h>.label_free.<k>``; C5: ``falling_over_shuffled``,
  ``rising_over_shuffled``; C9: ``06_difficulty.holdouts.<h>.split_half_ci``) and ``preconditions.<name>``
  in any step (interval dicts).
- ``08_dense``: ``steps.{duo, dense, freeze}``, ``unigram``, ``duo.<p>``, ``dense.<p>``,
  ``joint_small``, ``freeze_small`` (perplexities), optional ``gap_ci.<p>`` and ``approach_ci`` =
  :func:`duolib.book.evidence.dense_gap_intervals`, ``freeze_excess_ci``.
"""

from __future__ import annotations

from ..router.evaluate import FLAT_TOL
from ..stats import holm
from .rules import RULES, gate, gated
from .seeds import combine_seeds, with_shared
from .thresholds import (C1_FAR, C2_HALF, C2_NEAR, C3_BAND, C6_EVEN, C7_ALWAYS, C7_EXIT, C7_NEVER, C8_EVEN, C8_RATIO,
                         C9_RELIABLE, C9_RHO, C10_UNIGRAM_BAR, NEGLIGIBLE, PRECONDITIONS, RATIO_NULL, RULES_REGISTERED,
                         SHARE_MARGIN)
from .verdicts import MISSING, ci_text, judge_all, seed_agreement

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

_NEG = f"{NEGLIGIBLE:g}"
_CONTROLS = "without its controls measured the verdict cannot hold (inconclusive at best)"

#: Every rule, threshold and margin, in words (printed beside each verdict; registered: RULES_REGISTERED).
RULES_TEXT = {
    "C1": f"gap = 1 - oracle / best-of-N (one-pattern reading) at k = L/2; holds if gap > {C1_FAR:.0%}, partly if "
          f"{NEGLIGIBLE:.0%} < gap <= {C1_FAR:.0%}, does not hold if gap <= {NEGLIGIBLE:.0%}; survives the placebo if "
          f"the oracle's gain over all-big beyond the placebo's (best of as many equal-compute candidates) is above "
          f"{_NEG} nats, else one step down (holds -> partly -> does not hold); {_CONTROLS}.",
    "C2": "cells (holdout, budget) are judged only where their preconditions hold, and the dropped ones are named: "
          f"the router's loss below random routing's by more than {_NEG} nats at its realised budget, and the "
          f"label-free ceiling (a route chosen without the target) below the fixed pattern by more than {_NEG} nats "
          f"(else no router that sees only the prefix could move); r = (router - oracle) / (fixed - oracle) in mean "
          f"loss; holds if r > {C2_NEAR:.2f}, partly if {C2_HALF} < r <= {C2_NEAR:.2f}, does not hold if r <= "
          f"{C2_HALF}; a cell that holds but lies below {C2_HALF} of the way from the label-free ceiling to fixed is "
          "partly (far from the label oracle, near what a prefix allows); without the ceiling measured a cell cannot "
          "hold.",
    "C3": f"budget k* of the lowest oracle perplexity (bootstrap range); holds if every k* in the range is interior "
          f"and within L*{C3_BAND:.3f} of L/2 and, as the paper reads it, the curve follows the candidate count: no "
          f"matched pair oracle(k) - oracle(L-k) (equal candidates, k < L/2) above {_NEG} nats (else partly: compute, "
          f"not candidates, shapes it); partly if interior elsewhere, does not hold at k = 0 or L; {_CONTROLS}.",
    "C4": f"gap(k) = 1 - oracle(k) / all-big; holds if gap(1) > {NEGLIGIBLE:.0%} and the oracle's gain at k = 1 "
          f"beyond the placebo with as many candidates is above {_NEG} nats; partly if gap(1) > {NEGLIGIBLE:.0%} but "
          f"the placebo explains it, or if only k = 2 beats all-big beyond its placebo; else does not hold; "
          f"{_CONTROLS}.",
    "C5": f"excess = schedule / constant - 1 and schedule / shuffled - 1 (the control: same budgets at random "
          f"positions) for falling and rising; a schedule loses if both excesses are above {NEGLIGIBLE:.0%}; holds if "
          f"both lose, partly if one, does not hold if neither; {_CONTROLS}.",
    "C6": f"centre (mean relative depth of the oracle's big layers) at k = L/3 above {C6_EVEN + SHARE_MARGIN:g} (late) "
          f"and at k = 2L/3 below {C6_EVEN - SHARE_MARGIN:g} (early): a margin of {SHARE_MARGIN} around {C6_EVEN}, "
          f"more "
          f"than moving one of L/3 big layers by one layer; holds if both, partly if one, does not hold if neither.",
    "C7": f"judged on the model trained with skip (notebook 02b); precondition: its results exist and p_skip > 0, "
          f"else not testable; polarised: some layer's skip rate above {C7_ALWAYS} and some below {C7_NEVER}; early "
          f"exit: the later half of the layers holds >= {C7_EXIT:.0%} of the skips; holds if polarised and not early "
          "exit, partly if polarised and early exit, does not hold if not polarised.",
    "C8": f"precondition (C2's): a router beat random routing by more than {_NEG} nats at its realised budget, "
          "else not testable; judged on the budgets whose router learned on every holdout: share of big decisions "
          f"in the later half above {C8_EVEN + SHARE_MARGIN:g} at each (margin {SHARE_MARGIN}); early-position big "
          f"ratio above {C8_RATIO + RATIO_NULL:g} (within {RATIO_NULL:.0%} of {C8_RATIO:g}: no effect, does not hold); "
          f"with skip, on the routers of the model trained with skip (absent, or no better than random routing: that "
          f"part is not testable): share of skips in the later half above {C8_EVEN + SHARE_MARGIN:g}; holds if every "
          "testable part holds, does not hold if none, else partly.",
    "C9": f"stable measure: the split-half rank correlation of difficulty (two disjoint halves of the pattern set) "
          f"above {C9_RELIABLE} on every holdout, else not testable (a noise measure passes |rho| < {C9_RHO}); "
          "mechanism (synthetic corpus, ground truth): precondition: all-small - all-big loss on `compute` tokens "
          f"above {_NEG} nats, else the check is not testable; `compute` tokens gain more than `easy` and `noise` "
          f"tokens by more than {_NEG} nats each, else does not hold; not loss: |Spearman(loss, difficulty)| < "
          f"{C9_RHO} on every holdout; holds if all, partly if not loss but no synthetic check, does not hold if "
          f"either fails; {_CONTROLS} (the split-half reliability).",
    "C10": f"precondition: Duo, dense and freeze models trained for equal steps and each at most "
           f"{C10_UNIGRAM_BAR:.0%} of the unigram perplexity, else not testable; approaches: (Duo / dense - 1) lower "
           f"at the highest p(big) than at the lowest by more than {NEGLIGIBLE:.0%} (interval of the paired "
           f"difference); freeze worse: all-small perplexity after freeze-big-then-train-small above joint "
           f"training's by more than {NEGLIGIBLE:.0%}; holds if both, partly if one, does not hold if neither.",
}

#: The preconditions in words: name, measured quantity, threshold, claims, rationale, what makes it testable.
PRECONDITIONS_TEXT = {p.name: (f"{p.quantity} {'at most' if p.at_most else 'at least'} {p.threshold:g} for "
                               f"{', '.join(p.claims)} ({p.why}); {p.testable}") for p in PRECONDITIONS}

#: How the verdicts are reached across claims (printed on the scorecard page).
FAMILY_TEXT = ("every interval decision of every claim is a one-sided test (p from its stored 95% interval); "
               "Holm's step-down correction keeps the family-wise error at 5%; a test Holm does not reject leaves "
               "its part inconclusive. Preconditions are read at the plain 95% level and are not in the family. "
               "With several training seeds a decisive verdict (holds, partly, does not hold) stands only when every "
               "seed judged alone supports it, else it reads inconclusive. "
               f"Rules registered {RULES_REGISTERED}.")


def converged(improvement: float) -> bool:
    """The Stage-1 plateau rule: the tail's relative improvement (:func:`duolib.book.evidence.tail_improvement`)
    below :data:`duolib.router.evaluate.FLAT_TOL` (the threshold pair
    ``FLAT_TAIL`` / ``FLAT_TOL`` of a flattened router curve; the two computations differ)."""
    return improvement < FLAT_TOL


def judged(results: dict[str, dict]):
    """Every claim's (verdict, measured, key) under Holm's correction over all their tests, preconditions
    applied, and the judge holding the family of tests."""
    def run(judge):
        rows = {}
        for claim, rule in RULES.items():
            judge.claim = claim
            try:
                v, measured, key = rule(results, judge)
            except KeyError as missing:
                rows[claim] = (MISSING, f"no result {missing} in this run", None)
                continue
            status, notes = gate(claim, results)
            if notes:
                measured = f"{measured}; {'; '.join(notes)}"
            rows[claim] = (gated(v, status), measured, key)
        return rows

    return judge_all(run)


def verdict(claim: str, results: dict[str, dict]) -> tuple[str, str]:
    """``(verdict, measured)`` of one claim from (partial) results, e.g. in the notebook that measures it;
    "not measured" when a key the rule needs is missing.  Holm's family is every test the given results
    allow: pass all of the run's results to get the scorecard's verdict."""
    v, measured, _ = judged(results)[0][claim]
    return v, measured


def scorecard(results: dict[str, dict]):
    """A DataFrame: claim, finding, verdict, rule (with its margin), measured (the numbers behind the
    verdict, intervals in brackets, seed ranges where there are seeds) and key (the claim's key number
    with its interval, as text)."""
    import pandas as pd

    rows = []
    for claim, (v, measured, key) in judged(results)[0].items():
        key_text = f"{key[0]}: {ci_text(key[1], key[2])}" if key else ""
        rows.append(dict(claim=claim, finding=CLAIMS[claim], verdict=v, rule=RULES_TEXT[claim], measured=measured,
                         key=key_text))
    return pd.DataFrame(rows)


def seeded_scorecard(per_seed: list[dict[str, dict]], shared=()):
    """The book's scorecard over training seeds: ``(card, by_seed)``.  ``card`` is :func:`scorecard` of the
    results combined over seeds and windows (:func:`duolib.book.seeds.combine_seeds`) with each verdict put
    through :func:`duolib.book.verdicts.seed_agreement` (a claim whose seeds disagree reads inconclusive, and
    its "measured" says which seed said what); ``by_seed`` has one column per seed (each seed's results alone,
    the chapters in ``shared`` taken from seed 0: :func:`duolib.book.seeds.with_shared`) and the combined
    verdict before (``combined``) and after (``verdict``) the agreement rule."""
    import pandas as pd

    card = scorecard(combine_seeds(per_seed))
    by_seed = pd.DataFrame({f"seed {s}": scorecard(r).set_index("claim")["verdict"]
                            for s, r in enumerate(with_shared(per_seed, shared))})
    by_seed.insert(0, "combined", card.set_index("claim")["verdict"])
    final = [seed_agreement(by_seed.at[c, "combined"], by_seed.loc[c].drop("combined").tolist()) for c in card["claim"]]
    for i, (claim, v) in enumerate(zip(card["claim"], final)):
        if v != card.at[i, "verdict"]:
            said = ", ".join(f"{col} {by_seed.at[claim, col]}" for col in by_seed.columns[1:])
            card.at[i, "measured"] = (f"{card.at[i, 'measured']}; seeds disagree ({said}): {card.at[i, 'verdict']} "
                                      f"over the combined intervals, {v} until every seed supports it")
            card.at[i, "verdict"] = v
    by_seed.insert(1, "verdict", final)
    return card, by_seed


def tests_table(results: dict[str, dict]):
    """The family Holm decided: claim, bound, interval (value, low, high), p, Holm-adjusted p, decided."""
    import pandas as pd

    family = judged(results)[1].family
    keys = list(family)
    rejected, adjusted = holm([family[k] for k in keys]) if keys else ([], [])
    return pd.DataFrame([dict(claim=k[0], bound=k[1], value=k[2], low=k[3], high=k[4], p=family[k], p_holm=a,
                              decided=r) for k, a, r in zip(keys, adjusted, rejected)])


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
