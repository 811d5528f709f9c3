"""How people run the notebooks outside `duo book`: Binder's "Run all" on a committed chapter
(DUO_PROFILE=tiny, no parameters), papermill from the repository root, `papermill --help-notebook`,
and `duo data` (Binder's warm-up step)."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from duolib.cli import main
from duolib.book.jobs import PROFILE_ENV
from duolib.book.pipeline import STEPS, find_root, run_pipeline, upstream
from duolib.book.kit import resolve_run_dir, run_upstream

ROOT = Path(__file__).resolve().parents[1]


def fake_repository(base: Path) -> Path:
    """The parts of the repository a notebook needs to find its root and its upstream notebooks."""
    repo = base / "repo"
    (repo / "book" / "experiments").mkdir(parents=True)
    shutil.copy(ROOT / "_config.yml", repo / "_config.yml")
    shutil.copy(ROOT / "book" / "_toc.yml", repo / "book" / "_toc.yml")
    shutil.copytree(ROOT / "notebooks", repo / "notebooks")
    return repo


def committed_chapter(step: str) -> dict:
    """``book/experiments/<step>.ipynb`` as Binder opens it: the parameters papermill injected when the book
    was built (read from the committed file), in the current source notebook (the committed copy's cells
    are the sources of its last `make book`), outputs cleared."""
    committed = json.loads((ROOT / "book" / "experiments" / f"{step}.ipynb").read_text(encoding="utf-8"))
    injected = [c for c in committed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(injected) == 1, f"book/experiments/{step}.ipynb has no papermill-injected parameters cell"
    nb = json.loads((ROOT / "notebooks" / f"{step}.ipynb").read_text(encoding="utf-8"))
    at = next(i for i, c in enumerate(nb["cells"]) if "parameters" in c["metadata"].get("tags", []))
    nb["cells"].insert(at + 1, {**copy.deepcopy(injected[0]), "outputs": [], "execution_count": None})
    return nb


def errors(nb) -> list[str]:
    return [f"{o['ename']}: {o['evalue']}" for c in nb.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if o.get("output_type") == "error"]


@pytest.mark.slow
def test_binder_run_all_on_a_committed_chapter_runs_the_tiny_profile(tmp_path, monkeypatch):
    """The oracle chapter opened alone on Binder: its injected parameters say profile="default"; with
    DUO_PROFILE=tiny (Binder's `start`), "Run all" trains the tiny model it needs first and finishes."""
    import nbformat
    from nbclient import NotebookClient

    nb = committed_chapter("03_oracle")
    injected = "".join(next(c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", []))
                       ["source"])
    assert 'profile = "default"' in injected  # what makes Binder's Run all an hour long without the override
    repo = fake_repository(tmp_path)
    assert main(["data", "--profile", "tiny", "--out", str(repo / "runs" / "tiny")]) == 0  # postBuild's warm-up
    monkeypatch.setenv(PROFILE_ENV, "tiny")
    notebook = nbformat.reads(json.dumps(nb), as_version=4)
    start = time.perf_counter()
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(repo / "book" / "experiments")}}).execute()
    seconds = time.perf_counter() - start
    assert not errors(notebook)
    printed = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    assert "DUO_PROFILE=tiny is set: this notebook runs the 'tiny' profile" in printed
    runs = repo / "runs" / "tiny"
    oracle = json.loads((runs / "results" / "03_oracle.json").read_text())
    assert oracle["num_layers"] == 4  # the tiny model's layers; the default profile has 12
    for step in ("01_data", "02_training"):  # executed first, beside the run, not over the book
        assert (runs / "results" / f"{step}.json").is_file()
        assert (runs / "upstream" / "experiments" / f"{step}.ipynb").is_file()
    assert not (repo / "runs" / "default").exists()
    assert sorted(p.name for p in (repo / "book" / "experiments").iterdir()) == []
    print(f"Binder path (03_oracle with 01 and 02 first, tiny): {seconds:.0f} s")


def test_papermill_from_the_repository_root_writes_inside_the_repository(tmp_path):
    """The README's command, run from the root: the default run_dir is runs/<profile> under the root."""
    repo = fake_repository(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != PROFILE_ENV}
    proc = subprocess.run([sys.executable, "-m", "papermill", "notebooks/01_data.ipynb", "out.ipynb",
                           "-p", "profile", "tiny", "-k", "python3", "--no-progress-bar"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (repo / "runs" / "tiny" / "results" / "01_data.json").is_file()
    assert not (tmp_path / "runs").exists()  # the old "../runs/tiny" default wrote here, outside the repository


def test_help_notebook_shows_every_parameter_type():
    import papermill

    for step in STEPS:
        params = papermill.inspect_notebook(ROOT / "notebooks" / f"{step.name}.ipynb")
        assert {"profile", "run_dir", "seed"} <= set(params), step.name
        untyped = [n for n, p in params.items() if p["inferred_type_name"] in ("None", "")]
        assert not untyped, f"{step.name}: parameters without a type annotation: {untyped}"
        assert params["profile"]["inferred_type_name"] == "str"
        assert params["run_dir"]["inferred_type_name"] == "Optional[str]"
    proc = subprocess.run([sys.executable, "-m", "papermill", "--help-notebook", "notebooks/03_oracle.ipynb"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "profile: str" in proc.stdout and "n_random: Optional[int]" in proc.stdout
    assert "Unknown type" not in proc.stdout


def test_relative_run_folders_are_taken_from_the_repository_root(tmp_path):
    repo = fake_repository(tmp_path)
    assert find_root(repo / "book" / "experiments") == repo
    assert resolve_run_dir(None, "tiny", repo) == repo / "runs" / "tiny"
    assert resolve_run_dir("runs/x", "tiny", repo) == repo / "runs" / "x"
    assert resolve_run_dir(tmp_path / "elsewhere", "tiny", repo) == tmp_path / "elsewhere"
    # the committed notebooks' old "../runs/default" meant "beside notebooks/": from the root it leaves it
    with pytest.raises(ValueError, match=r"'\.\./runs/default' leads outside the repository .*'runs/default'"):
        resolve_run_dir("../runs/default", "default", repo)


def test_a_chapter_alone_runs_its_upstream_steps_into_a_run_folder_that_does_not_exist_yet(tmp_path, monkeypatch):
    """papermill -p run_dir <new folder> on one chapter: its upstream notebooks are executed into
    run_dir/upstream, which must not be created before run_dir is claimed (a folder with unmarked content
    is refused as not duolib's)."""
    from duolib.book import jobs
    from duolib.folders import folder_kind

    ran = []

    def fake_execute(source, output, params, key, root):
        ran.append(source.stem)
        results = Path(params["run_dir"]) / "results"
        results.mkdir(parents=True, exist_ok=True)
        (results / f"{source.stem}.json").write_text("{}")
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("{}")

    monkeypatch.setattr(jobs, "execute_notebook", fake_execute)
    repo = fake_repository(tmp_path)
    run_dir = tmp_path / "new" / "run"
    monkeypatch.chdir(repo)
    results = run_upstream("03_oracle", "tiny", run_dir)
    assert [r.name for r in results] == ran == ["01_data", "02_training", "02b_skip_model"]
    assert folder_kind(run_dir) == "duo book"
    assert sorted(p.name for p in (run_dir / "upstream" / "experiments").iterdir()) == [
        "01_data.ipynb", "02_training.ipynb", "02b_skip_model.ipynb"]


def test_upstream_of_each_step():
    assert upstream("01_data") == [] and upstream("09_retrofit") == []
    assert upstream("03_oracle") == ["01_data", "02_training", "02b_skip_model"]
    assert upstream("07_routers") == ["01_data", "02_training", "02b_skip_model", "03_oracle"]
    assert upstream("05_oracle_routes") == ["01_data", "02_training", "02b_skip_model", "03_oracle"]
    assert upstream("scorecard") == ["01_data", "02_training", "02b_skip_model", "03_oracle", "04_schedules",
                                     "05_oracle_routes",
                                     "06_difficulty", "07_routers", "08_dense"]
    with pytest.raises(ValueError, match="unknown step 'nope'"):
        upstream("nope")


def test_missing_upstream_on_an_expensive_profile_names_the_command(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "01_data.json").write_text("{}")
    with pytest.raises(ValueError, match=r"lacks the results of 02_training, 02b_skip_model .*duo book --profile "
                                         r"default .*--only 02_training 02b_skip_model"):
        run_upstream("03_oracle", "default", tmp_path)
    (tmp_path / "results" / "02_training.json").write_text("{}")
    (tmp_path / "results" / "02b_skip_model.json").write_text("{}")
    assert run_upstream("03_oracle", "default", tmp_path) == []


def test_the_pipeline_passes_its_own_parameters_whatever_DUO_PROFILE_says(tmp_path, monkeypatch):
    """A leaked override would reach the kernel, whose first cell rejects this profile name.  A run folder
    inside the repository is passed relative to its root, so the committed notebooks show no machine's path.
    On the tiny profile, --only also executes the missing steps the chosen ones need (the kernel could not:
    the pipeline holds the run folder's lock)."""
    repo = fake_repository(tmp_path)
    monkeypatch.setenv(PROFILE_ENV, "no-such-profile")
    results = run_pipeline("tiny", root=repo, run_dir=repo / "runs" / "t", book_dir=tmp_path / "book",
                           only=["02_training"])
    assert [(r.name, r.status) for r in results] == [("01_data", "ran"), ("02_training", "ran")]  # tiny: + upstream
    assert (repo / "runs" / "t" / "results" / "01_data.json").is_file()
    assert os.environ[PROFILE_ENV] == "no-such-profile"  # restored for the caller
    executed = json.loads((tmp_path / "book" / "experiments" / "01_data.ipynb").read_text())
    injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert 'run_dir = "runs/t"' in "".join(injected[0]["source"])


def test_a_bad_DUO_PROFILE_fails_in_the_first_cells(tmp_path, monkeypatch):
    import papermill

    monkeypatch.setenv(PROFILE_ENV, "huge")
    with pytest.raises(papermill.PapermillExecutionError, match="DUO_PROFILE='huge': unknown profile 'huge'"):
        papermill.execute_notebook(str(ROOT / "notebooks" / "01_data.ipynb"), str(tmp_path / "o.ipynb"),
                                   kernel_name="python3", progress_bar=False, parameters={"run_dir": str(tmp_path)})


def test_duo_data_prepares_the_corpus_the_notebooks_read(tmp_path):
    from duolib.book.kit import book_data

    assert main(["data", "--profile", "tiny", "--out", str(tmp_path)]) == 0
    caches = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert caches
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    book_data("tiny", tmp_path)  # what 01_data reads: found in the cache, nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*") if p.is_file()} == before
