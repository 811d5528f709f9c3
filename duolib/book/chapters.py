"""The book's chapters, declared in one place: the one list to extend when adding a chapter.

Each :class:`Chapter` names its notebook (``notebooks/<name>.ipynb``), the chapters whose artefacts it
reads, the part of the table of contents that lists it, the shape of its saved results (a TypedDict
of :mod:`duolib.book.results`, checked before they are written; the scorecard reads them), the resolver
of its papermill parameters in :mod:`duolib.book.params`, and how the pipeline schedules it.  From
:data:`CHAPTERS` come :data:`STEPS` (the pipeline's order), :func:`check_results` and
:func:`duolib.book.params.validate_params`; ``tests/test_chapters.py`` checks ``book/_toc.yml`` and
``notebooks/`` against it.  ``CONTRIBUTING.md`` has the checklist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from . import results as shapes
from .jobs import Step

SCORECARD_PART, EXPERIMENTS_PART = "Reproduction scorecard", "Experiments"
#: Captions of ``book/_toc.yml`` that list chapters, in the order the book shows them.
CHAPTER_PARTS = (SCORECARD_PART, EXPERIMENTS_PART)


@dataclass(frozen=True)
class Chapter:
    """One chapter (module docstring).  ``alone``, ``first``, ``replicate`` and ``replica_params`` are the
    pipeline's scheduling flags (:class:`duolib.book.jobs.Step`)."""

    name: str
    needs: tuple[str, ...] = ()
    part: str = EXPERIMENTS_PART
    results: type | None = None
    params: str | None = None
    alone: bool = False
    first: bool = False
    replicate: bool = False
    replica_params: Mapping = field(default_factory=dict, hash=False, compare=False)

    @property
    def step(self) -> Step:
        return Step(self.name, tuple(self.needs), alone=self.alone, first=self.first, replicate=self.replicate,
                    replica_params=dict(self.replica_params))


# In dependency order (the pipeline's order); notebooks read what earlier chapters left in run_dir.
CHAPTERS: tuple[Chapter, ...] = (
    Chapter("01_data", replicate=True),
    Chapter("02_training", needs=("01_data",), replicate=True),
    # trains beside 02_training (independent runs)
    Chapter("02b_skip_model", needs=("01_data",), results=shapes.SkipModelResults, replicate=True),
    # 03 reads the skip-trained model too (its beam frontier with skip, seed 0 only)
    Chapter("03_oracle", needs=("02_training", "02b_skip_model"), results=shapes.OracleResults, replicate=True,
            replica_params={"replica": True}),
    Chapter("04_schedules", needs=("03_oracle",), results=shapes.ScheduleResults, replicate=True),
    Chapter("05_oracle_routes", needs=("03_oracle", "02b_skip_model"), results=shapes.OracleRoutesResults,
            replicate=True),
    Chapter("06_difficulty", needs=("03_oracle",), results=shapes.DifficultyResults, replicate=True),
    # skip settings on both Stage-1 models; the longest step after 03: 04-06 run beside it
    Chapter("07_routers", needs=("03_oracle", "02b_skip_model"), results=shapes.RouterResults, params="routers",
            first=True, replicate=True),
    # trains its own, smaller models, once (not per training seed)
    Chapter("08_dense", needs=("01_data",), results=shapes.DenseResults, params="dense"),
    Chapter("09_retrofit", params="retrofit"),
    # its generation section times the Stage-1 model
    Chapter("10_performance", needs=("02_training",), params="performance", alone=True),
    Chapter("scorecard", needs=("03_oracle", "04_schedules", "05_oracle_routes", "06_difficulty", "07_routers",
                                "08_dense"), part=SCORECARD_PART),
)

#: The chapters that run once, not per training seed (their results count in every seed's column).
ONCE: frozenset[str] = frozenset(c.name for c in CHAPTERS if not c.replicate)

#: The pipeline's steps, one per chapter, in :data:`CHAPTERS` order.
STEPS: tuple[Step, ...] = tuple(c.step for c in CHAPTERS)


def chapter(name: str) -> Chapter:
    """The chapter called ``name``; ValueError listing the chapters otherwise."""
    for c in CHAPTERS:
        if c.name == name:
            return c
    raise ValueError(f"no chapter {name!r}; chapters: {', '.join(c.name for c in CHAPTERS)}")


def toc_chapters() -> dict[str, list[str]]:
    """``{caption: [file, ...]}`` as ``book/_toc.yml`` lists the chapters (files ``experiments/<name>``)."""
    return {part: [f"experiments/{c.name}" for c in CHAPTERS if c.part == part] for part in CHAPTER_PARTS}


def check_results(step: str, results: dict) -> None:
    """ValueError naming the missing keys if ``results`` does not have the shape of chapter ``step``'s results
    type (no check for a chapter without one, or for a name that is no chapter)."""
    kind = next((c.results for c in CHAPTERS if c.name == step), None)
    if kind is None:
        return
    missing = shapes.missing_keys(results, kind)
    if missing:
        raise ValueError(f"results of {step} lack {', '.join(missing)} (the shape is {kind.__name__} in "
                         f"duolib/book/results.py; the scorecard reads it)")
