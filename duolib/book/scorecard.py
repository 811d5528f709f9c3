"""The reproduction scorecard: a computed verdict for each finding C1-C10 of the paper.

Each experiment notebook writes its headline numbers with ``duolib.book.pipeline.save_results`` to
``run_dir/results/<step>.json``; :func:`scorecard` reads them and applies the rules below.
Verdicts: "holds", "partly", "does not hold", or "not measured" (the step's results are missing).
The thresholds are ours (the paper gives figures, not numbers) and are stated with each rule.

Result files and keys (budgets ``k`` and p values are JSON strings; typed in :mod:`duolib.book.results`):

- ``03_oracle``: ``num_layers``; ``holdouts.<h>.{all_big, all_small}``; ``holdouts.<h>.{oracle, fixed,
  best100, best100_per_token}.<k>`` (perplexities at exactly k big layers).
- ``04_schedules``: ``holdouts.<h>.{falling, rising, constant}`` (perplexities).
- ``05_oracle_routes``: ``holdouts.<h>.big_centre.<k>`` (mean relative depth 0..1 of the big layers the
  oracle picks at k; 0.5 = even); ``holdouts.<h>.skip_fraction`` (per layer, {big, skip} study).
- ``06_difficulty``: ``holdouts.<h>.{spearman_loss_difficulty, high_loss_low_gain_fraction}``;
  optional ``synthetic.mean_difficulty.{easy, compute, noise}``.
- ``07_routers``: ``holdouts.<h>.router.<k>`` (perplexity at average budget k); ``late_big_fraction.<k>``
  (share of big decisions in the second half of the layers); ``early_position_big_ratio`` (big rate of
  the first tenth of positions over the rest); ``skip_late_fraction`` (share of skips in the second half).
- ``08_dense``: ``duo.<p>`` and ``dense.<p>`` (perplexities at p(big)); ``joint_small``, ``freeze_small``
  (all-small perplexity after joint training vs after freeze-big-then-train-small).
"""

from __future__ import annotations

import math

HOLDS, PARTLY, FAILS, MISSING = "holds", "partly", "does not hold", "not measured"

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


def _combine(verdicts: list[str]) -> str:
    """All holdouts hold -> holds; none holds or is partly -> does not hold; else partly."""
    verdicts = [v for v in verdicts if v != MISSING]
    if not verdicts:
        return MISSING
    if all(v == HOLDS for v in verdicts):
        return HOLDS
    if all(v == FAILS for v in verdicts):
        return FAILS
    return PARTLY


def _mid(n_layers: int) -> str:
    return str(n_layers // 2)


def c1(r):  # "far better": oracle at k = L/2 at least 10% lower perplexity than best-of-100
    o = r["03_oracle"]
    k = _mid(o["num_layers"])
    out, notes = [], []
    for h, d in o["holdouts"].items():
        gap = 1 - d["oracle"][k] / d["best100"][k]
        notes.append(f"{h}: oracle {d['oracle'][k]:.2f} vs best-of-100 {d['best100'][k]:.2f} at k={k} ({gap:.0%} lower)")
        out.append(HOLDS if gap >= 0.10 else PARTLY if gap > 0 else FAILS)
    return _combine(out), "; ".join(notes)


def c2(r):  # router closer (in log perplexity) to fixed / best-of-100 than to the oracle, by 2x
    o, rt = r["03_oracle"], r["07_routers"]
    out, notes = [], []
    for h, d in rt["holdouts"].items():
        ref = o["holdouts"][h]
        for k, ppl in d["router"].items():
            if k not in ref["oracle"]:
                continue
            to_oracle = abs(math.log(ppl / ref["oracle"][k]))
            to_baseline = min(abs(math.log(ppl / ref["fixed"][k])), abs(math.log(ppl / ref["best100"][k])))
            notes.append(f"{h} k={k}: router {ppl:.2f}, fixed {ref['fixed'][k]:.2f}, oracle {ref['oracle'][k]:.2f}")
            out.append(HOLDS if 2 * to_baseline < to_oracle else PARTLY if to_baseline < to_oracle else FAILS)
    return _combine(out), "; ".join(notes)


def c3(r):  # interior minimum within L/6 of L/2 -> holds; interior elsewhere -> partly; at an end -> fails
    o = r["03_oracle"]
    L = o["num_layers"]
    out, notes = [], []
    for h, d in o["holdouts"].items():
        by_k = {int(k): v for k, v in d["oracle"].items()}
        best = min(by_k, key=by_k.get)
        notes.append(f"{h}: lowest oracle perplexity at k={best} of {L}")
        interior = 0 < best < L
        out.append(HOLDS if interior and abs(best - L / 2) <= L / 6 else PARTLY if interior else FAILS)
    return _combine(out), "; ".join(notes)


def c4(r):  # oracle(k=1) below all-big -> holds; only oracle(k=2) -> partly
    o = r["03_oracle"]
    out, notes = [], []
    for h, d in o["holdouts"].items():
        notes.append(f"{h}: oracle k=1 {d['oracle']['1']:.2f} vs all-big {d['all_big']:.2f}")
        out.append(HOLDS if d["oracle"]["1"] < d["all_big"] else PARTLY if d["oracle"].get("2", math.inf) < d["all_big"]
                   else FAILS)
    return _combine(out), "; ".join(notes)


def c5(r):
    out, notes = [], []
    for h, d in r["04_schedules"]["holdouts"].items():
        wins = (d["constant"] < d["falling"]) + (d["constant"] < d["rising"])
        notes.append(f"{h}: constant {d['constant']:.2f}, falling {d['falling']:.2f}, rising {d['rising']:.2f}")
        out.append([FAILS, PARTLY, HOLDS][wins])
    return _combine(out), "; ".join(notes)


def c6(r):  # centre(L/3) > 0.5 > centre(2L/3) and ordered -> holds; ordered only -> partly
    L = r["03_oracle"]["num_layers"] if "03_oracle" in r else 12
    lo, mid, hi = str(round(L / 3)), _mid(L), str(round(2 * L / 3))
    out, notes = [], []
    for h, d in r["05_oracle_routes"]["holdouts"].items():
        c = d["big_centre"]
        notes.append(f"{h}: centre of big layers k={lo} {c[lo]:.2f}, k={mid} {c[mid]:.2f}, k={hi} {c[hi]:.2f}")
        ordered = c[lo] > c[mid] > c[hi]
        out.append(HOLDS if ordered and c[lo] > 0.5 > c[hi] else PARTLY if ordered or c[lo] > 0.5 > c[hi] else FAILS)
    return _combine(out), "; ".join(notes)


def c7(r):
    # polarised: some layer skipped >= 75% of the time, some <= 25%; early exit: skip rates rise with
    # depth and the later half of the layers holds >= 90% of the skips
    out, notes = [], []
    for h, d in r["05_oracle_routes"]["holdouts"].items():
        f = d["skip_fraction"]
        n = len(f)
        polarised = max(f) >= 0.75 and min(f) <= 0.25
        late_share = sum(f[n // 2:]) / max(sum(f), 1e-9)  # early exit: skips rise with depth, all late
        early_exit = late_share >= 0.9 and all(a <= b + 0.05 for a, b in zip(f, f[1:]))
        notes.append(f"{h}: skip rate per layer {' '.join(f'{x:.2f}' for x in f)}")
        out.append(HOLDS if polarised and not early_exit else PARTLY if polarised or not early_exit else FAILS)
    return _combine(out), "; ".join(notes)


def c8(r):
    d = r["07_routers"]
    late = list(d["late_big_fraction"].values())
    parts = [all(x > 0.5 for x in late), d["early_position_big_ratio"] > 1.0, d.get("skip_late_fraction", 0) > 0.5]
    notes = (f"share of big in later layers {', '.join(f'{x:.2f}' for x in late)}; early-position big ratio "
             f"{d['early_position_big_ratio']:.2f}; share of skips in later layers {d.get('skip_late_fraction', float('nan')):.2f}")
    return (HOLDS if all(parts) else PARTLY if any(parts) else FAILS), notes


def c9(r):  # |Spearman(loss, difficulty)| < 0.7 and >= 5% of top-quartile-loss tokens in the bottom gain quartile
    out, notes = [], []
    for h, d in r["06_difficulty"]["holdouts"].items():
        rho, frac = d["spearman_loss_difficulty"], d["high_loss_low_gain_fraction"]
        notes.append(f"{h}: Spearman(loss, difficulty) {rho:.2f}; high-loss tokens with low gain {frac:.0%}")
        out.append(HOLDS if abs(rho) < 0.7 and frac >= 0.05 else PARTLY if abs(rho) < 0.7 or frac >= 0.05 else FAILS)
    return _combine(out), "; ".join(notes)


def c10(r):
    d = r["08_dense"]
    ps = sorted(d["duo"], key=float)
    gap = {p: d["duo"][p] / d["dense"][p] - 1 for p in ps if p in d["dense"]}
    approaches = gap[ps[-1]] < gap[ps[0]]
    freeze_worse = d["freeze_small"] > d["joint_small"]
    notes = (f"Duo over dense: {gap[ps[0]]:+.1%} at p={ps[0]}, {gap[ps[-1]]:+.1%} at p={ps[-1]}; all-small perplexity "
             f"joint {d['joint_small']:.2f} vs freeze-then-train {d['freeze_small']:.2f}")
    return (HOLDS if approaches and freeze_worse else PARTLY if approaches or freeze_worse else FAILS), notes


RULES = {"C1": c1, "C2": c2, "C3": c3, "C4": c4, "C5": c5, "C6": c6, "C7": c7, "C8": c8, "C9": c9, "C10": c10}


def scorecard(results: dict[str, dict]):
    """A DataFrame: claim, finding, verdict, measured (the numbers behind the verdict)."""
    import pandas as pd

    rows = []
    for claim, rule in RULES.items():
        try:
            verdict, measured = rule(results)
        except KeyError as missing:
            verdict, measured = MISSING, f"no result {missing} in this run"
        rows.append(dict(claim=claim, finding=CLAIMS[claim], verdict=verdict, measured=measured))
    return pd.DataFrame(rows)
