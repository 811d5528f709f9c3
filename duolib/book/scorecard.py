"""The reproduction scorecard: a computed verdict for each finding C1-C10 of the paper.

Each experiment notebook writes its headline numbers with ``duolib.book.pipeline.save_results`` to
``run_dir/results/<step>.json``; :func:`scorecard` reads them and applies the rules below.  Every
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

import math
from typing import NamedTuple

HOLDS, PARTLY, FAILS = "holds", "partly", "does not hold"
INCONCLUSIVE, UNTESTABLE, MISSING = "inconclusive", "not testable", "not measured"
VERDICTS = (HOLDS, PARTLY, FAILS, INCONCLUSIVE, UNTESTABLE, MISSING)

# ---- thresholds (fixed before the default run; see RULES_TEXT) --------------------------------
C1_FAR = 0.10  # "far better": the oracle at least 10% lower perplexity than best-of-N (one pattern)
C2_NEAR, C2_HALF = 2 / 3, 1 / 2  # router position r between oracle (0) and fixed (1), in mean loss
C3_BAND = 1 / 6  # the U's minimum within L/6 of L/2
C6_EVEN = 0.5  # mean relative depth of evenly spread big layers
C7_ALWAYS, C7_NEVER, C7_EXIT = 0.75, 0.25, 0.90  # skip-rate poles; early exit: late half holds 90% of skips
C8_EVEN, C8_RATIO = 0.5, 1.0
C9_RHO = 0.7  # |Spearman(loss, difficulty)| below this: difficulty is not loss
C10_UNIGRAM_BAR = 0.5  # every model's perplexity at most half the unigram baseline's
# Stage 1 counts as converged at its size when its last 20% of steps improve the all-big holdout loss by < 2%
STAGE1_TAIL, STAGE1_PLATEAU = 0.2, 0.02

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


# ---- intervals and zones --------------------------------------------------------------------
class Ci(NamedTuple):
    """A number and its interval; ``point`` when the result file held a bare number (no interval)."""

    value: float
    low: float
    high: float
    point: bool = False


def _ci(d: dict, key: str) -> Ci:
    """The interval dict ``d[key]`` (a bare number: a point, low = high = value)."""
    x = d[key]
    if isinstance(x, dict):
        return Ci(float(x["value"]), float(x["low"]), float(x["high"]))
    return Ci(float(x), float(x), float(x), True)


def _fmt(t: Ci, spec: str = ".2f") -> str:
    point = f"{t.value:{spec}}"
    return f"{point} (no interval)" if t.point else f"{point} [{t.low:{spec}}, {t.high:{spec}}]"


def above(t: tuple[float, float, float], bound: float) -> bool | None:
    """True if the interval lies above ``bound``, False if at or below it, None if it straddles it."""
    lo, hi = t.low, t.high
    if lo > bound:
        return True
    if hi <= bound:
        return False
    return None


def below(t: tuple[float, float, float], bound: float) -> bool | None:
    """True if the interval lies below ``bound``, False if at or above it, None if it straddles it."""
    lo, hi = t.low, t.high
    if hi < bound:
        return True
    if lo >= bound:
        return False
    return None


def any_true(flags: list[bool | None]) -> bool | None:
    """Some flag is True -> True; all False -> False; else (unknowns, no True) None."""
    return True if True in flags else False if all(f is False for f in flags) else None


def graded(t: tuple[float, float, float], cuts: list[float], zones: list[str]) -> str:
    """The zone (``zones[i]`` between ``cuts[i-1]`` and ``cuts[i]``) holding the whole interval, else
    inconclusive; ``zones`` has one more entry than ``cuts`` (ascending)."""
    lo, hi = t.low, t.high
    z_lo = sum(lo >= c for c in cuts)
    z_hi = sum(hi >= c for c in cuts)
    return zones[z_lo] if z_lo == z_hi else INCONCLUSIVE


def two_part(a: bool | None, b: bool | None) -> str:
    """Both parts true -> holds, one -> partly, none -> does not hold; an unknown part that could
    change the verdict -> inconclusive."""
    if a is None or b is None:
        return INCONCLUSIVE
    return HOLDS if a and b else PARTLY if a or b else FAILS


def combine(verdicts: list[str]) -> str:
    """Per-holdout (or per-budget) verdicts -> one: see the module docstring."""
    verdicts = [v for v in verdicts if v != MISSING]
    if not verdicts:
        return MISSING
    if set(verdicts) == {UNTESTABLE}:
        return UNTESTABLE
    verdicts = [v for v in verdicts if v != UNTESTABLE]  # judged on the parts whose precondition holds
    if len(set(verdicts)) == 1:
        return verdicts[0]
    rest = {v for v in verdicts if v != INCONCLUSIVE}
    return INCONCLUSIVE if len(rest) <= 1 else PARTLY


def _mid(n_layers: int) -> str:
    return str(n_layers // 2)


# ---- the rules: each returns (verdict, measured text, key interval or None) -------------------
def c1(r):
    o = r["03_oracle"]
    out, notes, key = [], [], None
    k = _mid(o["num_layers"])
    for h, d in o["holdouts"].items():
        gap, tok = _ci(d["ci"], "c1_gap"), _ci(d["ci"], "c1_gap_per_token")
        notes.append(f"{h}: oracle {d['oracle'][k]:.2f} vs best-of-100 {d['best100'][k]:.2f} at k={k}, "
                     f"gap {_fmt(gap, '.1%')}; per-token reading {d['best100_per_token'][k]:.2f}, "
                     f"gap {_fmt(tok, '.1%')}")
        out.append(graded(gap, [1e-12, C1_FAR], [FAILS, PARTLY, HOLDS]))
        key = key or (f"{h} gap", gap, ".1%")
    return combine(out), "; ".join(notes), key


def c2(r):
    o, rt = r["03_oracle"], r["07_routers"]
    out, notes, key = [], [], None
    for h, d in rt["holdouts"].items():
        for k, c in d["c2"].items():
            if k not in o["holdouts"][h]["oracle"]:
                continue
            learned = below(_ci(c, "router_minus_random"), 0.0)  # mean loss: the router below random routing
            pos = _ci(c, "position")
            notes.append(f"{h} k={k}: router {_fmt(_ci(c, 'router'))} vs random {_fmt(_ci(c, 'random'))}, "
                         f"r {_fmt(pos)} (0 = oracle, 1 = fixed)")
            if learned is None:
                out.append(INCONCLUSIVE)
            elif not learned:
                out.append(UNTESTABLE)
                notes[-1] += " - not testable: no better than random routing"
            else:
                out.append(graded(pos, [C2_HALF, C2_NEAR], [FAILS, PARTLY, HOLDS]))
            key = key or (f"{h} k={k} r", pos, ".2f")
    verdict = combine(out)
    if verdict == UNTESTABLE:
        notes.insert(0, "router did not learn (not better than random routing at its realised budget)")
    return verdict, "; ".join(notes), key


def c3(r):
    o = r["03_oracle"]
    L = o["num_layers"]
    out, notes, key = [], [], None
    for h, d in o["holdouts"].items():
        v, lo, hi, _ = _ci(d["ci"], "best_k")
        zones = {HOLDS if 0 < k < L and abs(k - L / 2) <= L * C3_BAND + 1e-9 else PARTLY if 0 < k < L else FAILS
                 for k in range(int(lo), int(hi) + 1)}
        notes.append(f"{h}: lowest oracle perplexity at k={int(v)} of {L} (range {int(lo)}-{int(hi)})")
        out.append(zones.pop() if len(zones) == 1 else INCONCLUSIVE)
        key = key or (f"{h} k*", Ci(v, lo, hi), ".0f")
    return combine(out), "; ".join(notes), key


def c4(r):
    o = r["03_oracle"]
    out, notes, key = [], [], None
    for h, d in o["holdouts"].items():
        g1, g2 = _ci(d["ci"], "c4_gap_k1"), _ci(d["ci"], "c4_gap_k2")
        notes.append(f"{h}: oracle k=1 {d['oracle']['1']:.2f} vs all-big {d['all_big']:.2f}, gap {_fmt(g1, '.1%')}; "
                     f"k=2 gap {_fmt(g2, '.1%')}")
        a1 = above(g1, 0.0)
        a2 = above(g2, 0.0) if not math.isnan(g2[0]) else False
        out.append(HOLDS if a1 else INCONCLUSIVE if a1 is None else PARTLY if a2 else INCONCLUSIVE if a2 is None
                   else FAILS)
        key = key or (f"{h} gap k=1", g1, ".1%")
    return combine(out), "; ".join(notes), key


def c5(r):
    out, notes, key = [], [], None
    for h, d in r["04_schedules"]["holdouts"].items():
        fall, rise = _ci(d["ci"], "falling_over_constant"), _ci(d["ci"], "rising_over_constant")
        ctrl = _ci(d["ci"], "shuffled_over_constant")
        notes.append(f"{h}: constant {d['constant']:.2f}; falling {_fmt(fall, '+.1%')}, rising {_fmt(rise, '+.1%')}, "
                     f"shuffled control {_fmt(ctrl, '+.1%')} over constant")
        out.append(two_part(above(fall, 0.0), above(rise, 0.0)))
        key = key or (f"{h} falling over constant", fall, "+.1%")
    return combine(out), "; ".join(notes), key


def c6(r):
    L = r["03_oracle"]["num_layers"] if "03_oracle" in r else 12
    lo, hi = str(round(L / 3)), str(round(2 * L / 3))
    out, notes, key = [], [], None
    for h, d in r["05_oracle_routes"]["holdouts"].items():
        c_lo, c_hi = _ci(d["big_centre_ci"], lo), _ci(d["big_centre_ci"], hi)
        notes.append(f"{h}: centre of big layers k={lo} {_fmt(c_lo)}, k={hi} {_fmt(c_hi)} (0.5 = even)")
        late = above(c_lo, C6_EVEN)
        early = below(c_hi, C6_EVEN)
        out.append(two_part(late, early))
        key = key or (f"{h} centre k={lo}", c_lo, ".2f")
    return combine(out), "; ".join(notes), key


#: Keys of 05_oracle_routes' skip_study: the Stage-1 model without skip and the one trained with skip.
NO_SKIP, SKIP_TRAINED = "no_skip", "skip_trained"


def c7_parts(study: dict) -> tuple[list[str], list[str], tuple | None]:
    """C7's verdict and note for each holdout of one model's {big, skip} study, and the key number: the
    first holdout's highest per-layer skip rate (the "almost always" pole) with its interval."""
    out, notes, key = [], [], None
    for h, d in study["holdouts"].items():
        f = [_ci({"x": x}, "x") for x in d["skip_fraction_ci"]]
        top = max(range(len(f)), key=lambda i: f[i].value)
        low = min(range(len(f)), key=lambda i: f[i].value)
        notes.append(f"{h}: skip rate per layer {' '.join(f'{x[0]:.2f}' for x in f)}; highest "
                     f"{_fmt(f[top])} (layer {top + 1}), lowest {_fmt(f[low])} (layer {low + 1})")
        key = key or (f"{h} highest skip rate", f[top], ".2f")
        always = any_true([True if x[1] >= C7_ALWAYS else False if x[2] < C7_ALWAYS else None for x in f])
        never = any_true([True if x[2] <= C7_NEVER else False if x[1] > C7_NEVER else None for x in f])
        polarised = False if False in (always, never) else None if None in (always, never) else True
        values = [x[0] for x in f]
        n = len(values)
        early_exit = sum(values[n // 2:]) / max(sum(values), 1e-9) >= C7_EXIT
        out.append(INCONCLUSIVE if polarised is None else (PARTLY if early_exit else HOLDS) if polarised else FAILS)
    return out, notes, key


def c7(r):
    studies = r["05_oracle_routes"].get("skip_study", {})
    study = studies.get(SKIP_TRAINED)
    if study is None:
        return UNTESTABLE, ("no skip-trained model in this run (notebook 02b): on the model trained without skip a "
                            "skipped layer is a route it never saw"), None
    p_skip = float(study["p_skip"])
    out, notes, key = c7_parts(study)
    notes.insert(0, f"judged on the skip-trained model {study['model']} (p_skip = {p_skip:g})")
    if NO_SKIP in studies:
        notes.append(f"the no-skip model {studies[NO_SKIP]['model']} (not judged) would give "
                     f"'{combine(c7_parts(studies[NO_SKIP])[0])}'")
    if p_skip <= 0:
        notes[0] += " - not testable: that model was not trained with skip"
        return UNTESTABLE, "; ".join(notes), None
    return combine(out), "; ".join(notes), key


def skip_models(results: dict[str, dict]):
    """Which model each skip verdict was judged on: a DataFrame of claim, part, model (its run folder) and
    p_skip; "none" where the run holds no such model (the verdict is then not testable)."""
    import pandas as pd

    study = results.get("05_oracle_routes", {}).get("skip_study", {}).get(SKIP_TRAINED)
    rows = [dict(claim="C7", part="{big, skip} oracle", model=study["model"] if study else "none",
                 p_skip=float(study["p_skip"]) if study else float("nan"))]
    if "07_routers" in results:
        sm = results["07_routers"].get("skip_model") or {}
        rows.append(dict(claim="C8", part="routers with skip", model=sm.get("model", "none"),
                         p_skip=float(sm.get("p_skip", float("nan")))))
    return pd.DataFrame(rows)


def _zone(flag: bool | None) -> str:
    return {True: HOLDS, False: FAILS, None: INCONCLUSIVE}[flag]


def c8(r):
    d = r["07_routers"]
    learned: dict[str, list[bool | None]] = {}
    for hd in d["holdouts"].values():
        for k, c in hd["c2"].items():
            learned.setdefault(k, []).append(below(_ci(c, "router_minus_random"), 0.0))
    ok = [k for k, flags in learned.items() if all(f is True for f in flags)]
    if not ok:
        flags = [f for fl in learned.values() for f in fl]
        if flags and all(f is False for f in flags):
            return UNTESTABLE, "routers did not learn (none beat random routing at its realised budget)", None
        return INCONCLUSIVE, "no router beat random routing beyond the intervals (C2's precondition unsettled)", None
    late = {k: _ci(d["late_big_fraction_ci"], k) for k in ok}
    ratio = _ci(d, "early_position_big_ratio_ci")
    parts = [combine([_zone(above(v, C8_EVEN)) for v in late.values()]), _zone(above(ratio, C8_RATIO))]
    notes = (f"share of big in later layers {', '.join(f'k={k} {_fmt(v)}' for k, v in late.items())}; "
             f"early-position big ratio {_fmt(ratio)}")
    if len(ok) < len(learned):
        notes += f"; budgets left out (router no better than random): {', '.join(k for k in learned if k not in ok)}"
    sm = d.get("skip_model")
    if not sm or float(sm.get("p_skip", 0.0)) <= 0:
        notes += "; skip part not testable (no routers trained on a model trained with skip)"
    else:
        skip, gain = _ci(sm, "skip_late_fraction_ci"), sm.get("router_minus_random_ci")
        skip_learned = below(_ci(sm, "router_minus_random_ci"), 0.0) if gain is not None else True
        notes += f"; skip model (p_skip {float(sm['p_skip']):g}): share of skips in later layers {_fmt(skip)}"
        if skip_learned is False:
            notes += " - skip part not testable: the skip router is no better than random routing"
        else:
            parts.append(_zone(above(skip, C8_EVEN)) if skip_learned else INCONCLUSIVE)
    if INCONCLUSIVE in parts:
        verdict = INCONCLUSIVE
    else:
        verdict = HOLDS if all(p == HOLDS for p in parts) else FAILS if all(p == FAILS for p in parts) else PARTLY
    return verdict, notes, (f"late big share k={ok[0]}", late[ok[0]], ".2f")


def c9(r):
    d6 = r["06_difficulty"]
    notes, rho_ok, key = [], [], None
    for h, d in d6["holdouts"].items():
        rho = _ci(d, "spearman_ci")
        notes.append(f"{h}: Spearman(loss, difficulty) {_fmt(rho)}")
        most = max(abs(rho[1]), abs(rho[2]))
        least = 0.0 if rho[1] <= 0 <= rho[2] else min(abs(rho[1]), abs(rho[2]))
        rho_ok.append(True if most < C9_RHO else False if least >= C9_RHO else None)
        key = key or (f"{h} rho", rho, ".2f")
    not_loss = False if False in rho_ok else None if None in rho_ok else True
    gain = d6.get("synthetic", {}).get("gain_ci")
    per_label = d6.get("synthetic", {}).get("small_minus_big_ci", {})
    learned = _ci(per_label, "compute") if "compute" in per_label else None
    if gain is None:
        notes.append("no synthetic ground-truth check")
        mechanism = "missing"
    elif learned is None or above(learned, 0.0) is not True:
        shown = "not measured" if learned is None else _fmt(learned, "+.3f")
        notes.append(f"synthetic check not testable: the big path does not predict compute tokens better than "
                     f"the small path (all-small - all-big loss {shown})")
        mechanism = "missing"
    else:
        ce, cn = _ci(gain, "compute_minus_easy"), _ci(gain, "compute_minus_noise")
        notes.append(f"synthetic gain: compute - easy {_fmt(ce, '+.3f')}, compute - noise {_fmt(cn, '+.3f')}")
        a, b = above(ce, 0.0), above(cn, 0.0)
        mechanism = True if a and b else False if False in (a, b) else None
    if mechanism is False:
        notes.insert(0, "mechanism check failed: compute tokens do not gain more than easy and noise tokens")
        return FAILS, "; ".join(notes), key
    if not_loss is False:
        return FAILS, "; ".join(notes), key
    if mechanism is None or not_loss is None:
        return INCONCLUSIVE, "; ".join(notes), key
    return (PARTLY if mechanism == "missing" else HOLDS), "; ".join(notes), key


def c10(r):
    d = r["08_dense"]
    steps = d["steps"]
    ps = sorted(d["duo"], key=float)
    bar = C10_UNIGRAM_BAR * d["unigram"]
    models = {f"Duo p={p}": d["duo"][p] for p in ps} | {f"dense p={p}": d["dense"][p] for p in ps if p in d["dense"]}
    models |= {"joint all-small": d["joint_small"], "freeze all-small": d["freeze_small"]}
    weak = [name for name, ppl in models.items() if not ppl <= bar]
    gap = {p: _ci(d.get("gap_ci", {}), p) if p in d.get("gap_ci", {}) else Ci(*(d["duo"][p] / d["dense"][p] - 1,) * 3, True)
           for p in (ps[0], ps[-1])}
    notes = (f"steps {steps}; unigram {d['unigram']:.1f} (bar {bar:.1f}); Duo over dense {_fmt(gap[ps[0]], '+.1%')} "
             f"at p={ps[0]}, {_fmt(gap[ps[-1]], '+.1%')} at p={ps[-1]}; all-small perplexity joint "
             f"{d['joint_small']:.2f} vs freeze-then-train {d['freeze_small']:.2f}")
    if len(set(steps.values())) != 1 or weak:
        why = "unequal training steps" if len(set(steps.values())) != 1 else f"not clearly above unigram: {', '.join(weak)}"
        return UNTESTABLE, f"{why}; {notes}", None
    lo_gap, hi_gap = gap[ps[0]], gap[ps[-1]]
    if "approach_ci" in d:  # gap(lowest p) - gap(highest p) from the same resampled windows
        approach = _ci(d, "approach_ci")
        notes += f"; gap shrinks by {_fmt(approach, '+.1%')}"
    else:  # separate intervals only: the widest difference they allow
        approach = Ci(lo_gap.value - hi_gap.value, lo_gap.low - hi_gap.high, lo_gap.high - hi_gap.low)
    approaches = above(approach, 0.0)
    freeze = _ci(d, "freeze_excess_ci") if "freeze_excess_ci" in d else Ci(*(d["freeze_small"] / d["joint_small"] - 1,) * 3, True)
    return two_part(approaches, above(freeze, 0.0)), notes, (f"gap p={ps[-1]}", hi_gap, "+.1%")


RULES = {"C1": c1, "C2": c2, "C3": c3, "C4": c4, "C5": c5, "C6": c6, "C7": c7, "C8": c8, "C9": c9, "C10": c10}


def converged(improvement: float) -> bool:
    """The Stage-1 plateau rule: the tail's relative improvement (:func:`duolib.book.evidence.tail_improvement`)
    below ``STAGE1_PLATEAU``."""
    return improvement < STAGE1_PLATEAU


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
        key_text = f"{key[0]}: {_fmt(key[1], key[2])}" if key else ""
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
