"""Typed stage configs (issue 26): every stage reads its profile section through one dataclass with
``from_profile`` and one ``validate``; the value checks are shared (duolib.checks); the command line has one
name per concept and keeps the old spellings for a release, with a warning."""

from __future__ import annotations

import pytest

from duolib import checks, cli
from duolib.book.config import BookConfig
from duolib.oracle.config import OracleConfig
from duolib.profiles import PROFILES
from duolib.router.config import RouterConfig
from duolib.train.config import TrainConfig

CONFIGS = (TrainConfig, OracleConfig, RouterConfig, BookConfig)


@pytest.mark.parametrize("profile", list(PROFILES))
@pytest.mark.parametrize("config", CONFIGS)
def test_every_profile_section_reads_into_its_config_unchanged(profile, config):
    cfg = config.from_profile(profile)
    section = PROFILES[profile][config.SECTION]
    for key, value in section.items():
        got = getattr(cfg, key)
        assert (tuple(got) if isinstance(got, (list, tuple)) else got) == \
            (tuple(value) if isinstance(value, (list, tuple)) else value), (config.__name__, key)


@pytest.mark.parametrize("config", CONFIGS)
def test_overrides_replace_the_profile_none_keeps_it_and_unknown_names_fail(config):
    field = {"train": "steps", "oracle": "n_random", "router": "steps", "book": "seeds"}[config.SECTION]
    assert getattr(config.from_profile("tiny", **{field: 7}), field) == 7
    assert getattr(config.from_profile("tiny", **{field: None}), field) == PROFILES["tiny"][config.SECTION][field]
    with pytest.raises(ValueError, match=f"unknown {config.__name__} field"):
        config.from_profile("tiny", nosuch=1)
    with pytest.raises(ValueError, match="unknown profile"):
        config.from_profile("huge")


@pytest.mark.parametrize("config, field, value, message", [
    (OracleConfig, "n_sequences", 0, "n_sequences=0 must be a whole number >= 1"),
    (OracleConfig, "difficulty_k", 9, r"difficulty_k=9 is outside 0\.\.4"),
    (OracleConfig, "semantics", "both", "semantics='both' is not one of shared, fixed-context"),
    (OracleConfig, "placebo_windows", 3, r"placebo_windows=3 must be a whole number in 1\.\.2"),
    (RouterConfig, "lr", float("nan"), "lr=nan must be a finite positive number"),
    (RouterConfig, "budgets", (2, 5), r"budget=5 is outside 0\.\.4"),
    (RouterConfig, "settings", ("nope",), "unknown skip setting 'nope'"),
    (RouterConfig, "steps", True, "steps=True must be a whole number"),
    (BookConfig, "skip_p", 1.0, "skip_p=1.0 must be below 1"),
    (BookConfig, "compare_model", {"vocab_size": 9}, "compare_model=.*vocab_size"),
    (BookConfig, "seeds", 0, "seeds=0 must be a whole number >= 1"),
    (TrainConfig, "steps", 0, "steps=0 must be a positive integer"),
])
def test_validation_names_the_field_the_value_and_what_is_allowed(config, field, value, message):
    with pytest.raises(ValueError, match=message):
        config.from_profile("tiny", **{field: value})


def test_a_smaller_slice_caps_the_profiles_window_counts_but_not_an_explicit_one():
    assert OracleConfig.from_profile("tiny", n_sequences=1).placebo_windows == 1
    with pytest.raises(ValueError, match="placebo_windows=2"):
        OracleConfig.from_profile("tiny", n_sequences=1, placebo_windows=2)
    resolved = OracleConfig.from_profile("default").resolved()
    assert resolved["difficulty_k"] == resolved["beam_k"] == 6 and resolved["num_layers"] == 12


def test_checks_refuse_booleans_and_non_integers_and_name_the_range():
    assert checks.whole("x", 3, 0, 5) == 3 and checks.budget("k", 4.0, 4) == 4
    for bad in (-1, 6, True, 2.0, "3"):
        with pytest.raises(ValueError, match=r"x=.* must be a whole number in 0\.\.5"):
            checks.whole("x", bad, 0, 5)
    for bad in (float("inf"), 0, -1.0, True, "1"):
        with pytest.raises(ValueError, match="must be a finite positive number"):
            checks.positive("lr", bad)
    assert checks.whole_list("w", [1, 2]) == (1, 2)
    with pytest.raises(ValueError, match="non-empty list"):
        checks.whole_list("w", [])


def test_one_name_per_concept_and_old_spellings_warn(capsys):
    parser = cli.build_parser()
    route = parser.parse_args(["route", "--out", "x", "--options", "skip,big", "--budget", "2"])
    assert route.choices == "skip,big" and route.budget == 2.0
    assert "--options is deprecated" in capsys.readouterr().err
    oracle = parser.parse_args(["oracle", "--out", "x", "--n-seqs", "3", "--budget", "2"])
    assert oracle.n_sequences == 3 and oracle.budget == 2.0
    assert "--n-seqs is deprecated" in capsys.readouterr().err
    assert parser.parse_args(["route", "--out", "x", "--choices", "skip,big"]).choices == "skip,big"
    assert capsys.readouterr().err == ""
    for command in (["train"], ["book"], ["data"], ["oracle", "--out", "o"], ["route", "--out", "o"]):
        assert hasattr(parser.parse_args(command), "out"), command  # --out is `out` in every command


@pytest.mark.parametrize("old, name, new", [
    ("duolib.train.run_folder", "unwrap_model", "duolib.train.model_files.unwrap_model"),
    ("duolib.book.pipeline", "notebook_setup", "duolib.book.kit.notebook_setup"),
    ("duolib.router.train", "calibrate_router", "duolib.router.calibration.calibrate_router"),
    ("duolib.folders", "verify_manifest", "duolib.manifests.verify_manifest"),
    ("duolib.book.analysis", "check_int", "duolib.checks.whole"),
    ("duolib.oracle.sampling", "check_budget", "duolib.checks.budget"),
])
def test_a_name_that_moved_says_where_it_went(old, name, new):
    import importlib

    module = importlib.import_module(old)
    with pytest.raises(ImportError, match=rf"{old}\.{name} has moved: use {new}"):
        exec(f"from {old} import {name}", {})
    with pytest.raises(AttributeError, match="has no attribute 'nosuch'"):
        getattr(module, "nosuch")
    target_module, target = new.rsplit(".", 1)
    assert hasattr(importlib.import_module(target_module), target)  # the new home holds it


def test_the_old_run_folder_module_names_its_successors():
    with pytest.raises(ImportError, match="duolib.folders.*duolib.manifests"):
        import duolib.runfolder  # noqa: F401
