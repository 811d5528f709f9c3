"""The book's HTML build: the ``jupyter-book build`` command line (warnings are errors) and its run,
for ``duo book``.  Standard library only, so that importing it keeps ``duo --help`` fast."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path


class BookBuildError(RuntimeError):
    """``jupyter-book build`` failed (a warning counts as a failure: it runs with -W)."""


# jupyter_book has no __main__; run its click entry point with this interpreter so the
# build uses the same environment as duolib, whatever is on PATH.
_JUPYTER_BOOK = "from jupyter_book.cli.main import main; main(prog_name=\"jupyter-book\")"


def book_command(root: Path, output: Path | None = None) -> list[str]:
    """The ``jupyter-book build`` command line that builds the book under ``root``.

    Sources are ``root/book`` with ``root/_config.yml`` and ``root/book/_toc.yml``;
    HTML lands in ``<output>/_build/html``; always pass ``output`` (``build_book`` uses
    ``root/book``): without ``--path-output`` jupyter-book writes to ``root/_build``.
    ``-W`` makes every warning an error, ``--keep-going`` lists them all first, and
    ``--all`` rebuilds every page (an incremental build would hide old warnings).
    """
    root = Path(root)
    cmd = [
        sys.executable,
        "-c",
        _JUPYTER_BOOK,
        "build",
        str(root / "book"),
        "--config",
        str(root / "_config.yml"),
        "--toc",
        str(root / "book" / "_toc.yml"),
        "--builder",
        "html",
        "--all",
        "-W",
        "--keep-going",
    ]
    if output is not None:
        cmd += ["--path-output", str(output)]
    return cmd


def build_book(root: Path, output: Path | None = None, quiet: bool = False) -> Path:
    """Build the HTML of the book under the repository root ``root`` with warnings as errors; return the HTML folder.

    Raises :class:`BookBuildError` if the build fails.
    """
    root = Path(root).resolve()
    out_base = root / "book" if output is None else Path(output).resolve()
    cmd = book_command(root, out_base)
    proc = subprocess.run(
        cmd,
        cwd=root,
        stdout=subprocess.PIPE if quiet else None,
        stderr=subprocess.STDOUT if quiet else None,
        text=True,
    )
    html = out_base / "_build" / "html"
    if proc.returncode != 0 or not (html / "index.html").is_file():
        if quiet and proc.stdout:
            log = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout)
            problems = [ln for ln in log.splitlines() if re.search(r"WARNING|ERROR|Error", ln)]
            detail = "\nproblems:\n" + "\n".join(problems[:50]) + "\nend of log:\n" + log[-4000:]
        else:
            detail = "\n(see the jupyter-book output above)"
        status = f"exit status {proc.returncode}" if proc.returncode else f"no {html / 'index.html'}"
        raise BookBuildError(
            f"the book build failed ({status}; warnings are errors: -W)"
            f"\ncommand: {shlex.join(cmd)}{detail}"
        )
    return html
