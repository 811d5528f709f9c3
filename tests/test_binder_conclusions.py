"""Binder reads like the book: "Run all" on committed chapters (DUO_PROFILE=tiny, nbclient) displays each
sentence of the chapters' prose with its glued numbers filled in; ``duo book`` drops those displays and hides
papermill's parameters cell and nested kernels' stderr noise."""

from __future__ import annotations

import json

import nbformat
import pytest
from myst_nb.core.variables import format_plain_text

from duolib.book.conclusions import GLUE_ROLE, OUTPUT_MARK, Conclusions
from duolib.book.jobs import PROFILE_ENV, tidy_for_book
from duolib.cli import main
from test_binder import committed_chapter, errors, fake_repository


def glued(nb) -> dict[str, str]:
    """name -> text/plain of every value the executed notebook glued (what the book's build reads)."""
    out = {}
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            meta = o.get("metadata", {}).get("scrapbook")
            if meta:
                out[meta["name"]] = o["data"][meta.get("mime_prefix", "") + "text/plain"]
    return out


def displayed(nb) -> str:
    return "\n".join(o["data"]["text/markdown"] for c in nb.cells for o in c.get("outputs", [])
                     if o.get("metadata", {}).get(OUTPUT_MARK))


@pytest.mark.slow
def test_run_all_in_jupyter_displays_every_conclusion_sentence(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    repo = fake_repository(tmp_path)
    assert main(["data", "--profile", "tiny", "--out", str(repo / "runs" / "tiny")]) == 0
    monkeypatch.setenv(PROFILE_ENV, "tiny")
    for step in ("01_data", "02_training"):
        nb = nbformat.reads(json.dumps(committed_chapter(step)), as_version=4)
        NotebookClient(nb, timeout=900, kernel_name="python3",
                       resources={"metadata": {"path": str(repo / "book" / "experiments")}}).execute()
        assert not errors(nb), step
        values, shown = glued(nb), displayed(nb)
        prose = [c.source for c in nb.cells if c.cell_type == "markdown" and GLUE_ROLE.search(c.source)]
        assert prose, step
        checked = 0
        for text in prose:
            for sentence in GLUE_ROLE.sub(lambda m: format_plain_text(values[m.group(1)], m.group(2) or ""),
                                          text).split("\n"):
                if GLUE_ROLE.search(sentence) is None and "{" not in sentence and sentence.strip():
                    assert sentence in shown, (step, sentence)
                    checked += 1
        assert checked >= len(prose), (step, checked)
        assert "{glue:text}" not in shown
        tidy_for_book(nb)  # what duo book writes: the page renders the prose itself
        assert not displayed(nb) and values == glued(nb)


def test_tidy_for_book_hides_the_parameters_cell_and_nested_kernel_noise():
    nb = nbformat.v4.new_notebook()
    injected = nbformat.v4.new_code_cell("profile = 'tiny'", metadata={"tags": ["injected-parameters"]})
    noisy = nbformat.v4.new_code_cell("x", outputs=[
        nbformat.v4.new_output("stream", name="stderr", text=(
            "/venv/lib/python3.11/site-packages/jupyter_client/connect.py:28: UserWarning: \n"
            "Kernel is running over TCP without encryption\n  warn(\n")),
        nbformat.v4.new_output("stream", name="stderr", text="a real warning\nKeyboardInterrupt caught in kernel\n"),
        nbformat.v4.new_output("display_data", data={"text/markdown": "a sentence"}, metadata={OUTPUT_MARK: True}),
        nbformat.v4.new_output("stream", name="stdout", text="kept\n")])
    nb.cells = [injected, noisy]
    tidy_for_book(nb)
    assert "remove-cell" in nb.cells[0].metadata["tags"]
    assert [o.get("text") for o in nb.cells[1].outputs] == ["a real warning\n", "kept\n"]


def test_conclusions_wait_for_values_glued_later(tmp_path):
    (tmp_path / "notebooks").mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("a()"), nbformat.v4.new_markdown_cell("A is {glue:text}`a`, B {glue:text}`b`."),
                nbformat.v4.new_code_cell("b()"), nbformat.v4.new_markdown_cell("See {cite:p}`paper` for {glue:text}`b`.")]
    nbformat.write(nb, tmp_path / "notebooks" / "x.ipynb")
    c = Conclusions(tmp_path)
    c.record({"application/papermill.record/text/plain": "'one'"},
             {"scrapbook": {"name": "a", "mime_prefix": "application/papermill.record/"}})
    assert c.ready("a()") == []  # b is not glued yet
    c.record({"text/plain": "2.5"}, {"scrapbook": {"name": "b", "mime_prefix": ""}})
    assert c.ready("b()") == ["A is one, B 2.5.", "See paper for 2.5."]
    assert c.ready("b()") == []  # each once
