"""The rules of the claims whose effect selection among candidate routes could produce (C1, C3, C4, C5)
and of C9 (difficulty): each reads its effect and the controls that separate selection from compute,
and says how much of the effect survives them (keys of ``03_oracle.holdouts.<h>.ci``:
``oracle_gain_k<k>``, ``placebo_gain_k<k>``, ``beyond_placebo_k<k>``, ``matched_k<k>``; 04's
``*_over_shuffled``; 06's ``split_half_ci``).  Without its controls a claim cannot hold: the verdict
is capped at inconclusive and the text says "controls not measured".

Every rule takes the results and a :class:`duolib.book.verdicts.Judge` (interval tests under Holm's
correction) and returns (verdict, measured text, key interval or None)."""

from __future__ import annotations

from .thresholds import C1_FAR, C3_BAND, C9_RELIABLE, C9_RHO, NEGLIGIBLE
from .verdicts import (FAILS, HOLDS, INCONCLUSIVE, PARTLY, UNTESTABLE, Ci, above, all_true, any_true, capped, ci_text,
                       combine, decide, read_ci)

NOT_MEASURED = "controls not measured (the verdict cannot hold without them)"


def mid_k(n_layers: int) -> str:
    return str(n_layers // 2)


def survival(ci: dict, k: str) -> tuple[Ci | None, str]:
    """The part of the oracle's gain over all-big at ``k`` that the placebo (the same number of
    equal-compute candidates) does not explain, and a sentence saying how much of the gain that is."""
    if f"beyond_placebo_k{k}" not in ci:
        return None, f"k={k}: {NOT_MEASURED}"
    beyond = read_ci(ci, f"beyond_placebo_k{k}")
    text = f"k={k}: beyond the placebo {ci_text(beyond, '+.3f')} nats"
    if f"oracle_gain_k{k}" in ci and f"placebo_gain_k{k}" in ci:
        gain, placebo = read_ci(ci, f"oracle_gain_k{k}"), read_ci(ci, f"placebo_gain_k{k}")
        share = beyond.value / gain.value if gain.value > 0 else float("nan")
        text += (f" of the oracle's {ci_text(gain, '+.3f')} over all-big ({share:.0%} survives; the placebo "
                 f"alone gains {ci_text(placebo, '+.3f')})")
    return beyond, text


def step_down(verdict: str, survives: bool | None) -> str:
    """A verdict whose effect the placebo explains loses one step (holds -> partly -> does not hold)."""
    if verdict in (INCONCLUSIVE, FAILS):
        return verdict
    return decide(lambda s: verdict if s else {HOLDS: PARTLY, PARTLY: FAILS}[verdict], survives)


def c1(r, j):
    o = r["03_oracle"]
    out, notes, key = [], [], None
    k = mid_k(o["num_layers"])
    for h, d in o["holdouts"].items():
        gap, tok = read_ci(d["ci"], "c1_gap"), read_ci(d["ci"], "c1_gap_per_token")
        beyond, text = survival(d["ci"], k)
        notes.append(f"{h}: oracle {d['oracle'][k]:.2f} vs best-of-100 {d['best_of_random'][k]:.2f} at k={k}, "
                     f"gap {ci_text(gap, '.1%')}; per-token reading {d['best_of_random_per_token'][k]:.2f}, "
                     f"gap {ci_text(tok, '.1%')}; {text}")
        v = j.graded(gap, [NEGLIGIBLE, C1_FAR], [FAILS, PARTLY, HOLDS])
        out.append(capped(v) if beyond is None else step_down(v, j.above(beyond, NEGLIGIBLE)))
        key = key or (f"{h} gap", gap, ".1%")
    return combine(out), "; ".join(notes), key


def c3(r, j):
    """The U's minimum near L/2 *because* most patterns are there (the paper's reading): the matched
    control (oracle(k) - oracle(L-k), equal candidate counts) must not show compute driving the curve."""
    o = r["03_oracle"]
    L = o["num_layers"]
    out, notes, key = [], [], None
    for h, d in o["holdouts"].items():
        v, lo, hi = read_ci(d["ci"], "best_k")[:3]
        if not all(x == x for x in (v, lo, hi)):  # NaN: not measured on some seed
            out.append(INCONCLUSIVE)
            notes.append(f"{h}: lowest oracle perplexity not measured")
            continue
        zones = {HOLDS if 0 < k < L and abs(k - L / 2) <= L * C3_BAND + 1e-9 else PARTLY if 0 < k < L else FAILS
                 for k in range(int(lo), int(hi) + 1)}
        zone = zones.pop() if len(zones) == 1 else INCONCLUSIVE
        note = f"{h}: lowest oracle perplexity at k={int(v)} of {L} (range {int(lo)}-{int(hi)})"
        matched = {k: read_ci(d["ci"], f"matched_k{k}") for k in range(1, (L + 1) // 2) if f"matched_k{k}" in d["ci"]}
        if not matched:
            out.append(capped(zone))
            notes.append(f"{note}; {NOT_MEASURED}")
        else:
            compute = any_true([j.above(m, NEGLIGIBLE) for m in matched.values()])
            less = sum(m.value < 0 for m in matched.values())
            notes.append(f"{note}; at equal candidate counts the budget with less compute wins at {less} of "
                         f"{len(matched)} pairs (oracle k - oracle L-k: "
                         f"{', '.join(f'k={k} ' + ci_text(m, '+.3f') for k, m in matched.items())})")
            out.append(zone if zone != HOLDS else decide(lambda c: PARTLY if c else HOLDS, compute))
        key = key or (f"{h} k*", Ci(v, lo, hi), ".0f")
    return combine(out), "; ".join(notes), key


def c4(r, j):
    """One big layer beats all-big by more than the placebo with as many candidates does (k=1; k=2: partly)."""
    o = r["03_oracle"]
    out, notes, key = [], [], None
    for h, d in o["holdouts"].items():
        g1, g2 = read_ci(d["ci"], "c4_gap_k1"), read_ci(d["ci"], "c4_gap_k2")
        (b1, t1), (b2, t2) = survival(d["ci"], "1"), survival(d["ci"], "2")
        notes.append(f"{h}: oracle k=1 {d['oracle']['1']:.2f} vs all-big {d['all_big']:.2f}, gap {ci_text(g1, '.1%')}; "
                     f"k=2 gap {ci_text(g2, '.1%')}; {t1}; {t2}")
        a1 = j.above(g1, NEGLIGIBLE)
        a2 = j.above(g2, NEGLIGIBLE) if g2[0] == g2[0] else False  # NaN: no k=2 in the run
        s1 = j.above(b1, NEGLIGIBLE) if b1 is not None else None
        s2 = j.above(b2, NEGLIGIBLE) if b2 is not None else None

        def rule(a1, a2, s1, s2):
            if a1:
                return HOLDS if s1 else PARTLY
            return PARTLY if a2 and s2 else FAILS

        v = decide(rule, a1, a2, s1, s2)
        out.append(capped(v) if b1 is None or b2 is None else v)
        key = key or (f"{h} gap k=1", g1, ".1%")
    return combine(out), "; ".join(notes), key


def c5(r, j):
    """Falling and rising schedules lose against constant AND against the shuffled control (same
    budgets at random positions), each by more than the negligible 1%."""
    out, notes, key = [], [], None
    for h, d in r["04_schedules"]["holdouts"].items():
        ci = d["ci"]
        fall, rise = read_ci(ci, "falling_over_constant"), read_ci(ci, "rising_over_constant")
        ctrl = read_ci(ci, "shuffled_over_constant")
        note = (f"{h}: constant {d['constant']:.2f}; falling {ci_text(fall, '+.1%')}, rising {ci_text(rise, '+.1%')}, "
                f"shuffled control {ci_text(ctrl, '+.1%')} over constant")
        if "falling_over_shuffled" not in ci or "rising_over_shuffled" not in ci:
            out.append(capped(decide(lambda a, b: HOLDS if a and b else PARTLY if a or b else FAILS,
                                     j.above(fall, NEGLIGIBLE), j.above(rise, NEGLIGIBLE))))
            notes.append(f"{note}; {NOT_MEASURED}")
        else:
            fs, rs = read_ci(ci, "falling_over_shuffled"), read_ci(ci, "rising_over_shuffled")
            notes.append(f"{note}; over the shuffled control: falling {ci_text(fs, '+.1%')}, rising "
                         f"{ci_text(rs, '+.1%')} (the part position explains)")
            a = all_true([j.above(fall, NEGLIGIBLE), j.above(fs, NEGLIGIBLE)])
            b = all_true([j.above(rise, NEGLIGIBLE), j.above(rs, NEGLIGIBLE)])
            out.append(decide(lambda a, b: HOLDS if a and b else PARTLY if a or b else FAILS, a, b))
        key = key or (f"{h} falling over constant", fall, "+.1%")
    return combine(out), "; ".join(notes), key


def c9_not_loss(d6: dict, j) -> tuple:
    """(not loss, stable, notes, key): |Spearman(loss, difficulty)| below C9_RHO on every holdout, and the
    difficulty measure's split-half rank correlation above C9_RELIABLE on every holdout (True / False /
    None: unknown / "missing": not measured)."""
    notes, rho_ok, stable, key = [], [], [], None
    for h, d in d6["holdouts"].items():
        rho = read_ci(d, "spearman_ci")
        note = f"{h}: Spearman(loss, difficulty) {ci_text(rho)}"
        rho_ok.append(all_true([j.below(rho, C9_RHO), j.above(rho, -C9_RHO)]))
        if "split_half_ci" in d:
            half = read_ci(d, "split_half_ci")
            note += f", split-half reliability of difficulty {ci_text(half)}"
            stable.append(j.above(half, C9_RELIABLE))
        else:
            stable.append("missing")
        notes.append(note)
        key = key or (f"{h} rho", rho, ".2f")
    return all_true(rho_ok), "missing" if "missing" in stable else all_true(stable), notes, key


def c9(r, j):
    d6 = r["06_difficulty"]
    not_loss, stable, notes, key = c9_not_loss(d6, j)
    syn = d6.get("synthetic", {})
    gain, learned = syn.get("gain_ci"), syn.get("small_minus_big_ci", {})
    learned = read_ci(learned, "compute") if "compute" in learned else None
    if gain is None:
        notes.append("no synthetic ground-truth check")
        mechanism = "missing"
    elif learned is None or above(learned, NEGLIGIBLE) is not True:  # a precondition: plain 95% level
        shown = "not measured" if learned is None else ci_text(learned, "+.3f")
        notes.append(f"synthetic check not testable: the big path does not predict compute tokens better than "
                     f"the small path (all-small - all-big loss {shown})")
        mechanism = "missing"
    else:
        ce, cn = read_ci(gain, "compute_minus_easy"), read_ci(gain, "compute_minus_noise")
        notes.append(f"synthetic gain: compute - easy {ci_text(ce, '+.3f')}, compute - noise {ci_text(cn, '+.3f')}")
        mechanism = all_true([j.above(ce, NEGLIGIBLE), j.above(cn, NEGLIGIBLE)])
    if mechanism is False:
        notes.insert(0, "mechanism check failed: compute tokens do not gain more than easy and noise tokens")
        return FAILS, "; ".join(notes), key
    if stable is False:
        notes.insert(0, f"not testable: difficulty is not a stable measure (split-half reliability not above "
                        f"{C9_RELIABLE}; a noise measure would pass |rho| < {C9_RHO}); testable with a measure whose "
                        f"split-half rank correlation exceeds {C9_RELIABLE} (more patterns per half, more windows)")
        return UNTESTABLE, "; ".join(notes), key
    m = True if mechanism == "missing" else mechanism
    v = decide(lambda nl, m: (PARTLY if mechanism == "missing" else HOLDS) if nl and m else FAILS, not_loss, m)
    if stable == "missing":
        notes.append(NOT_MEASURED)
    if stable is not True:
        v = capped(v)
    return v, "; ".join(notes), key
