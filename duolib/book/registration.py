"""When the scorecard's rules were fixed: the last commit that changed a file holding a rule, a threshold, a
margin or the way intervals combine, read from the repository's history.

The rules are registered before the run they judge: a book whose run is older than this commit was judged by
rules written after it, and the scorecard page says so (it prints the commit, its date and the run's date).
Any later change to a rule is a new dated commit, which this function then reports instead."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

#: Files that hold the rules (repository-relative): the rules, thresholds, margins and preconditions, the verdict
#: logic and Holm's correction, the rule texts, the interval arithmetic and the combination over seeds.
RULE_FILES = ("duolib/book/rules.py", "duolib/book/rules_selection.py", "duolib/book/rules_routes.py",
              "duolib/book/thresholds.py", "duolib/book/verdicts.py", "duolib/book/scorecard.py", "duolib/stats.py",
              "duolib/book/seeds.py")


def rules_commit(root: str | os.PathLike) -> dict | None:
    """``{"commit", "date", "clean"}`` of the last commit that changed a file of :data:`RULE_FILES` in the git
    repository ``root`` (``date``: ISO 8601 committer date; ``clean``: False when one of those files differs
    from that commit in the working tree, i.e. the rules in force are not the registered ones); None when
    ``root`` is not a git checkout or git is missing (e.g. an unpacked archive)."""
    root = Path(root)
    try:
        out = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%H %cI", "--", *RULE_FILES],
                             capture_output=True, text=True, timeout=30)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", *RULE_FILES],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0 or not out.stdout.strip() or dirty.returncode != 0:
        return None
    commit, date = out.stdout.split()
    return {"commit": commit, "date": date, "clean": not dirty.stdout.strip()}


def registration_text(info: dict | None, run_started: str | None = None) -> str:
    """One sentence for the scorecard page: which commit fixed the rules, when, and whether that was before the
    run (``run_started``: ISO 8601 date of the run's first step)."""
    if info is None:
        return "The commit that fixed these rules is unknown: this copy of the project has no git history."
    text = f"The rules above were fixed in commit {info['commit'][:12]} of {info['date']}"
    if not info["clean"]:
        return text + ", but this copy changes them: the verdicts are not those of the registered rules."
    if run_started is not None:
        from datetime import datetime

        before = datetime.fromisoformat(info["date"]) <= datetime.fromisoformat(run_started)
        text += ", before this run began" if before else \
            f", AFTER this run began ({run_started}): the verdicts were judged by rules written after the run"
    return text + "."
