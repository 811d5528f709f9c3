"""Pipeline runs that do not need the tiny book of ``test_pipeline.py``: bad parameters and missing upstream
runs fail in the first cells, and the model chapters replicate over training seeds.  A file of their own, so
that ``make test``'s file-level scheduler runs them beside the tiny book rather than after it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from duolib.book.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.book


def test_bad_profile_fails_in_the_first_cells(tmp_path):
    import papermill

    out = tmp_path / "out.ipynb"
    with pytest.raises(papermill.PapermillExecutionError, match="unknown profile 'huge'"):
        papermill.execute_notebook(str(ROOT / "notebooks" / "02_training.ipynb"), str(out), kernel_name="python3",
                                   parameters={"profile": "huge", "run_dir": str(tmp_path)}, progress_bar=False)
    code = [c for c in json.loads(out.read_text())["cells"] if c["cell_type"] == "code"]
    failing = [i for i, c in enumerate(code) if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert failing and failing[0] <= 2  # parameters, injected parameters, then the first code cell fails


def test_missing_upstream_run_fails_clearly(tmp_path):
    """On a profile too costly to run the earlier chapters unasked, the error names the command that does."""
    import papermill

    with pytest.raises(papermill.PapermillExecutionError,
                       match=r"lacks the results of 01_data .*duo book --profile default"):
        papermill.execute_notebook(str(ROOT / "notebooks" / "02_training.ipynb"), str(tmp_path / "o.ipynb"),
                                   kernel_name="python3", progress_bar=False,
                                   parameters={"profile": "default", "run_dir": str(tmp_path / "missing")})


def test_budget_out_of_range_fails_in_the_first_cells(tmp_path):
    import papermill

    out = tmp_path / "out.ipynb"
    with pytest.raises(papermill.PapermillExecutionError, match=r"budget=99 is outside 0\.\.4"):
        papermill.execute_notebook(str(ROOT / "notebooks" / "07_routers.ipynb"), str(out), kernel_name="python3",
                                   parameters={"profile": "tiny", "run_dir": str(tmp_path), "budgets": [99]},
                                   progress_bar=False)
    code = [c for c in json.loads(out.read_text())["cells"] if c["cell_type"] == "code"]
    failing = [i for i, c in enumerate(code) if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert failing and failing[0] <= 2


def test_model_chapters_run_once_per_training_seed(monkeypatch, tmp_path):
    """With two training seeds every replicated step also runs for seed 1, in runs/seeds/seed1, with its own
    seed; the replica's executed notebook stays out of the book; the timings list it."""
    import copy

    from duolib import profiles
    from duolib.book.pipeline import step_times

    tiny = copy.deepcopy(profiles.PROFILES["tiny"])
    tiny["book"]["seeds"] = 2
    monkeypatch.setitem(profiles.PROFILES, "tiny", tiny)
    shutil.copytree(ROOT / "book", tmp_path / "book", ignore=shutil.ignore_patterns("_build", "experiments"))
    runs = tmp_path / "runs"
    results = run_pipeline("tiny", root=ROOT, run_dir=runs, book_dir=tmp_path / "book",
                           only=["01_data", "02_training"])
    assert [r.name for r in results] == ["01_data", "01_data@seed1", "02_training", "02_training@seed1"]
    assert sorted(p.name for p in (tmp_path / "book" / "experiments").glob("*.ipynb")) == \
        ["01_data.ipynb", "02_training.ipynb"]
    replica = runs / "seeds" / "seed1"
    assert (replica / "experiments" / "02_training.ipynb").is_file()
    assert json.loads((replica / "stage1" / "config.json").read_text())["config"]["seed"] == 1
    assert json.loads((runs / "stage1" / "config.json").read_text())["config"]["seed"] == 0
    ppl = [json.loads((d / "results" / "02_training.json").read_text())["holdouts"] for d in (runs, replica)]
    assert ppl[0] != ppl[1]  # another seed, another model
    assert [t["step"] for t in step_times(runs)] == [r.name for r in results]
    again = run_pipeline("tiny", root=ROOT, run_dir=runs, book_dir=tmp_path / "book", only=["02_training"])
    assert [(r.name, r.status) for r in again] == [("02_training", "cached"), ("02_training@seed1", "cached")]
