"""duolib.evidence: interval estimates equal the reductions' own numbers; intervals are ordered and paired."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from duolib import BIG, DuoConfig, DuoForCausalLM
from duolib.book import analysis, evidence
from duolib.oracle.engine import loss_matrix
from duolib.oracle.registry import REDUCTIONS
from duolib.oracle.schedules import SHUFFLED, budget_schedule, shuffled_schedule


@pytest.fixture(scope="module")
def matrix():
    torch.manual_seed(0)
    model = DuoForCausalLM(DuoConfig.preset("tiny")).eval()
    ids = torch.randint(0, 512, (6, 12), generator=torch.Generator().manual_seed(1))
    return loss_matrix(model, ids)


def ordered(ci):
    return ci["low"] <= ci["value"] <= ci["high"]


def test_oracle_intervals_match_the_summary(matrix):
    ci = evidence.oracle_intervals(matrix, n_random=3, seed=0, n_boot=200)
    summ = matrix.summary(n_random=3, seed=0)
    for k, d in summ["per_k"].items():
        assert ci["perplexity"]["oracle"][k]["value"] == pytest.approx(d["oracle"])
        assert ci["perplexity"]["fixed"][k]["value"] == pytest.approx(d["fixed"])
        assert ci["perplexity"]["best_of_random"][k]["value"] == pytest.approx(d["best_of_3_pattern"])
        assert ci["perplexity"]["best_of_random_per_token"][k]["value"] == pytest.approx(d["best_of_3_token"])
        assert all(ordered(ci["perplexity"][m][k]) for m in REDUCTIONS)
    assert ci["all_big"]["value"] == pytest.approx(summ["uniform"]["all_big"])
    mid = "2"
    assert ci["c1_gap"]["value"] == pytest.approx(1 - summ["per_k"][mid]["oracle"] / summ["per_k"][mid]["best_of_3_pattern"])
    assert ci["c4_gap_k1"]["value"] == pytest.approx(1 - summ["per_k"]["1"]["oracle"] / summ["uniform"]["all_big"])
    best = min(summ["per_k"], key=lambda k: summ["per_k"][k]["oracle"])
    assert ci["best_k"]["value"] == int(best) and ci["best_k"]["low"] <= int(best) <= ci["best_k"]["high"]
    assert ci["c1_gap"]["low"] >= 0  # the oracle can never lose to a subset of its own patterns


def test_paired_gaps_at_every_budget(matrix):
    ci = evidence.oracle_intervals(matrix, n_random=3, seed=0, n_boot=200)
    summ = matrix.summary(n_random=3, seed=0)
    assert set(ci["paired_gap"]) == set(evidence.PAIRED_REFERENCES)
    for k, d in summ["per_k"].items():
        best, fixed = ci["paired_gap"]["best_of_random"][k], ci["paired_gap"]["fixed"][k]
        assert best["value"] == pytest.approx(1 - d["oracle"] / d["best_of_3_pattern"])
        assert fixed["value"] == pytest.approx(1 - d["oracle"] / d["fixed"])
        assert ordered(best) and ordered(fixed)
        assert best["low"] >= -1e-12 and fixed["low"] >= -1e-12  # the oracle never loses to one of its patterns
    assert ci["paired_gap"]["best_of_random"]["2"] == ci["c1_gap"]  # the same draws as the C1 gap


def test_schedule_intervals_and_the_shuffled_control(matrix):
    ci = evidence.schedule_intervals(matrix, n_boot=200)
    reds = matrix.schedules()
    for kind, red in reds.items():
        assert ci[kind]["value"] == pytest.approx(red.perplexity) and ordered(ci[kind])
    assert ci["falling_over_constant"]["value"] == pytest.approx(reds["falling"].perplexity / reds["constant"].perplexity - 1)
    falling, control = budget_schedule("falling", 4, 12), shuffled_schedule(4, 12)
    assert sorted(falling.tolist()) == sorted(control.tolist()) and not torch.equal(falling, control)
    assert SHUFFLED in reds


def test_centre_layer_share_and_label_intervals(matrix):
    centre = evidence.centre_intervals(matrix, [1, 2, 3], n_boot=200)
    for k in (1, 2, 3):
        assert centre[str(k)]["value"] == pytest.approx(analysis.big_centre(matrix, k)) and ordered(centre[str(k)])
    shares = evidence.layer_share_intervals(matrix, 2, n_boot=200)
    assert [s["value"] for s in shares] == pytest.approx(analysis.layer_rate(matrix, 2).tolist())
    rng = np.random.default_rng(0)
    label = rng.choice(["easy", "compute", "noise"], 600)
    window = np.repeat(np.arange(30), 20)
    gain = np.where(label == "compute", 1.0, 0.2) + rng.normal(0, 0.1, 600)
    ci = evidence.label_gain_intervals(gain, label, window, n_boot=300)
    assert ci["compute_minus_easy"]["low"] > 0.6 and ci["compute_minus_noise"]["low"] > 0.6
    assert ci["compute"]["value"] == pytest.approx(gain[label == "compute"].mean())


def test_paired_loss_intervals():
    a = torch.rand(20, 7)
    b = a + 0.05
    ci = evidence.paired_loss_intervals({"router": a, "random": b}, n_boot=200)
    assert ci["router_minus_random"]["value"] == pytest.approx(-0.05, abs=1e-6)
    assert ci["router_minus_random"]["high"] < 0 and ci["router"]["value"] == pytest.approx(math.exp(a.double().mean()))


def test_router_intervals_against_the_matrix(matrix):
    k = 2
    fixed = matrix.fixed(k).token_losses.reshape(6, 11)
    oracle = matrix.oracle(k).token_losses.reshape(6, 11)
    at_fixed = evidence.router_intervals(matrix, fixed, fixed + 0.5, k, n_boot=200)
    assert at_fixed["position"]["value"] == pytest.approx(1.0) and at_fixed["router_minus_random"]["high"] < 0
    assert at_fixed["fixed"]["value"] == pytest.approx(matrix.fixed(k).perplexity)
    at_oracle = evidence.router_intervals(matrix, oracle, oracle, k, n_boot=200)
    assert at_oracle["position"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert at_oracle["router_minus_random"]["value"] == 0
    with pytest.raises(ValueError, match="windows"):
        evidence.router_intervals(matrix, oracle[:3], oracle[:3], k)


def test_route_share_and_spearman_intervals():
    routes = torch.zeros(10, 20, 4, dtype=torch.int8)
    routes[:, :, 2:] = BIG  # big only in the later half
    routes[:, :2, 0] = BIG  # early positions take one more big layer
    ci = evidence.route_share_intervals(routes, n_boot=100)
    from duolib.book import experiments as ex

    assert ci["late"]["value"] == pytest.approx(ex.late_fraction(routes))
    assert ci["early_ratio"]["value"] == pytest.approx(ex.early_position_ratio(routes))
    rng = np.random.default_rng(0)
    x = rng.normal(size=300)
    y = x + rng.normal(0, 0.1, 300)
    rho = evidence.spearman_interval(x, y, np.repeat(np.arange(30), 10), n_boot=100)
    assert rho["value"] == pytest.approx(analysis.spearman(x, y)) and rho["low"] > 0.9 and ordered(rho)


def test_plots_draw_interval_bands_and_error_bars():
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd
    from matplotlib.collections import LineCollection, PolyCollection

    from duolib.book import plots, route_plots

    curves = pd.DataFrame({"k": [1, 2, 3] * 2, "perplexity": [5, 4, 4.5, 6, 5, 5.5], "method": ["a"] * 3 + ["b"] * 3})
    curves["low"], curves["high"] = curves["perplexity"] - 0.2, curves["perplexity"] + 0.2
    ax = route_plots.budget_curves(curves).axes[0]
    assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 2  # one band per method
    rates = pd.DataFrame({"layer": [1, 2, 1, 2], "rate": [0.2, 0.8, 0.3, 0.7], "holdout": ["e", "e", "p", "p"]})
    rates["low"], rates["high"] = rates["rate"] - 0.05, rates["rate"] + 0.05
    ax = route_plots.layer_rates(rates, hue="holdout").axes[0]
    assert sum(isinstance(c, LineCollection) for c in ax.collections) == 4  # one error bar per bar
    frontier = pd.DataFrame({"holdout": "e", "method": ["oracle", "oracle", "router"], "source": ["reference", "reference", "router"],
                             "mean_big_layers": [1, 2, 1.5], "ppl": [5.0, 4.0, 4.8], "low": [4.8, 3.9, 4.6],
                             "high": [5.2, 4.1, 5.0]})
    ax = route_plots.routers_vs_references(frontier).axes[0]
    assert any(isinstance(c, PolyCollection) for c in ax.collections)
    assert any(isinstance(c, LineCollection) for c in ax.collections)
    sched = pd.DataFrame({"holdout": "e", "schedule": ["constant", "falling"], "perplexity": [4.0, 4.2],
                          "low": [3.9, 4.1], "high": [4.1, 4.3]})
    assert len(plots.interval_points(sched, "schedule").axes) == 1


def test_window_losses_match_evaluate_and_router_evidence_runs(matrix):
    from duolib import FixedRoutes
    from duolib.train.evaluate import evaluate_route_modes as evaluate

    torch.manual_seed(0)
    model = DuoForCausalLM(DuoConfig.preset("tiny")).eval()
    seqs = torch.randint(0, 512, (5, 12), generator=torch.Generator().manual_seed(2))
    for p in (0.0, 0.5, 1.0):
        rec = evaluate(model, {"h": seqs}, [f"random:{p:g}"], seed=3)[0]
        assert float(evidence.window_losses(model, seqs, p, seed=3).double().mean()) == pytest.approx(rec["loss"], rel=1e-5)
    ids = torch.randint(0, 512, (6, 12), generator=torch.Generator().manual_seed(1))  # the fixture's windows
    out = evidence.router_evidence(model, {2: FixedRoutes([BIG, BIG, 1, 1])}, {"h": ids}, {"h": matrix}, n_boot=100)
    ci = out["h"]["2"]
    assert ci["p_big"] == pytest.approx(0.5) and ordered(ci["position"]) and ordered(ci["router_minus_random"])


def test_tail_improvement_reads_the_plateau_of_a_constructed_run():
    """A run whose all-big loss falls 5.0 -> 4.0 by step 80 and 4.0 -> 3.96 over the last 20 steps improved
    1% in its tail (converged under the 2% rule); one still falling 4.5 -> 4.0 did not; too few evaluations
    are an error, not a guess."""
    from duolib.book.evidence import tail_improvement
    from duolib.book.scorecard import converged

    def run(loss_at_80, loss_at_100, steps=(0, 40, 80, 100)):
        losses = dict(zip((0, 40, 80, 100), (5.0, 4.5, loss_at_80, loss_at_100)))
        rows = [dict(kind="eval", step=s, holdout=h, routes=r, loss=losses[s] + (0.5 if r == "small" else 0))
                for s in steps for h in ("english", "python") for r in ("big", "small")]
        return pd.DataFrame(rows + [dict(kind="train", step=100, loss=9.0)])

    flat = tail_improvement(run(4.0, 3.96), 0.2)
    assert flat["english"]["from_step"] == 80 and flat["english"]["to_step"] == 100
    assert flat["english"]["improvement"] == pytest.approx(0.01) and converged(flat["python"]["improvement"])
    falling = tail_improvement(run(4.5, 4.0), 0.2)
    assert falling["english"]["improvement"] == pytest.approx(0.5 / 4.5) and not converged(falling["english"]["improvement"])
    assert tail_improvement(run(4.0, 3.96), 0.2, routes="small")["english"]["improvement"] == pytest.approx(0.04 / 4.5)
    with pytest.raises(ValueError, match="eval_every"):
        tail_improvement(run(4.0, 3.96, steps=(0, 40, 80)), 0.2)  # no evaluation at the last step
    with pytest.raises(ValueError, match="routes 'random'"):
        tail_improvement(run(4.0, 3.96), 0.2, routes="random")


def test_cluster_intervals_resample_whole_works(matrix):
    """One label per window is the window bootstrap itself; windows grouped by work move together, and a
    work effect then widens the interval."""
    W = int(matrix.seq.max()) + 1
    plain = evidence.schedule_intervals(matrix, n_boot=300)
    assert evidence.schedule_intervals(matrix, n_boot=300, clusters=list(range(W))) == plain
    rng = np.random.default_rng(0)
    works = np.repeat(np.arange(4), 10)
    values = np.repeat(rng.normal(0, 1.0, 4), 10)[:, None] + rng.normal(0, 0.1, (40, 8))  # [window, token]
    window = np.repeat(np.arange(40), 8)
    by_window = evidence.token_mean_intervals(values.ravel(), window, ["x"], n_boot=500)["x"]
    by_work = evidence.token_mean_intervals(values.ravel(), window, ["x"], n_boot=500, clusters=works)["x"]
    assert by_work["value"] == pytest.approx(by_window["value"])
    assert by_work["high"] - by_work["low"] > 2 * (by_window["high"] - by_window["low"])
