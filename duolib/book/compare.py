"""Comparing two runs of the book value by value: the values its executed notebooks glued (``duo book --compare``)."""

from __future__ import annotations

import os
from pathlib import Path

#: Glued values that describe this machine, not the result (timings, the machine name):
#: ``notebook::key`` fnmatch patterns.
TIMING_GLUES = ("02_training::minutes", "02_training::machine", "08_dense::compare_minutes", "10_performance::*")


def glued_values(folder: str | os.PathLike) -> dict[str, str]:
    """Every value the executed notebooks in ``folder`` (a book folder with ``experiments/``, or the
    ``experiments`` folder itself) glued, as ``{"<notebook>::<key>": text}``: the HTML or Markdown form
    where there is one, else the plain text (figures are left out: their bytes depend on the renderer)."""
    import nbformat

    folder = Path(folder)
    folder = folder / "experiments" if (folder / "experiments").is_dir() else folder
    notebooks = sorted(folder.glob("*.ipynb"))
    if not notebooks:
        raise ValueError(f"no executed notebooks in {str(folder)!r}; give a book folder (holding experiments/) "
                         "or its experiments folder")
    values = {}
    for path in notebooks:
        for cell in nbformat.read(path, as_version=4).cells:
            for out in cell.get("outputs", []):
                book = out.get("metadata", {}).get("scrapbook", {})
                if "name" not in book:
                    continue
                cut = len(book.get("mime_prefix", ""))  # glue(..., display=False) prefixes the mime types
                data = {k[cut:]: v for k, v in out.get("data", {}).items()}
                name = book["name"]
                mime = next((m for m in ("text/html", "text/markdown", "text/plain") if m in data), None)
                if mime is not None:
                    values[f"{path.stem}::{name}"] = "".join(data[mime])
    return values


def compare_glued(a: dict[str, str], b: dict[str, str], ignore: tuple[str, ...] = TIMING_GLUES) -> list[dict]:
    """Differences between two runs' :func:`glued_values`: rows (key, this, other), where a missing value
    is None; keys matching an ``ignore`` pattern (fnmatch) are skipped."""
    from fnmatch import fnmatch

    rows = []
    for key in sorted(set(a) | set(b)):
        if any(fnmatch(key, pattern) for pattern in ignore):
            continue
        if a.get(key) != b.get(key):
            rows.append({"key": key, "this": a.get(key), "other": b.get(key)})
    return rows
