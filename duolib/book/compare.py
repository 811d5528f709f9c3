"""Comparing two runs of the book value by value: the values its executed notebooks glued (``duo book --compare``)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .verdicts import VERDICTS

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


#: ``duo book --compare``'s default relative tolerance for glued numbers: two books from different CPUs
#: (or seeds) agree on a number when it differs by at most 2% or by one unit of its last printed digit.
REL_TOL = 0.02

_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def glued_verdict(text: str | None) -> str | None:
    """The verdict word a glued value holds (``'holds'``, ``"not testable"``, ...), else None."""
    if text is None:
        return None
    word = text.strip().strip("'\"")
    return word if word in VERDICTS else None


def numbers_close(a: str, b: str, rel_tol: float = REL_TOL) -> bool:
    """Whether two glued texts say the same up to their numbers, each pair within ``rel_tol`` of the
    larger or one unit of the last digit printed (the rounding of a value on the edge)."""
    if _NUMBER.sub("#", a) != _NUMBER.sub("#", b):
        return False
    for x, y in zip(_NUMBER.findall(a), _NUMBER.findall(b)):
        digits = max(len(s.partition(".")[2].split("e")[0].split("E")[0]) for s in (x, y))
        fx, fy = float(x), float(y)
        if abs(fx - fy) > max(rel_tol * max(abs(fx), abs(fy)), 10.0 ** -digits * (1 + 1e-9)):
            return False
    return True


def compare_books(a: dict[str, str], b: dict[str, str], rel_tol: float = REL_TOL,
                  ignore: tuple[str, ...] = TIMING_GLUES) -> dict[str, list[dict]]:
    """Two runs' :func:`glued_values` compared in three groups of rows (key, this, other):
    ``verdicts`` (a glued verdict word that changed, listed on its own), ``beyond`` (any other value
    that differs by more than ``rel_tol`` or in its words, or exists in one run only) and ``within``
    (values that differ only in numbers within the tolerance)."""
    if not rel_tol >= 0:
        raise ValueError(f"rel_tol={rel_tol} must be non-negative (a relative tolerance, e.g. 0.02)")
    out: dict[str, list[dict]] = {"verdicts": [], "beyond": [], "within": []}
    for row in compare_glued(a, b, ignore):
        this, other = row["this"], row["other"]
        if glued_verdict(this) or glued_verdict(other):
            out["verdicts"].append(row)
        elif this is not None and other is not None and numbers_close(this, other, rel_tol):
            out["within"].append(row)
        else:
            out["beyond"].append(row)
    return out


def compare_report(this_book, other_book, rel_tol: float | None = None) -> tuple[list[str], bool]:
    """``duo book --compare``'s lines (changed verdicts first, then values beyond ``rel_tol``, then those
    within it, then a count) and whether the books disagree (a changed verdict or a value beyond it)."""
    tol = REL_TOL if rel_tol is None else rel_tol
    this, other = glued_values(this_book), glued_values(other_book)
    groups = compare_books(this, other, tol)
    lines = [f"{title}: {d['key']}: {d['this']!r} here, {d['other']!r} in {other_book}"
             for name, title in (("verdicts", "verdict changed"), ("beyond", f"differs beyond {tol:g}"),
                                 ("within", f"within {tol:g}")) for d in groups[name]]
    lines.append(f"{sum(len(rows) for rows in groups.values())} of {len(set(this) | set(other))} glued values "
                 f"differ: {len(groups['verdicts'])} verdicts changed, {len(groups['beyond'])} beyond the relative "
                 f"tolerance {tol:g}, {len(groups['within'])} within it")
    return lines, bool(groups["verdicts"] or groups["beyond"])
