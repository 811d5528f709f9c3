"""The rules of the claims about routes and models (C2 routers, C6 layer placement, C7 skip, C8 router
placement, C10 dense): effect margins around 0.5 (:data:`~duolib.book.thresholds.SHARE_MARGIN`), a null
zone around ratio 1, and C2's cells judged only where their precondition holds.  Same contract as
:mod:`duolib.book.rules_selection`."""

from __future__ import annotations

import math

from .thresholds import (C2_HALF, C2_NEAR, C6_EVEN, C7_ALWAYS, C7_EXIT, C7_NEVER, C8_EVEN, C8_RATIO, C10_UNIGRAM_BAR,
                         NEGLIGIBLE, RATIO_NULL, SHARE_MARGIN)
from .verdicts import (FAILS, HOLDS, INCONCLUSIVE, PARTLY, UNTESTABLE, Ci, Judge, any_true, below, capped, ci_text,
                       combine, decide, read_ci, two_part)

#: Keys of 05_oracle_routes' skip_study: the Stage-1 model without skip and the one trained with skip.
NO_SKIP, SKIP_TRAINED = "no_skip", "skip_trained"


def learned(t) -> bool | None:
    """The router precondition (plain 95% level): its loss below random routing's by more than the
    negligible effect (True), not (False), or unknown (None)."""
    return below(t, -NEGLIGIBLE)


def c2_ceiling(o: dict, h: str, k: str, router_ppl: float) -> tuple[bool | None, float | None, str]:
    """Against the label-free ceiling (the best a router that sees only the prefix can do): (room, r_lf,
    text).  room: the ceiling beats the fixed pattern by more than the negligible effect (else a router
    landing at fixed is all a prefix allows: the cell is not testable); r_lf = (router - ceiling) /
    (fixed - ceiling) in mean loss; None where 03 did not measure the ceiling."""
    lf = o["holdouts"][h].get("label_free", {})
    if k not in lf:
        return None, None, "label-free ceiling not measured"
    ceiling, fixed = math.log(lf[k]), math.log(o["holdouts"][h]["fixed"][k])
    room = fixed - ceiling > NEGLIGIBLE
    r_lf = (math.log(router_ppl) - ceiling) / (fixed - ceiling) if room else None
    text = f"label-free ceiling {lf[k]:.2f} vs fixed {o['holdouts'][h]['fixed'][k]:.2f}"
    return room, r_lf, text + (f", r against it {r_lf:.2f}" if room else " - no room for a prefix-only router")


def c2(r, j):
    o, rt = r["03_oracle"], r["07_routers"]
    out, notes, dropped, key = [], [], [], None
    for h, d in rt["holdouts"].items():
        for k, c in d["c2"].items():
            if k not in o["holdouts"][h]["oracle"]:
                continue
            pos, router = read_ci(c, "position"), read_ci(c, "router")
            room, r_lf, ceiling = c2_ceiling(o, h, k, router.value)
            notes.append(f"{h} k={k}: router {ci_text(router)} vs random {ci_text(read_ci(c, 'random'))}, r "
                         f"{ci_text(pos)} (0 = oracle, 1 = fixed); {ceiling}")
            ok = learned(read_ci(c, "router_minus_random"))
            if ok is False or room is False:
                dropped.append(f"{h} k={k} ({'router no better than random' if ok is False else 'no room'})")
                out.append(UNTESTABLE)
                continue
            v = j.graded(pos, [C2_HALF, C2_NEAR], [FAILS, PARTLY, HOLDS])
            if v == HOLDS and r_lf is not None and r_lf < C2_HALF:
                v = PARTLY  # far from the label oracle, but near what a prefix-only router can reach
            out.append(INCONCLUSIVE if ok is None else capped(v) if room is None else v)
            key = key or (f"{h} k={k} r", pos, ".2f")
    verdict = combine(out)
    if dropped:
        notes.insert(0, f"cells dropped (precondition fails): {', '.join(dropped)}")
    if verdict == UNTESTABLE:
        notes.insert(0, "router did not learn (not better than random routing at its realised budget) or no cell "
                        "leaves room for a router")
    return verdict, "; ".join(notes), key


def c6(r, j):
    L = r["03_oracle"]["num_layers"] if "03_oracle" in r else 12
    lo, hi = str(round(L / 3)), str(round(2 * L / 3))
    out, notes, key = [], [], None
    for h, d in r["05_oracle_routes"]["holdouts"].items():
        c_lo, c_hi = read_ci(d["big_centre_ci"], lo), read_ci(d["big_centre_ci"], hi)
        notes.append(f"{h}: centre of big layers k={lo} {ci_text(c_lo)}, k={hi} {ci_text(c_hi)} (0.5 = even; late / "
                     f"early need {SHARE_MARGIN} beyond it)")
        out.append(two_part(j.above(c_lo, C6_EVEN + SHARE_MARGIN), j.below(c_hi, C6_EVEN - SHARE_MARGIN)))
        key = key or (f"{h} centre k={lo}", c_lo, ".2f")
    return combine(out), "; ".join(notes), key


def c7_parts(study: dict, j) -> tuple[list[str], list[str], tuple | None]:
    """C7's verdict and note for each holdout of one model's {big, skip} study, and the key number: the
    first holdout's highest per-layer skip rate (the "almost always" pole) with its interval."""
    out, notes, key = [], [], None
    for h, d in study["holdouts"].items():
        f = [read_ci({"x": x}, "x") for x in d["skip_fraction_ci"]]
        top = max(range(len(f)), key=lambda i: f[i].value)
        low = min(range(len(f)), key=lambda i: f[i].value)
        notes.append(f"{h}: skip rate per layer {' '.join(f'{x[0]:.2f}' for x in f)}; highest "
                     f"{ci_text(f[top])} (layer {top + 1}), lowest {ci_text(f[low])} (layer {low + 1})")
        key = key or (f"{h} highest skip rate", f[top], ".2f")
        always = any_true([j.above(x, C7_ALWAYS) for x in f])
        never = any_true([j.below(x, C7_NEVER) for x in f])
        values = [x[0] for x in f]
        n = len(values)
        early_exit = sum(values[n // 2:]) / max(sum(values), 1e-9) >= C7_EXIT
        out.append(decide(lambda a, b: (PARTLY if early_exit else HOLDS) if a and b else FAILS, always, never))
    return out, notes, key


def c7(r, j):
    studies = r["05_oracle_routes"].get("skip_study", {})
    study = studies.get(SKIP_TRAINED)
    if study is None:
        return UNTESTABLE, ("no skip-trained model in this run (notebook 02b): on the model trained without skip a "
                            "skipped layer is a route it never saw"), None
    p_skip = float(study["p_skip"])
    out, notes, key = c7_parts(study, j)
    notes.insert(0, f"judged on the skip-trained model {study['model']} (p_skip = {p_skip:g})")
    if NO_SKIP in studies:
        notes.append(f"the no-skip model {studies[NO_SKIP]['model']} (not judged) would give "
                     f"'{combine(c7_parts(studies[NO_SKIP], Judge())[0])}'")  # plain level: not a test of C7
    if p_skip <= 0:
        notes[0] += " - not testable: that model was not trained with skip"
        return UNTESTABLE, "; ".join(notes), None
    return combine(out), "; ".join(notes), key


def share_zone(j, t) -> str:
    """A share of decisions in the later half: above 0.5 + margin holds, at or below it does not."""
    return {True: HOLDS, False: FAILS, None: INCONCLUSIVE}[j.above(t, C8_EVEN + SHARE_MARGIN)]


def c8_skip_part(d: dict, j) -> tuple[str | None, str]:
    """C8's skip part on the routers of the skip-trained model: (verdict or None if not testable, note)."""
    sm = d.get("skip_model")
    if not sm or float(sm.get("p_skip", 0.0)) <= 0:
        return None, "; skip part not testable (no routers trained on a model trained with skip)"
    skip, gain = read_ci(sm, "skip_late_fraction_ci"), sm.get("router_minus_random_ci")
    ok = learned(read_ci(sm, "router_minus_random_ci")) if gain is not None else True
    note = f"; skip model (p_skip {float(sm['p_skip']):g}): share of skips in later layers {ci_text(skip)}"
    if ok is False:
        return None, note + " - skip part not testable: the skip router is no better than random routing"
    return (share_zone(j, skip) if ok else INCONCLUSIVE), note


def c8(r, j):
    d = r["07_routers"]
    flags: dict[str, list[bool | None]] = {}
    for hd in d["holdouts"].values():
        for k, c in hd["c2"].items():
            flags.setdefault(k, []).append(learned(read_ci(c, "router_minus_random")))
    ok = [k for k, fl in flags.items() if all(f is True for f in fl)]
    if not ok:
        every = [f for fl in flags.values() for f in fl]
        if every and all(f is False for f in every):
            return UNTESTABLE, "routers did not learn (none beat random routing at its realised budget)", None
        return INCONCLUSIVE, "no router beat random routing beyond the intervals (C2's precondition unsettled)", None
    late = {k: read_ci(d["late_big_fraction_ci"], k) for k in ok}
    ratio = read_ci(d, "early_position_big_ratio_ci")
    ratio_part = {True: HOLDS, False: FAILS, None: INCONCLUSIVE}[j.above(ratio, C8_RATIO + RATIO_NULL)]
    parts = [combine([share_zone(j, v) for v in late.values()]), ratio_part]
    notes = (f"share of big in later layers {', '.join(f'k={k} {ci_text(v)}' for k, v in late.items())} (holds above "
             f"{C8_EVEN + SHARE_MARGIN}); early-position big ratio {ci_text(ratio)} (within {RATIO_NULL:.0%} of 1: "
             f"no effect)")
    if len(ok) < len(flags):
        notes += f"; budgets left out (router no better than random): {', '.join(k for k in flags if k not in ok)}"
    skip, note = c8_skip_part(d, j)
    notes += note
    if skip is not None:
        parts.append(skip)
    if INCONCLUSIVE in parts:
        verdict = INCONCLUSIVE
    else:
        verdict = HOLDS if all(p == HOLDS for p in parts) else FAILS if all(p == FAILS for p in parts) else PARTLY
    return verdict, notes, (f"late big share k={ok[0]}", late[ok[0]], ".2f")


def c10(r, j):
    d = r["08_dense"]
    steps = d["steps"]
    ps = sorted(d["duo"], key=float)
    bar = C10_UNIGRAM_BAR * d["unigram"]
    models = {f"Duo p={p}": d["duo"][p] for p in ps} | {f"dense p={p}": d["dense"][p] for p in ps if p in d["dense"]}
    models |= {"joint all-small": d["joint_small"], "freeze all-small": d["freeze_small"]}
    weak = [name for name, ppl in models.items() if not ppl <= bar]
    gap = {p: read_ci(d.get("gap_ci", {}), p) if p in d.get("gap_ci", {})
           else Ci(*(d["duo"][p] / d["dense"][p] - 1,) * 3, True) for p in (ps[0], ps[-1])}
    notes = (f"steps {steps}; unigram {d['unigram']:.1f} (bar {bar:.1f}); Duo over dense {ci_text(gap[ps[0]], '+.1%')} "
             f"at p={ps[0]}, {ci_text(gap[ps[-1]], '+.1%')} at p={ps[-1]}; all-small perplexity joint "
             f"{d['joint_small']:.2f} vs freeze-then-train {d['freeze_small']:.2f}")
    if len(set(steps.values())) != 1 or weak:
        why = "unequal training steps" if len(set(steps.values())) != 1 else f"not clearly above unigram: {', '.join(weak)}"
        return UNTESTABLE, f"{why}; {notes}", None
    lo_gap, hi_gap = gap[ps[0]], gap[ps[-1]]
    if "approach_ci" in d:  # gap(lowest p) - gap(highest p) from the same resampled windows
        approach = read_ci(d, "approach_ci")
        notes += f"; gap shrinks by {ci_text(approach, '+.1%')}"
    else:  # separate intervals only: the widest difference they allow
        approach = Ci(lo_gap.value - hi_gap.value, lo_gap.low - hi_gap.high, lo_gap.high - hi_gap.low)
    freeze = (read_ci(d, "freeze_excess_ci") if "freeze_excess_ci" in d
              else Ci(*(d["freeze_small"] / d["joint_small"] - 1,) * 3, True))
    return (two_part(j.above(approach, NEGLIGIBLE), j.above(freeze, NEGLIGIBLE)), notes,
            (f"gap p={ps[-1]}", hi_gap, "+.1%"))
