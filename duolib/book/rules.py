"""The scorecard's ten rules (C1-C10 of the paper) and their thresholds: each rule reads the run's results
(``results/<step>.json``, keys in :mod:`duolib.book.scorecard`) and returns (verdict, measured text, key
interval or None).  The thresholds are ours, fixed before any run (the paper gives figures, not numbers)."""

from __future__ import annotations

import math

from .verdicts import (FAILS, HOLDS, INCONCLUSIVE, PARTLY, UNTESTABLE, Ci, above, any_true, below, ci_text, combine,
                       graded, read_ci, two_part)

# ---- thresholds (fixed before the default run; see duolib.book.scorecard.RULES_TEXT) -----------
C1_FAR = 0.10  # "far better": the oracle at least 10% lower perplexity than best-of-N (one pattern)
C2_NEAR, C2_HALF = 2 / 3, 1 / 2  # router position r between oracle (0) and fixed (1), in mean loss
C3_BAND = 1 / 6  # the U's minimum within L/6 of L/2
C6_EVEN = 0.5  # mean relative depth of evenly spread big layers
C7_ALWAYS, C7_NEVER, C7_EXIT = 0.75, 0.25, 0.90  # skip-rate poles; early exit: late half holds 90% of skips
C8_EVEN, C8_RATIO = 0.5, 1.0
C9_RHO = 0.7  # |Spearman(loss, difficulty)| below this: difficulty is not loss
C10_UNIGRAM_BAR = 0.5  # every model's perplexity at most half the unigram baseline's


def _mid(n_layers: int) -> str:
    return str(n_layers // 2)


def c1(r):
    o = r["03_oracle"]
    out, notes, key = [], [], None
    k = _mid(o["num_layers"])
    for h, d in o["holdouts"].items():
        gap, tok = read_ci(d["ci"], "c1_gap"), read_ci(d["ci"], "c1_gap_per_token")
        notes.append(f"{h}: oracle {d['oracle'][k]:.2f} vs best-of-100 {d['best100'][k]:.2f} at k={k}, "
                     f"gap {ci_text(gap, '.1%')}; per-token reading {d['best100_per_token'][k]:.2f}, "
                     f"gap {ci_text(tok, '.1%')}")
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
            learned = below(read_ci(c, "router_minus_random"), 0.0)  # mean loss: the router below random routing
            pos = read_ci(c, "position")
            notes.append(f"{h} k={k}: router {ci_text(read_ci(c, 'router'))} vs random "
                         f"{ci_text(read_ci(c, 'random'))}, r {ci_text(pos)} (0 = oracle, 1 = fixed)")
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
        v, lo, hi, _ = read_ci(d["ci"], "best_k")
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
        g1, g2 = read_ci(d["ci"], "c4_gap_k1"), read_ci(d["ci"], "c4_gap_k2")
        notes.append(f"{h}: oracle k=1 {d['oracle']['1']:.2f} vs all-big {d['all_big']:.2f}, gap {ci_text(g1, '.1%')}; "
                     f"k=2 gap {ci_text(g2, '.1%')}")
        a1 = above(g1, 0.0)
        a2 = above(g2, 0.0) if not math.isnan(g2[0]) else False
        out.append(HOLDS if a1 else INCONCLUSIVE if a1 is None else PARTLY if a2 else INCONCLUSIVE if a2 is None
                   else FAILS)
        key = key or (f"{h} gap k=1", g1, ".1%")
    return combine(out), "; ".join(notes), key


def c5(r):
    out, notes, key = [], [], None
    for h, d in r["04_schedules"]["holdouts"].items():
        fall, rise = read_ci(d["ci"], "falling_over_constant"), read_ci(d["ci"], "rising_over_constant")
        ctrl = read_ci(d["ci"], "shuffled_over_constant")
        notes.append(f"{h}: constant {d['constant']:.2f}; falling {ci_text(fall, '+.1%')}, "
                     f"rising {ci_text(rise, '+.1%')}, shuffled control {ci_text(ctrl, '+.1%')} over constant")
        out.append(two_part(above(fall, 0.0), above(rise, 0.0)))
        key = key or (f"{h} falling over constant", fall, "+.1%")
    return combine(out), "; ".join(notes), key


def c6(r):
    L = r["03_oracle"]["num_layers"] if "03_oracle" in r else 12
    lo, hi = str(round(L / 3)), str(round(2 * L / 3))
    out, notes, key = [], [], None
    for h, d in r["05_oracle_routes"]["holdouts"].items():
        c_lo, c_hi = read_ci(d["big_centre_ci"], lo), read_ci(d["big_centre_ci"], hi)
        notes.append(f"{h}: centre of big layers k={lo} {ci_text(c_lo)}, k={hi} {ci_text(c_hi)} (0.5 = even)")
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
        f = [read_ci({"x": x}, "x") for x in d["skip_fraction_ci"]]
        top = max(range(len(f)), key=lambda i: f[i].value)
        low = min(range(len(f)), key=lambda i: f[i].value)
        notes.append(f"{h}: skip rate per layer {' '.join(f'{x[0]:.2f}' for x in f)}; highest "
                     f"{ci_text(f[top])} (layer {top + 1}), lowest {ci_text(f[low])} (layer {low + 1})")
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
            learned.setdefault(k, []).append(below(read_ci(c, "router_minus_random"), 0.0))
    ok = [k for k, flags in learned.items() if all(f is True for f in flags)]
    if not ok:
        flags = [f for fl in learned.values() for f in fl]
        if flags and all(f is False for f in flags):
            return UNTESTABLE, "routers did not learn (none beat random routing at its realised budget)", None
        return INCONCLUSIVE, "no router beat random routing beyond the intervals (C2's precondition unsettled)", None
    late = {k: read_ci(d["late_big_fraction_ci"], k) for k in ok}
    ratio = read_ci(d, "early_position_big_ratio_ci")
    parts = [combine([_zone(above(v, C8_EVEN)) for v in late.values()]), _zone(above(ratio, C8_RATIO))]
    notes = (f"share of big in later layers {', '.join(f'k={k} {ci_text(v)}' for k, v in late.items())}; "
             f"early-position big ratio {ci_text(ratio)}")
    if len(ok) < len(learned):
        notes += f"; budgets left out (router no better than random): {', '.join(k for k in learned if k not in ok)}"
    sm = d.get("skip_model")
    if not sm or float(sm.get("p_skip", 0.0)) <= 0:
        notes += "; skip part not testable (no routers trained on a model trained with skip)"
    else:
        skip, gain = read_ci(sm, "skip_late_fraction_ci"), sm.get("router_minus_random_ci")
        skip_learned = below(read_ci(sm, "router_minus_random_ci"), 0.0) if gain is not None else True
        notes += f"; skip model (p_skip {float(sm['p_skip']):g}): share of skips in later layers {ci_text(skip)}"
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
        rho = read_ci(d, "spearman_ci")
        notes.append(f"{h}: Spearman(loss, difficulty) {ci_text(rho)}")
        most = max(abs(rho[1]), abs(rho[2]))
        least = 0.0 if rho[1] <= 0 <= rho[2] else min(abs(rho[1]), abs(rho[2]))
        rho_ok.append(True if most < C9_RHO else False if least >= C9_RHO else None)
        key = key or (f"{h} rho", rho, ".2f")
    not_loss = False if False in rho_ok else None if None in rho_ok else True
    gain = d6.get("synthetic", {}).get("gain_ci")
    per_label = d6.get("synthetic", {}).get("small_minus_big_ci", {})
    learned = read_ci(per_label, "compute") if "compute" in per_label else None
    if gain is None:
        notes.append("no synthetic ground-truth check")
        mechanism = "missing"
    elif learned is None or above(learned, 0.0) is not True:
        shown = "not measured" if learned is None else ci_text(learned, "+.3f")
        notes.append(f"synthetic check not testable: the big path does not predict compute tokens better than "
                     f"the small path (all-small - all-big loss {shown})")
        mechanism = "missing"
    else:
        ce, cn = read_ci(gain, "compute_minus_easy"), read_ci(gain, "compute_minus_noise")
        notes.append(f"synthetic gain: compute - easy {ci_text(ce, '+.3f')}, compute - noise {ci_text(cn, '+.3f')}")
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
    approaches = above(approach, 0.0)
    freeze = (read_ci(d, "freeze_excess_ci") if "freeze_excess_ci" in d
              else Ci(*(d["freeze_small"] / d["joint_small"] - 1,) * 3, True))
    return two_part(approaches, above(freeze, 0.0)), notes, (f"gap p={ps[-1]}", hi_gap, "+.1%")


RULES = {"C1": c1, "C2": c2, "C3": c3, "C4": c4, "C5": c5, "C6": c6, "C7": c7, "C8": c8, "C9": c9, "C10": c10}
