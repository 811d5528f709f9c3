"""Replication over training seeds: the combined results tree, the seed-then-window interval's coverage, and
the pipeline's replicas of the model chapters."""

import json
import math

import numpy as np
import pytest

from duolib.book.pipeline import STEPS, replica_name, seed_steps, step_seed
from duolib.book.chapters import ONCE
from duolib.book.seeds import (combine_intervals, combine_seeds, load_seed_results, seed_dir, seed_draws,
                               seed_spread, with_shared)


def iv(v, lo, hi):
    return {"value": v, "low": lo, "high": hi}


def test_one_seed_keeps_its_interval_and_records_its_value():
    assert combine_intervals([iv(1.0, 0.5, 2.0)]) == {"value": 1.0, "low": 0.5, "high": 2.0, "seeds": [1.0]}


def test_combined_tree_keeps_shape_means_numbers_and_takes_text_from_seed_zero():
    a = {"03_oracle": {"num_layers": 12, "holdouts": {"en": {"all_big": 50.0, "ci": {"gap": iv(0.1, 0.05, 0.15)},
                                                           "note": "seed 0"}}}, "09_retrofit": {"x": 1.0}}
    b = {"03_oracle": {"num_layers": 12, "holdouts": {"en": {"all_big": 52.0, "ci": {"gap": iv(0.2, 0.15, 0.25)},
                                                           "note": "seed 1"}}}}
    c = combine_seeds([a, b])
    en = c["03_oracle"]["holdouts"]["en"]
    assert c["03_oracle"]["num_layers"] == 12 and isinstance(c["03_oracle"]["num_layers"], int)
    assert en["all_big"] == pytest.approx(51.0) and en["note"] == "seed 0"
    gap = en["ci"]["gap"]
    assert gap["seeds"] == [0.1, 0.2] and gap["value"] == pytest.approx(0.15)
    assert gap["low"] <= 0.1 and gap["high"] >= 0.2  # the seeds' spread lies inside the combined interval
    assert c["09_retrofit"] == {"x": 1.0}  # a step of seed 0 only
    assert combine_seeds([a, b]) == c  # deterministic


def test_seed_spread_and_draws_are_seeded():
    assert seed_spread({"value": 1, "low": 0, "high": 2, "seeds": [0.5, 1.5]}) == (0.5, 1.5)
    assert seed_spread(iv(1, 0, 2)) is None
    ivs = [iv(0.0, -1, 1), iv(1.0, 0, 2)]
    assert np.array_equal(seed_draws(ivs, 100, seed=3), seed_draws(ivs, 100, seed=3))
    assert not np.array_equal(seed_draws(ivs, 100, seed=3), seed_draws(ivs, 100, seed=4))


def test_student_t_quantiles():
    from duolib.stats import t_quantile

    for df, expected in [(1, 12.7062), (2, 4.3027), (4, 2.7764), (30, 2.0423)]:
        assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-3)


def _coverage(n_seeds, tau, sigma, reps=200, method=combine_intervals):
    rng = np.random.default_rng([n_seeds, int(tau * 10), int(sigma * 10)])
    hits = 0
    for r in range(reps):
        values = rng.normal(0.0, tau, n_seeds) + rng.normal(0.0, sigma, n_seeds)
        c = method([iv(x, x - 1.96 * sigma, x + 1.96 * sigma) for x in values], n_boot=500, seed=r)
        hits += c["low"] <= 0.0 <= c["high"]
    return hits / reps


def _bootstrap_only(intervals, n_boot, seed):
    draws = seed_draws(intervals, n_boot, seed)
    return {"low": float(np.quantile(draws, 0.025)), "high": float(np.quantile(draws, 0.975))}


@pytest.mark.parametrize("tau,sigma", [(0.0, 1.0), (1.0, 1.0), (1.0, 0.2)])
def test_seed_then_window_interval_covers_at_its_level(tau, sigma):
    """Per seed an effect ~ N(0, tau^2) and a window estimate ~ N(effect, sigma^2) with a known window interval:
    the combined interval of 3 seeds covers the true mean 0 at about its 95% level in every regime."""
    assert 0.9 <= _coverage(3, tau, sigma) <= 1.0


def test_a_bootstrap_over_three_seeds_alone_under_covers_when_seeds_differ_more_than_windows():
    """Why the combined interval also takes the t interval of the seeds: resampling 3 seeds misses a large
    between-seed spread."""
    assert _coverage(3, 1.0, 0.2, method=_bootstrap_only) < 0.88
    assert _coverage(3, 1.0, 0.2) > _coverage(3, 1.0, 0.2, method=_bootstrap_only)


def test_seed_folders_and_results(tmp_path):
    assert seed_dir(tmp_path, 0) == tmp_path and seed_dir(tmp_path, 2) == tmp_path / "seeds" / "seed2"
    with pytest.raises(ValueError, match="non-negative"):
        seed_dir(tmp_path, -1)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "03_oracle.json").write_text(json.dumps({"a": 1.0}))
    with pytest.raises(ValueError, match="training seed 1 has no results"):
        load_seed_results(tmp_path, 2)
    (seed_dir(tmp_path, 1) / "results").mkdir(parents=True)
    (seed_dir(tmp_path, 1) / "results" / "03_oracle.json").write_text(json.dumps({"a": 3.0}))
    trees = load_seed_results(tmp_path, 2)
    assert [t["03_oracle"]["a"] for t in trees] == [1.0, 3.0]
    (seed_dir(tmp_path, 1) / "results" / "03_oracle.json").write_text("{broken")
    with pytest.raises(ValueError, match="03_oracle.json"):
        load_seed_results(tmp_path, 2)


def test_replicas_follow_their_steps_and_the_scorecard_waits_for_every_seed():
    steps = seed_steps(3)
    names = [s.name for s in steps]
    by_name = {s.name: s for s in steps}
    replicated = [s.name for s in STEPS if s.replicate]
    assert "03_oracle" in replicated and "scorecard" not in replicated and "10_performance" not in replicated
    for name in replicated:
        for seed in (1, 2):
            r = by_name[replica_name(name, seed)]
            assert r.notebook == name and step_seed(r) == seed
            assert names.index(r.name) > names.index(name)
            assert all(n.endswith(f"@seed{seed}") for n in r.needs)  # its own seed's upstream
    card = by_name["scorecard"]
    assert {replica_name("07_routers", s) for s in (1, 2)} <= set(card.needs)
    assert [s.name for s in seed_steps(1)] == [s.name for s in STEPS]
    with pytest.raises(ValueError, match="positive number of training seeds"):
        seed_steps(0)
    assert math.isclose(combine_intervals([iv(1, 0, 2), iv(1, 0, 2)])["value"], 1.0)


def test_rules_commit_names_the_last_change_of_a_rule_file(tmp_path):
    import subprocess

    from duolib.book.registration import RULE_FILES, registration_text, rules_commit

    assert rules_commit(tmp_path) is None  # not a git checkout
    assert "unknown" in registration_text(None)
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_COMMITTER_DATE": "2026-01-02T03:04:05+00:00",
           "GIT_AUTHOR_DATE": "2026-01-02T03:04:05+00:00", "PATH": __import__("os").environ["PATH"]}
    git = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True, env=env)
    git("init", "-q")
    rules = tmp_path / RULE_FILES[0]
    rules.parent.mkdir(parents=True)
    rules.write_text("C1_FAR = 0.1\n")
    git("add", ".")
    git("commit", "-q", "-m", "register")
    (tmp_path / "other.txt").write_text("x")
    git("add", ".")
    env["GIT_COMMITTER_DATE"] = "2026-02-01T00:00:00+00:00"
    git("commit", "-q", "-m", "not a rule")
    info = rules_commit(tmp_path)
    assert info["date"].startswith("2026-01-02") and info["clean"]
    assert "before this run began" in registration_text(info, "2026-01-03T00:00:00+00:00")
    assert "AFTER this run began" in registration_text(info, "2026-01-01T00:00:00+00:00")
    rules.write_text("C1_FAR = 0.2\n")
    assert not rules_commit(tmp_path)["clean"]
    assert "this copy changes them" in registration_text(rules_commit(tmp_path))


def test_only_chapters_that_run_once_are_shared_across_the_seed_columns():
    assert ONCE == {"08_dense", "09_retrofit", "10_performance", "scorecard"}
    seed0 = {"03_oracle": {"gain": 1.0}, "08_dense": {"ratio": 2.0}}
    seed1 = {"03_oracle": {"gain": 3.0}}
    seed2 = {"08_dense": {"ratio": 5.0}}  # its own 08 (not how the book runs it) is kept; its 03 did not run
    cols = with_shared([seed0, seed1, seed2], ONCE)
    assert cols[0] == seed0
    assert cols[1] == {"03_oracle": {"gain": 3.0}, "08_dense": {"ratio": 2.0}}
    assert cols[2] == {"08_dense": {"ratio": 5.0}}  # a missing replicated chapter stays missing
    assert with_shared([], ONCE) == []


def test_lists_combine_element_by_element_when_every_seed_has_the_same_length():
    """C7's per-layer skip rates (a list of intervals) are judged on every seed, not seed 0's alone."""
    a = {"05": {"skip_fraction_ci": [iv(0.5, 0.4, 0.6), iv(0.2, 0.1, 0.3)], "skip_fraction": [0.5, 0.2],
                "names": ["x", "y"], "ragged": [1.0, 2.0]}}
    b = {"05": {"skip_fraction_ci": [iv(0.7, 0.6, 0.8), iv(0.4, 0.3, 0.5)], "skip_fraction": [0.7, 0.4],
                "names": ["x", "y"], "ragged": [3.0]}}
    c = combine_seeds([a, b])["05"]
    assert [d["seeds"] for d in c["skip_fraction_ci"]] == [[0.5, 0.7], [0.2, 0.4]]
    assert c["skip_fraction_ci"][0]["value"] == pytest.approx(0.6)
    assert c["skip_fraction"] == pytest.approx([0.6, 0.3]) and c["names"] == ["x", "y"]
    assert c["ragged"] == [1.0, 2.0]  # lengths differ: seed 0's list, as before
