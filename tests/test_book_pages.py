"""The book's pages as a reader meets them, checked on the sources (no execution, except one tiny
papermill run): code hidden by default, the tags surviving execution, every glued word defined,
every citation in the bibliography."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from duolib.book.jobs import PRESENTATION_TAGS, hide_code_by_default
from duolib.book.pipeline import STEPS, run_pipeline

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = [ROOT / "notebooks" / f"{s.name}.ipynb" for s in STEPS]


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _text(cell: dict) -> str:
    return "".join(cell["source"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_code_cell_says_how_it_shows(path):
    """The defaults of the parameters cell leave the page (papermill's injected cell shows the values
    used); every other code cell hides or removes its code, so prose and figures come first."""
    for cell in _cells(path):
        if cell["cell_type"] != "code":
            continue
        tags = cell["metadata"].get("tags", [])
        if "parameters" in tags:
            assert "remove-cell" in tags, path.stem
        else:
            assert set(tags) & {"hide-input", "remove-input"}, f"{path.stem}: untagged cell {_text(cell)[:60]!r}"


def test_untagged_code_gets_hide_input_and_set_tags_stay():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["injected-parameters"]}),
        nbformat.v4.new_code_cell("y = 2"),
        nbformat.v4.new_code_cell("z = 3", metadata={"tags": ["remove-input"]}),
        nbformat.v4.new_markdown_cell("text"),
    ])
    hide_code_by_default(nb)
    assert [c.metadata.get("tags") for c in nb.cells] == [["injected-parameters"], ["hide-input"], ["remove-input"],
                                                           None]
    assert "injected-parameters" in PRESENTATION_TAGS


def test_the_pipeline_keeps_the_source_tags_in_the_executed_notebook(tmp_path):
    """A stand-in 01_data notebook run through run_pipeline: its tags reach book/experiments, the
    injected parameters cell is removed from the page (the notebook's metadata records the run) and an
    untagged cell is hidden by default."""
    (tmp_path / "notebooks").mkdir()
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell('profile = "tiny"\nrun_dir = "."\nseed = 0',
                                  metadata={"tags": ["parameters", "remove-cell"]}),
        nbformat.v4.new_code_cell("print(profile)", metadata={"tags": ["remove-input"]}),
        nbformat.v4.new_code_cell("seed + 1"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "notebooks" / "01_data.ipynb")
    results = run_pipeline("tiny", root=tmp_path, run_dir=tmp_path / "runs", book_dir=tmp_path / "book",
                           only=["01_data"])
    assert [r.status for r in results] == ["ran"]
    out = nbformat.read(tmp_path / "book" / "experiments" / "01_data.ipynb", as_version=4)
    tags = [c.metadata.get("tags") for c in out.cells]
    assert tags == [["parameters", "remove-cell"], ["injected-parameters", "remove-cell"], ["remove-input"],
                    ["hide-input"]]
    assert "tiny" in out.cells[2].outputs[0]["text"]


GLUE_USE = re.compile(r"\{glue(?::\w+)?\}`([^`]+)`")
GLUE_DEF = re.compile(r"""glue\(\s*f?["']([^"']+)["']""")


GLUE_LOOP = re.compile(r"""["'](\w+)["']\s*[:,]""")  # keys of a `for name, value in ...: glue(name, ...)` loop


def _glued_keys(path: Path) -> set[str]:
    keys = set()
    for cell in _cells(path):
        if cell["cell_type"] == "code":
            keys |= set(GLUE_DEF.findall(_text(cell)))
            if "glue(name" in _text(cell):
                keys |= set(GLUE_LOOP.findall(_text(cell)))
    return keys


def _matches(key: str, defined: set[str]) -> bool:
    """``key`` is glued literally or by an f-string pattern such as ``{h}_rho``."""
    return any(re.fullmatch(re.sub(r"\\\{[^}]*\\\}", ".+", re.escape(d)), key) for d in defined)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_glued_word_in_the_prose_is_glued_by_the_notebook(path):
    defined = _glued_keys(path)
    for cell in _cells(path):
        if cell["cell_type"] == "markdown":
            for key in GLUE_USE.findall(_text(cell)):
                assert _matches(key, defined), f"{path.stem}: {{glue}}`{key}` is never glued"


def test_the_landing_page_pastes_what_the_notebooks_glue():
    intro = (ROOT / "book" / "intro.md").read_text(encoding="utf-8")
    refs = re.findall(r"experiments/(\w+)\.ipynb::(\w+)", intro)
    refs += [(doc, key) for key, doc in re.findall(r"```\{glue\} (\w+)\n:doc: experiments/(\w+)\.ipynb", intro)]
    assert ("03_oracle", "headline_figure") in refs and len(refs) >= 6
    for doc, key in refs:
        assert _matches(key, _glued_keys(ROOT / "notebooks" / f"{doc}.ipynb")), f"{doc}::{key}"


def _bib_keys() -> set[str]:
    return set(re.findall(r"@\w+\{([^,\s]+),", (ROOT / "book" / "references.bib").read_text(encoding="utf-8")))


def test_every_citation_is_in_the_bibliography_and_every_entry_is_cited():
    sources = [_text(c) for p in NOTEBOOKS for c in _cells(p) if c["cell_type"] == "markdown"]
    sources += [p.read_text(encoding="utf-8") for p in (ROOT / "book").glob("*.md")]
    cited = {k.strip() for s in sources for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", s)
             for k in group.split(",")}
    keys = _bib_keys()
    assert cited <= keys, f"cited but not in references.bib: {sorted(cited - keys)}"
    assert keys <= cited, f"in references.bib but never cited (the bibliography would omit them): {sorted(keys - cited)}"
    for key in ("shazeer2017moe", "fedus2022switch", "elhoushi2024layerskip", "schuster2022calm", "raposo2024mod",
                "ainslie2023colt5", "devvrit2023matformer", "touvron2023llama2"):
        assert key in keys
