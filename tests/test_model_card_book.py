"""Issue 25 (model card): a book run writes its verdicts and key numbers into each Stage-1 model's card
``final/README.md``, replacing an earlier book section, and never re-lists a damaged model as sound."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from duolib import cli
from duolib.book import card as book_card
from duolib.book.jobs import StepResult
from duolib.folders import LOCK_FILE
from duolib.manifests import verify_manifest
from duolib.train.model_card import BOOK_HEADING, ROUTES_HEADING, with_section
from duolib.train.run_folder import update_card

CARD = "# Duo model\n\nintro\n\n## Training\n\nsteps\n\n## Routes\n\ncodes\n\n## Loading\n\ncode\n"


def section(text: str) -> str:
    return f"{BOOK_HEADING}\n\n{text}\n"


def test_a_section_goes_before_the_routes_and_replaces_itself():
    once = with_section(CARD, section("first"))
    assert once.index(BOOK_HEADING) < once.index(ROUTES_HEADING) and once.index("steps") < once.index(BOOK_HEADING)
    twice = with_section(once, section("second"))
    assert twice.count(BOOK_HEADING) == 1 and "second" in twice and "first" not in twice
    assert twice.replace(section("second") + "\n", "") == CARD  # the rest of the card is as it was
    assert with_section(twice, section("second")) == twice
    assert with_section("# card\n", section("x")).endswith(section("x") + "\n")  # no routes section: at the end
    with pytest.raises(ValueError, match="heading"):
        with_section(CARD, "no heading\n")


def test_the_book_section_is_one_table_row_per_claim():
    card = pd.DataFrame([dict(claim="C1", finding="a | b", verdict="holds", key="gain: 2.1% [1.0%, 3.0%]"),
                         dict(claim="C2", finding="routers", verdict="not testable at this scale", key="")])
    text = book_card.book_section(card, "default", 3, 1)
    assert text.startswith(BOOK_HEADING + "\n")
    assert "| C1 | a \\| b | holds | gain: 2.1% [1.0%, 3.0%] |" in text
    assert "| C2 | routers | not testable at this scale | - |" in text
    assert "3 training seeds" in text and "this one is seed 1" in text
    assert "one training seed" in book_card.book_section(card, "tiny", 1, 0)


def copy_run(finished_run: Path, dst: Path) -> Path:
    shutil.copytree(finished_run, dst, ignore=shutil.ignore_patterns(LOCK_FILE))
    return dst


def test_update_card_rewrites_the_manifest_and_refuses_a_damaged_model(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    path = update_card(run, section("numbers"))
    assert path == run / "final" / "README.md" and section("numbers") in path.read_text()
    verify_manifest(run / "final", "test")  # the new card is listed: the folder still verifies
    weights = next((run / "final").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    before = path.read_text()
    with pytest.raises(ValueError, match=weights.name):
        update_card(run, section("other numbers"))
    assert path.read_text() == before


def test_duo_book_publishes_the_cards_once_the_scorecard_ran(monkeypatch, tmp_path, capsys):
    calls = []
    out = tmp_path / "runs"
    monkeypatch.setattr("duolib.book.pipeline.run_pipeline",
                        lambda *a, **k: [StepResult("scorecard", "cached", 0.0, tmp_path / "scorecard.ipynb")])
    monkeypatch.setattr(book_card, "publish", lambda run_dir, profile: calls.append((run_dir, profile)) or
                        [Path(run_dir) / "stage1" / "final" / "README.md"])
    assert cli.main(["book", "--profile", "tiny", "--out", str(out), "--skip-build"]) == 0
    assert calls == [(out, "tiny")] and "model card" in capsys.readouterr().out
    monkeypatch.setattr("duolib.book.pipeline.run_pipeline",
                        lambda *a, **k: [StepResult("03_oracle", "ran", 1.0, tmp_path / "03.ipynb")])
    assert cli.main(["book", "--profile", "tiny", "--out", str(out), "--skip-build"]) == 0
    assert len(calls) == 1  # a partial run (--only) leaves the cards alone
