"""The skip-trained Stage-1 model (notebook 02b): its routing split, its evaluation route family with
skip, its loader, and its place in the book's step graph."""

from pathlib import Path

import pytest
import torch

from duolib.book.kit import (HALF_SKIP_ROUTES, SKIP_STAGE1_DIR, book_train_config, skip_stage1_model,
                             skip_train_config)
from duolib.book.pipeline import STEPS, upstream
from duolib.profiles import PROFILES
from duolib.routing import BIG, SKIP, SMALL, training_routes
from duolib.train.config import parse_route_mode
from duolib.train.loop import train
from tiny_runs import tiny

ROOT = Path(__file__).resolve().parents[1]


def test_skip_config_splits_the_rest_evenly_and_changes_nothing_else(tmp_path):
    cfg = skip_train_config("tiny", tmp_path)
    assert (cfg.p_skip, cfg.p_big) == (0.2, 0.4)  # p_big is a share of all draws: p(small) = 1 - 0.4 - 0.2
    assert HALF_SKIP_ROUTES in cfg.eval_routes
    plain = book_train_config("tiny", tmp_path)
    assert cfg.replace(p_big=plain.p_big, p_skip=plain.p_skip, eval_routes=plain.eval_routes) == plain
    assert skip_train_config("tiny", tmp_path, p_skip=0.5).p_big == 0.25
    cfg.validate()
    codes = training_routes(cfg.seed, 0, range(64), 64, 8, cfg.p_big, cfg.p_skip).flatten()
    shares = {c: float((codes == c).double().mean()) for c in (BIG, SMALL, SKIP)}
    assert shares[SKIP] == pytest.approx(0.2, abs=0.01)
    assert shares[BIG] == pytest.approx(0.4, abs=0.01) and shares[SMALL] == pytest.approx(0.4, abs=0.01)


@pytest.mark.parametrize("p_skip", [0, 0.0, 1.0, -0.1, True, "0.2"])
def test_skip_config_refuses_a_p_skip_outside_0_1(tmp_path, p_skip):
    with pytest.raises(ValueError, match="p_skip="):
        skip_train_config("tiny", tmp_path, p_skip=p_skip)


def test_every_profile_states_its_skip_probability_and_the_choices_page_says_it():
    assert all(0 < PROFILES[name]["book"]["skip_p"] < 1 for name in PROFILES)
    p = PROFILES["default"]["book"]["skip_p"]
    text = (ROOT / "book" / "choices.md").read_text(encoding="utf-8")
    assert f"p(skip) = {p:g}" in text and f"p(big) = p(small) = {(1 - p) / 2:g}" in text


@pytest.mark.parametrize("mode, expected", [("random:0.5:0.5", (0.5, 0.5)), ("random:0.3", (0.3, 0.0)),
                                            ("random:0:1", (0.0, 1.0)), ("big", (1.0, 0.0))])
def test_route_modes_with_skip(mode, expected):
    assert parse_route_mode(mode) == expected


@pytest.mark.parametrize("mode", ["random:0.6:0.5", "random:0.5:-0.1", "random:0.5:0.2:0.1", "random:a:0.1", "skip"])
def test_bad_route_modes_are_refused(mode):
    with pytest.raises(ValueError, match="route mode"):
        parse_route_mode(mode)


def test_the_skip_model_trains_beside_stage1_and_the_skip_studies_wait_for_it():
    needs = {s.name: s.needs for s in STEPS}
    assert needs["02b_skip_model"] == ("01_data",)  # not after 02_training: the two train in parallel
    assert "02b_skip_model" not in upstream("02_training") and "02_training" not in upstream("02b_skip_model")
    assert "02b_skip_model" in needs["05_oracle_routes"] and "02b_skip_model" in upstream("scorecard")
    assert [s.name for s in STEPS].index("02b_skip_model") == [s.name for s in STEPS].index("02_training") + 1


def test_loader_reads_a_skip_trained_run_and_refuses_a_missing_or_skipless_one(cache_dir, tmp_path):
    with pytest.raises(ValueError, match=r"no finished skip-trained Stage-1 run .*02b_skip_model"):
        skip_stage1_model(tmp_path)
    short = dict(steps=2, eval_every=2, eval_sequences=2, warmup_steps=1)
    train(tiny(cache_dir, p_big=0.4, p_skip=0.2, eval_routes=("big", HALF_SKIP_ROUTES), **short),
          tmp_path / "good" / SKIP_STAGE1_DIR)
    model = skip_stage1_model(tmp_path / "good")
    assert not model.training and model.config.num_hidden_layers == PROFILES["tiny"]["model"]["num_hidden_layers"]
    with torch.no_grad():
        x = torch.randint(0, 100, (1, 8))
        assert torch.isfinite(model(x, labels=x, routes=[SKIP, BIG] * 2).loss)
    train(tiny(cache_dir, **short), tmp_path / "plain" / SKIP_STAGE1_DIR)
    with pytest.raises(ValueError, match="trained with p_skip = 0, not with skip"):
        skip_stage1_model(tmp_path / "plain")


def test_skip_study_of_one_model(tmp_path):
    from duolib import DuoConfig, DuoForCausalLM
    from duolib.book.analysis import cached_loss_matrix, skip_study

    torch.manual_seed(0)
    model = DuoForCausalLM(DuoConfig.preset("tiny")).eval()
    ids = {"a": torch.randint(0, 512, (3, 12)), "b": torch.randint(0, 512, (2, 12))}
    results, matrices = skip_study(model, ids, tmp_path, n_skip=2, seed=0)
    assert set(results) == set(matrices) == {"a", "b"}
    for h, r in results.items():
        assert sum(r["skip_fraction"]) == pytest.approx(2.0)  # every token skips exactly n_skip layers
        assert [c["value"] for c in r["skip_fraction_ci"]] == pytest.approx(r["skip_fraction"])
        assert r["oracle"] <= r["fixed"] <= r["early_exit"] + 1e-9
        assert r["fixed_pattern"].count("-") == 2
        plain = cached_loss_matrix(model, ids[h], tmp_path)  # the {small, big} matrix: same all-big pattern
        assert r["all_big"] == pytest.approx(plain.perplexity_of([BIG] * 4), rel=1e-6)
        assert r["early_exit"] == pytest.approx(matrices[h].perplexity_of([BIG, BIG, SKIP, SKIP]), rel=1e-12)
