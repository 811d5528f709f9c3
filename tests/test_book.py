"""The book builds offline with warnings as errors, exactly as ``duo book`` builds it."""

from __future__ import annotations

from pathlib import Path

import pytest

from duolib.cli import build_book

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def html(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("book")
    return build_book(ROOT, out, quiet=True)


@pytest.mark.book
def test_book_builds_with_intro_choices_and_bibliography(html):
    assert (html / "index.html").is_file()
    intro = (html / "intro.html").read_text(encoding="utf-8")
    assert "Duo-LLM" in intro
    choices = (html / "choices.html").read_text(encoding="utf-8")
    assert "Choices the paper left open" in choices
    assert "fixed-context" in choices
    bib = (html / "bibliography.html").read_text(encoding="utf-8")
    assert "Alizadeh-Vahid" in bib and "Farajtabar" in bib
    assert "2410.10846" in bib


@pytest.mark.book
def test_book_has_binder_and_repository_links(html):
    page = (html / "intro.html").read_text(encoding="utf-8")
    assert "github.com/duo-llm/duolib" in page
