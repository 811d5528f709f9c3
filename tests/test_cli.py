"""The ``duo`` command line: help, registry, presets and the book command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from duolib import bookhtml, cli

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    names = [c.name for c in cli._COMMANDS]
    assert {"book", "presets"} <= set(names)
    for name in names:
        assert name in out


def test_help_from_a_subprocess():
    proc = subprocess.run(
        [sys.executable, "-m", "duolib.cli", "--help"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "book" in proc.stdout and "presets" in proc.stdout


def test_console_script_installed():
    duo = Path(sys.executable).parent / "duo"
    if not duo.exists():
        pytest.skip("duolib is not installed in this interpreter's environment")
    proc = subprocess.run([str(duo), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "presets" in proc.stdout


def test_no_subcommand_is_an_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == 2


def test_subcommand_registry_rejects_duplicates():
    with pytest.raises(ValueError):
        cli.subcommand("book", "again")(lambda args: 0)


def test_presets_print_the_paper_breakdown(capsys):
    assert cli.main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in cli.PRESETS:
        assert f"preset {name}" in out
    paper = out.split("preset paper", 1)[1]
    total_line = next(line for line in paper.splitlines() if line.strip().startswith("total"))
    assert "1.399B" in total_line  # the paper's 1.399B parameters
    for part in ("big_ffn", "small_ffn", "attention", "embeddings"):
        assert part in paper


def test_presets_unknown_name(capsys):
    assert cli.main(["presets", "huge"]) == 1
    assert "unknown preset" in capsys.readouterr().err


def test_book_command_line():
    cmd = bookhtml.book_command(ROOT, Path("/tmp/out"))
    assert cmd[0] == sys.executable and "jupyter_book" in cmd[2] and cmd[3] == "build"
    assert str(ROOT / "book") in cmd and "-W" in cmd
    assert cmd[cmd.index("--config") + 1] == str(ROOT / "_config.yml")
    assert cmd[cmd.index("--toc") + 1] == str(ROOT / "book" / "_toc.yml")
    assert cmd[cmd.index("--path-output") + 1] == "/tmp/out"


def test_book_skip_everything(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert cli.main(["book", "--profile", "tiny", "--skip-notebooks", "--skip-build"]) == 0
    assert "total" in capsys.readouterr().out


def test_book_unknown_step_is_a_clear_error(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    assert cli.main(["book", "--profile", "tiny", "--out", str(tmp_path), "--only", "99_nope", "--skip-build"]) == 1
    assert "unknown step(s) ['99_nope']" in capsys.readouterr().err


def test_repo_root_found():
    assert cli.repo_root(ROOT / "book") == ROOT


def test_every_option_has_help_and_shared_options_agree():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.choices and "train" in a.choices)
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.dest != "help":
                assert action.help, f"duo {name} {action.option_strings or action.dest}: no help text"
        flags = {s: a for a in p._actions for s in a.option_strings}
        if "--profile" in flags:  # oracle / route: None means the --model run's recorded profile, else default
            assert flags["--profile"].default == (None if name in ("oracle", "route") else "default"), name
        assert "--quiet" not in flags and "--run-dir" not in flags, name
        if name in ("train", "oracle", "route"):
            assert "--no-progress" in flags and "--out" in flags, name


def test_entry_points_name_real_functions():
    for command in cli.ENTRY_POINTS:
        assert callable(cli.entry_point(command))


def test_help_does_not_import_torch_or_transformers():
    code = "import sys, duolib.cli; sys.exit(int('torch' in sys.modules or 'transformers' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
