"""A chapter's conclusions, displayed where Jupyter shows them: the Markdown cells that state results.

The book's prose carries its numbers as ``{glue:text}`name``` roles, which only the HTML build fills in:
in Jupyter (Binder's "Run all", papermill, nbclient) they stay raw roles, so a reader would see tables and
figures but not the verdicts.  :func:`install` (called by ``notebook_setup``, so every chapter has it)
records each value the kernel glues and, after every code cell, displays as Markdown each prose cell that
follows that cell in the chapter's source notebook, its roles replaced by the glued values, formatted as the
book formats them (``myst_nb``'s own :func:`format_plain_text`).  The prose is the chapter's, not a copy:
the sentences shown are the book's sentences.

Those displays carry :data:`OUTPUT_MARK` in their metadata: ``duo book`` drops them from the executed
notebooks (:func:`drop_conclusion_outputs`), where the built page renders the same cells itself.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

#: Output metadata key of a displayed conclusion.
OUTPUT_MARK = "duolib_conclusion"
GLUE_ROLE = re.compile(r"\{glue:text\}`([^`:]+)(?::([^`]*))?`")
#: Any other MyST role: Jupyter's Markdown shows its text (a citation key, a reference target).
OTHER_ROLE = re.compile(r"\{[a-z:-]+\}`(?:[^`<]*<)?([^`>]*)>?`")
GLUE_PREFIX = "application/papermill.record/"

_installed: set[int] = set()


class Conclusions:
    """The glued values of one kernel and the prose cells of the source notebooks (``root/notebooks``)."""

    def __init__(self, root: Path):
        self.values: dict[str, str] = {}
        self.shown: set[tuple[str, int]] = set()
        self.code: dict[str, list[tuple[str, int]]] = {}  # a code cell's source -> (notebook, index) holding it
        self.prose: dict[str, list[tuple[int, str]]] = {}  # notebook -> (index, text) of its prose with glue
        self.code_cells: dict[str, list[int]] = {}  # notebook -> indices of its code cells
        for path in sorted((Path(root) / "notebooks").glob("*.ipynb")):
            cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
            for i, cell in enumerate(cells):
                text = "".join(cell["source"])
                if cell["cell_type"] == "code":
                    self.code.setdefault(text.strip(), []).append((path.stem, i))
                    self.code_cells.setdefault(path.stem, []).append(i)
                elif cell["cell_type"] == "markdown" and GLUE_ROLE.search(text):
                    self.prose.setdefault(path.stem, []).append((i, text))

    def record(self, data: dict, metadata: dict | None) -> None:
        """Keep the text of a ``myst_nb.glue`` display (its mime bundle and ``scrapbook`` metadata)."""
        glued = (metadata or {}).get("scrapbook")
        if isinstance(glued, dict) and glued.get("name"):
            prefix = glued.get("mime_prefix", "")
            text = data.get(prefix + "text/plain", data.get(GLUE_PREFIX + "text/plain"))
            if isinstance(text, str):
                self.values[glued["name"]] = text

    def ready(self, source: str) -> list[str]:
        """The prose cells up to the next code cell after code cell ``source`` (in its source notebook) whose
        glued values all exist, as Markdown, each once: a sentence whose value a later cell glues appears
        after that cell."""
        out = []
        for notebook, index in self.code.get(source.strip(), []):
            following = [i for i in self.code_cells[notebook] if i > index]
            end = following[0] if following else float("inf")
            for at, text in self.prose.get(notebook, []):
                names = [m.group(1) for m in GLUE_ROLE.finditer(text)]
                if at > end or (notebook, at) in self.shown or not all(n in self.values for n in names):
                    continue
                self.shown.add((notebook, at))
                out.append(self.fill(text))
        return out

    def fill(self, text: str) -> str:
        from myst_nb.core.variables import format_plain_text

        text = GLUE_ROLE.sub(lambda m: format_plain_text(self.values[m.group(1)], m.group(2) or ""), text)
        return OTHER_ROLE.sub(r"\1", text)


def install(root: Path) -> Conclusions | None:
    """Record glued values and display each chapter's conclusions after the cell that computes them, in
    the running IPython kernel (nothing outside one).  Idempotent per kernel."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    if shell is None or id(shell) in _installed:
        return None
    _installed.add(id(shell))
    conclusions = Conclusions(root)
    publisher = shell.display_pub
    publish = publisher.publish

    def recording_publish(data, metadata=None, *args, **kwargs):
        conclusions.record(data, metadata)
        return publish(data, metadata, *args, **kwargs)

    publisher.publish = recording_publish

    def after_cell(result) -> None:
        from IPython.display import Markdown, display

        if getattr(result, "success", True):
            for text in conclusions.ready(result.info.raw_cell):
                display(Markdown(text), metadata={OUTPUT_MARK: True})

    shell.events.register("post_run_cell", after_cell)
    return conclusions


def drop_conclusion_outputs(nb):
    """Remove the displayed conclusions from an executed notebook ``nb`` (the built page renders the prose
    cells themselves); returns ``nb``."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.get("outputs", []) if not o.get("metadata", {}).get(OUTPUT_MARK)]
    return nb
