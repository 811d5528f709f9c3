"""The book: the notebook pipeline, the chapters' kit, analysis, experiments, plots, the scorecard, benchmarks.

The subpackage's face (names load on first use, PEP 562, so ``import duolib.book`` stays light):
``BookConfig`` (the book's stage config), ``CHAPTERS`` / ``Chapter`` / ``chapter`` (every chapter declared
once: :mod:`duolib.book.chapters`), ``run_pipeline`` and ``step_times`` (the notebook runner behind
``duo book``), ``glued_values`` and ``compare_report`` (``duo book --compare``).  Notebooks import the
modules they use (``from duolib.book import kit, plots``); none of those names is a face name, so a
submodule import is never shadowed.
"""

from ..faces import lazy_face

# public name -> the module that defines it
_FACE = {
    **dict.fromkeys(["BookConfig"], "config"),
    **dict.fromkeys(["CHAPTERS", "Chapter", "chapter"], "chapters"),
    **dict.fromkeys(["run_pipeline", "step_times"], "pipeline"),
    **dict.fromkeys(["compare_report", "glued_values"], "compare"),
}

__all__ = sorted(_FACE)
__getattr__, __dir__ = lazy_face(globals(), _FACE)
