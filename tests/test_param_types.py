"""papermill parameters are typed: a wrong type or an unknown name fails in the chapter's first cells with a
message naming the parameter, its declared type and where to see them; Binder's DUO_PROFILE keeps an
explicitly given run_dir."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from duolib.book.jobs import PROFILE_ENV
from duolib.book.param_types import check_parameters, matches
from duolib.book.kit import notebook_setup
from test_binder import ROOT, fake_repository

PARAMS = ('from typing import Optional\n\nprofile: str = "tiny"\nrun_dir: Optional[str] = None\nseed: int = 0\n'
          'n_sequences: Optional[int] = None\nbudgets: Optional[Union[list, dict]] = None\n')


def notebook_root(tmp_path):
    import nbformat

    (tmp_path / "notebooks").mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(PARAMS, metadata={"tags": ["parameters"]})]
    nbformat.write(nb, tmp_path / "notebooks" / "01_same_parameters.ipynb")
    nb.cells.append(nbformat.v4.new_code_cell("setup_03_x()"))  # the cell that tells the two apart
    nbformat.write(nb, tmp_path / "notebooks" / "03_x.ipynb")
    return tmp_path


def run(root, **injected):
    history = ["", PARAMS, "setup_03_x()", "# Parameters\n" + "".join(f"{k} = {v!r}\n" for k, v in injected.items())]
    namespace = {"profile": "tiny", "run_dir": None, "seed": 0, "n_sequences": None, "budgets": None, **injected}
    check_parameters(root, namespace, history)


def test_wrong_types_and_unknown_names_are_refused_naming_them(tmp_path):
    root = notebook_root(tmp_path)
    run(root, seed=3, n_sequences=2, budgets=[2, 4], run_dir="runs/x")  # all fine
    run(root, budgets={"a": 1})
    with pytest.raises(ValueError, match=r"parameter seed='abc' of notebook 03_x must be int"):
        run(root, seed="abc")
    with pytest.raises(ValueError, match=r"parameter n_sequences='two' of notebook 03_x must be Optional\[int\]"):
        run(root, n_sequences="two")
    with pytest.raises(ValueError, match=r"parameter seed=True .* must be int"):
        run(root, seed=True)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) nsequences for notebook 03_x; its parameters are "
                                         r"profile: str, run_dir: Optional\[str\], seed: int"):
        run(root, nsequences=2)
    check_parameters(root, {}, ["print(1)"])  # code that is no chapter: nothing checked


def test_matches_follows_the_annotation():
    assert matches(1, float) and not matches(True, float) and not matches("1", int) and matches(None, type(None))


@pytest.mark.slow
def test_papermill_with_a_bad_parameter_fails_early_with_the_message(tmp_path):
    repo = fake_repository(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != PROFILE_ENV}
    for flag, message in ((["-p", "seed", "abc"], "parameter seed='abc' of notebook 01_data must be int"),
                          (["-p", "sed", "2"], "unknown parameter(s) sed for notebook 01_data")):
        proc = subprocess.run([sys.executable, "-m", "papermill", "notebooks/01_data.ipynb", "out.ipynb",
                               "-p", "profile", "tiny", *flag, "-k", "python3", "--no-progress-bar"],
                              cwd=repo, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode != 0 and message in proc.stderr + proc.stdout, proc.stderr[-2000:]
    assert not (repo / "runs" / "tiny" / "results").exists()  # nothing computed


def test_duo_profile_keeps_an_explicit_run_dir_and_replaces_the_books_own(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(PROFILE_ENV, "tiny")
    monkeypatch.chdir(ROOT)
    profile, path = notebook_setup("default", "runs/default")  # the committed chapters' injected parameters
    assert (profile, path) == ("tiny", ROOT / "runs" / "tiny")
    explicit = tmp_path / "mine"
    profile, path = notebook_setup("default", str(explicit))
    assert (profile, path) == ("tiny", explicit)
    assert "was given explicitly, so it is kept" in capsys.readouterr().out
