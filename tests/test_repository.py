"""Repository conventions a user or a service reads: licence, citation metadata, the CI and Pages
workflows and Binder's scripts.  (The book's footer is checked on the built HTML: test_pipeline.)"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from duolib import cli
from duolib.book.jobs import PROFILE_ENV

ROOT = Path(__file__).resolve().parents[1]


def test_license_is_the_one_pyproject_declares():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]["text"]
    text = (ROOT / "LICENSE").read_text()
    assert declared == "MIT" and text.startswith("MIT License\n")
    assert "Copyright (c)" in text and "duolib contributors" in text
    assert "THE SOFTWARE IS PROVIDED \"AS IS\"" in text


def test_citation_cff_names_the_software_and_prefers_the_paper():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    for key in ("message", "title", "authors"):  # required by the 1.2.0 schema
        assert cff[key], key
    assert cff["version"] == project["version"] and cff["license"] == "MIT"
    assert cff["repository-code"] == project["urls"]["Homepage"]
    paper = cff["preferred-citation"]
    assert paper["title"].startswith("Duo-LLM: A Framework for Studying Adaptive Computation")
    assert [a["family-names"] for a in paper["authors"]][0::8] == ["Alizadeh-Vahid", "Farajtabar"]
    assert len(paper["authors"]) == 9 and paper["year"] == 2024
    assert (paper["volume"], paper["start"], paper["end"]) == (262, 443, 455)
    assert "2410.10846" in paper["url"]


def workflow(name: str) -> dict:
    return yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())


def test_every_workflow_job_has_a_timeout():
    for path in (ROOT / ".github" / "workflows").glob("*.yml"):
        for job, spec in workflow(path.name)["jobs"].items():
            assert 0 < spec.get("timeout-minutes", 0) <= 60, f"{path.name}: job {job} has no timeout-minutes"


def test_pages_publishes_the_committed_notebooks_and_tests_run_separately():
    def commands(flow):
        return [s.get("run", "") for job in flow["jobs"].values() for s in job.get("steps", [])]

    book = commands(workflow("book.yml"))
    assert any("duo book --skip-notebooks" in c for c in book)
    assert not any(re.search(r"make book|duo book(?!.*--skip-notebooks)", c) for c in book)  # never re-executes
    test = workflow("test.yml")
    assert "make test" in commands(test)
    assert {"push", "pull_request"} <= set(test.get("on", test.get(True)))  # YAML 1.1 reads a bare `on` as True


def test_binder_scripts_run_only_commands_that_exist(capsys):
    post_build = (ROOT / "postBuild").read_text()
    used = [shlex.split(line)[1] for line in post_build.splitlines() if line.startswith("duo ")]
    assert used, "postBuild prepares nothing"
    for name in used:  # argparse exits 0 for the help of a subcommand it knows, 2 otherwise
        with pytest.raises(SystemExit) as exc:
            cli.main([name, "--help"])
        assert exc.value.code == 0, f"postBuild runs `duo {name}`, which the CLI does not have"
    start = (ROOT / "start").read_text()
    assert f"export {PROFILE_ENV}=tiny\n" in start and start.rstrip().endswith('exec "$@"')
    for script in ("postBuild", "start"):
        assert (ROOT / script).stat().st_mode & 0o111, f"{script} must be executable"
