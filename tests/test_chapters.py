"""book/_toc.yml, notebooks/ and the parameter rules agree with the one chapter list (duolib.book.chapters)."""

from pathlib import Path
from typing import is_typeddict

import pytest
import yaml

from duolib.book import params
from duolib.book.chapters import CHAPTERS, CHAPTER_PARTS, STEPS, chapter, check_results, toc_chapters
from duolib.book.pipeline import STEPS as PIPELINE_STEPS

ROOT = Path(__file__).resolve().parents[1]


def test_the_table_of_contents_lists_exactly_the_declared_chapters():
    toc = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text(encoding="utf-8"))
    listed = {part["caption"]: [c["file"] for c in part["chapters"]] for part in toc["parts"]}
    for caption, files in toc_chapters().items():
        assert listed.get(caption) == files, f"book/_toc.yml part {caption!r} must list {files}"
    others = [f for caption, files in listed.items() if caption not in CHAPTER_PARTS for f in files]
    assert not [f for f in others if f.startswith("experiments/")], "an experiments/ page outside the chapter parts"


def test_every_chapter_has_a_notebook_and_every_notebook_a_chapter():
    assert sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb")) == sorted(c.name for c in CHAPTERS)


def test_declarations_are_consistent():
    names = [c.name for c in CHAPTERS]
    assert len(set(names)) == len(names)
    for i, c in enumerate(CHAPTERS):
        assert set(c.needs) <= set(names[:i]), f"{c.name} needs a chapter declared after it"
        assert c.part in CHAPTER_PARTS
        assert c.results is None or is_typeddict(c.results), c.name
        assert c.params is None or callable(getattr(params, c.params, None)), f"{c.name}: params.{c.params} missing"
    assert PIPELINE_STEPS == STEPS and [s.name for s in STEPS] == names


def test_results_are_checked_against_the_declared_type():
    with pytest.raises(ValueError, match="results of 08_dense lack .*duo.*DenseResults"):
        check_results("08_dense", {"dense": {}})
    check_results("01_data", {"anything": 1})  # a chapter without a results type
    check_results("not_a_chapter", {})
    with pytest.raises(ValueError, match="no chapter 'nope'; chapters: 01_data"):
        chapter("nope")
