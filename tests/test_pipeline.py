"""The whole book path under the tiny profile: papermill executes every notebook in dependency
order, nbval re-runs them (lax: no errors), jupyter-book builds the result with -W, and every
figure of the HTML is a real image.  Also: caching of unchanged steps and bad parameters."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from duolib.bookhtml import build_book
from duolib.book.jobs import resolve_jobs
from duolib.book.pipeline import STEPS, notebook_key, run_pipeline, step_names, stored_key

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.book


@pytest.fixture(scope="module")
def tiny_book(tmp_path_factory) -> Path:
    """A copy of the book sources whose experiments are the notebooks executed under `tiny`."""
    site = tmp_path_factory.mktemp("site")
    shutil.copy(ROOT / "_config.yml", site / "_config.yml")
    shutil.copytree(ROOT / "book", site / "book", ignore=shutil.ignore_patterns("_build", "experiments"))
    results = run_pipeline("tiny", root=ROOT, run_dir=site / "runs", book_dir=site / "book")
    assert [r.name for r in results] == [s.name for s in STEPS]
    assert all(r.status == "ran" for r in results)
    return site


def test_every_notebook_has_a_parameters_cell():
    for step in STEPS:
        nb = json.loads((ROOT / "notebooks" / f"{step.name}.ipynb").read_text())
        tags = [t for c in nb["cells"] for t in c.get("metadata", {}).get("tags", [])]
        assert "parameters" in tags, step.name


def test_unchanged_steps_are_not_recomputed(tiny_book):
    again = run_pipeline("tiny", root=ROOT, run_dir=tiny_book / "runs", book_dir=tiny_book / "book",
                         only=["01_data", "02_training"])
    assert [r.status for r in again] == ["cached", "cached"]


def test_executed_notebooks_do_not_stand_in_for_a_missing_run_folder(tiny_book):
    """Committed notebooks with matching keys are rerun when the run folder lacks their stamp (fresh clone)."""
    fresh = run_pipeline("tiny", root=ROOT, run_dir=tiny_book / "runs", book_dir=tiny_book / "book", only=["01_data"])
    assert [r.status for r in fresh] == ["cached"]
    (tiny_book / "runs" / ".pipeline" / "01_data.key").unlink()
    rerun = run_pipeline("tiny", root=ROOT, run_dir=tiny_book / "runs", book_dir=tiny_book / "book", only=["01_data"])
    assert [r.status for r in rerun] == ["ran"]
    assert (tiny_book / "runs" / ".pipeline" / "01_data.key").is_file()


def test_run_folder_outside_the_repository_is_passed_absolute(tiny_book):
    """(Inside the repository it is passed relative to the root: tests/test_binder.py.)"""
    injected = [c for c in json.loads((tiny_book / "book" / "experiments" / "01_data.ipynb").read_text())["cells"]
                if "injected-parameters" in c["metadata"].get("tags", [])]
    assert f'run_dir = "{tiny_book / "runs"}"' in "".join(injected[0]["source"])


def test_nbval_lax_on_the_executed_notebooks(tiny_book):
    notebooks = sorted(str(p) for p in (tiny_book / "book" / "experiments").glob("*.ipynb"))
    assert len(notebooks) == len(STEPS)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "--nbval-lax", "-p", "no:cacheprovider",
                           *notebooks], cwd=tiny_book, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


@pytest.fixture(scope="module")
def tiny_html(tiny_book) -> Path:
    return build_book(tiny_book, tiny_book / "book", quiet=True)


def test_book_has_intro_choices_bibliography_and_links(tiny_html):
    intro = (tiny_html / "intro.html").read_text(encoding="utf-8")
    assert "Duo-LLM" in intro
    assert "Last updated" not in intro  # stable output: the footer carries no build date
    choices = (tiny_html / "choices.html").read_text(encoding="utf-8")
    assert "Choices the paper left open" in choices and "fixed-context" in choices
    bib = (tiny_html / "bibliography.html").read_text(encoding="utf-8")
    assert "Alizadeh-Vahid" in bib and "Farajtabar" in bib and "2410.10846" in bib
    page = (tiny_html / "experiments" / "03_oracle.html").read_text(encoding="utf-8")
    assert "github.com/duo-llm/duolib" in page and "mybinder.org" in page


def test_book_builds_and_every_figure_exists(tiny_html):
    html = tiny_html
    pages = sorted((html / "experiments").glob("*.html"))
    assert len(pages) == len(STEPS)
    n_images = 0
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert "Traceback" not in text, page.name
        assert "{glue" not in text, f"{page.name}: a glue reference was not resolved (MyST cannot nest it in code)"
        for src in re.findall(r'<img[^>]+src="([^"]+)"', text):
            if src.startswith("data:"):
                assert len(src) > 200, f"empty inline image in {page.name}"
            elif not src.startswith("http"):
                image = (page.parent / src).resolve()
                assert image.is_file() and image.stat().st_size > 1000, f"{page.name}: missing image {src}"
            n_images += 1
    assert n_images >= len(STEPS)


def test_notebook_key_changes_with_parameters():
    src = ROOT / "notebooks" / "01_data.ipynb"
    assert notebook_key(src, {"profile": "tiny"}, []) != notebook_key(src, {"profile": "default"}, [])


def test_notebook_key_changes_with_the_profile_knobs(monkeypatch):
    from duolib import profiles

    src = ROOT / "notebooks" / "10_performance.ipynb"
    before = notebook_key(src, {"profile": "tiny"}, [])
    tiny = {**profiles.PROFILES["tiny"], "book": {**profiles.PROFILES["tiny"]["book"], "bench_repeats": 3}}
    monkeypatch.setitem(profiles.PROFILES, "tiny", tiny)
    assert notebook_key(src, {"profile": "tiny"}, []) != before
    assert stored_key(ROOT / "no-such.ipynb") is None


def glued(notebook: Path) -> dict[str, dict]:
    """Every value a notebook glues (myst-nb ``glue``), by name: its output bundle."""
    nb = json.loads(notebook.read_text())
    return {o["metadata"]["scrapbook"]["name"]: o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", [])
            if "scrapbook" in o.get("metadata", {})}


def test_parallel_steps_glue_what_serial_steps_glue(tiny_book, tmp_path):
    """Independent notebooks run two at a time (09 beside 01 / 02, 08 after 02) and glue the same values
    as the serial book; only wall-clock minutes may differ."""
    steps = ["01_data", "02_training", "08_dense", "09_retrofit"]
    shutil.copytree(ROOT / "book", tmp_path / "book", ignore=shutil.ignore_patterns("_build", "experiments"))
    results = run_pipeline("tiny", root=ROOT, run_dir=tmp_path / "runs", book_dir=tmp_path / "book", only=steps,
                           jobs=2)
    assert [r.name for r in results] == steps and all(r.status == "ran" for r in results)
    for step in steps:
        serial = glued(tiny_book / "book" / "experiments" / f"{step}.ipynb")
        parallel = glued(tmp_path / "book" / "experiments" / f"{step}.ipynb")
        assert serial.keys() == parallel.keys() and serial, step
        for name in serial:
            if "minutes" not in name:
                assert serial[name] == parallel[name], f"{step}: {name}"


def test_jobs_setting():
    from duolib.book.jobs import busy_cpus, busy_share

    assert resolve_jobs(3) == 3 and resolve_jobs("auto") >= 1
    assert 0 <= busy_cpus(0.2) <= os.cpu_count()  # a sample of now, in CPUs
    # 100 jiffies: 40 user and 20 system are busy; 30 niced (tests at nice 19) and 10 idle leave the CPU free
    before, after = "cpu  100 100 100 100 0 0 0 0 0 0", "cpu  140 130 120 110 0 0 0 0 0 0"
    assert busy_share(before, after) == pytest.approx(0.6)
    assert busy_share(before, "cpu  100 200 100 100 0 0 0 0 100 0") == 0.0  # guest time is inside user / nice
    for bad in (0, "two", True):
        with pytest.raises(ValueError, match="positive number of notebooks"):
            resolve_jobs(bad)
    assert [s.name for s in STEPS if s.alone] == ["10_performance"]
    assert not any(s.alone and s.first for s in STEPS)


def test_a_second_run_glues_the_same_values_and_a_perturbed_one_is_reported(tiny_book, tmp_path):
    """Determinism checked, not assumed: notebooks 01-03 (and 02b) rerun from scratch (fresh run folder, caches and
    all) glue exactly the values of the first run (`duo book --compare`); a changed value is reported."""
    import nbformat

    from duolib.book.compare import compare_glued, glued_values

    steps = ["01_data", "02_training", "02b_skip_model", "03_oracle"]  # 03's frontier with skip reads 02b
    site = tmp_path / "again"
    shutil.copytree(ROOT / "book", site / "book", ignore=shutil.ignore_patterns("_build", "experiments"))
    run_pipeline("tiny", root=ROOT, run_dir=site / "runs", book_dir=site / "book", only=steps)
    first = {k: v for k, v in glued_values(tiny_book / "book").items() if k.split("::")[0] in steps}
    again = glued_values(site / "book")
    assert len(first) > 40 and compare_glued(first, again) == []
    path = site / "book" / "experiments" / "03_oracle.ipynb"
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("metadata", {}).get("scrapbook", {}).get("name") == "english_oracle_mid":
                out["data"] = {k: "'1.00'" if k.endswith("text/plain") else v for k, v in out["data"].items()}
    nbformat.write(nb, path)
    diffs = compare_glued(first, glued_values(site / "book"))
    assert [d["key"] for d in diffs] == ["03_oracle::english_oracle_mid"] and diffs[0]["other"] == "'1.00'"


def test_alone_step_waits_for_every_step_before_it_and_runs_by_itself(monkeypatch, tmp_path):
    """10_performance times the book: with two jobs at a time it starts after every step listed before it
    (even those it does not need) and nothing runs beside it; each ran step leaves its timing."""
    import threading

    from duolib.book import jobs, pipeline

    log, lock = [], threading.Lock()

    def fake_execute(source, output, params, key, root):
        with lock:
            log.append(("start", source.stem))
        time.sleep(0.02 if source.stem != "01_data" else 0.1)
        with lock:
            log.append(("end", source.stem))

    monkeypatch.setattr(jobs, "execute_notebook", fake_execute)
    monkeypatch.setattr(jobs, "run_in_process", lambda job, root, context: jobs.run_job(job, root))
    todo = [jobs.Job(s, tmp_path / f"{s.name}.ipynb", tmp_path / "out" / f"{s.name}.ipynb", {}, "k",
                          tmp_path / ".pipeline" / f"{s.name}.key") for s in STEPS]
    done = [r.name for r in jobs.run_jobs(todo, 2, tmp_path)]
    assert sorted(done) == sorted(step_names())
    start = log.index(("start", "10_performance"))
    assert {name for kind, name in log[:start] if kind == "end"} == set(step_names()[:step_names().index("10_performance")])
    assert log[start + 1] == ("end", "10_performance")  # nothing started beside it
    times = pipeline.step_times(tmp_path)
    assert [t["step"] for t in times] == step_names() and all(t["finished"] >= t["started"] for t in times)
    (tmp_path / ".pipeline" / "01_data.time.json").write_text('{"step": "02_training"}')
    with pytest.raises(ValueError, match="01_data.time.json"):
        pipeline.step_times(tmp_path)
    # a step marked first starts before the steps listed before it once both are ready
    assert log.index(("start", "07_routers")) < log.index(("start", "04_schedules"))
    assert [s.name for s in STEPS if s.first] == ["07_routers"]


def test_the_book_writes_its_verdicts_into_each_seeds_model_card(tiny_book):
    from duolib.book.card import publish
    from duolib.book.chapters import ONCE
    from duolib.book.config import BookConfig
    from duolib.book.scorecard import seeded_scorecard
    from duolib.book.seeds import load_seed_results
    from duolib.train.model_card import BOOK_HEADING
    from duolib.train.run_folder import verify_final

    runs = tiny_book / "runs"
    cards = publish(runs, "tiny")
    assert len(cards) == BookConfig.from_profile("tiny").seeds
    card, _ = seeded_scorecard(load_seed_results(runs, len(cards)), ONCE)
    for path in cards:
        text = path.read_text()
        assert text.count(BOOK_HEADING) == 1
        for r in card.itertuples():
            assert f"| {r.claim} | " in text and f" | {r.verdict} | " in text
        verify_final(path.parent.parent)  # the card is in final/'s manifest
