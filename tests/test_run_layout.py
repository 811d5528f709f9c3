"""Issue 25, items 2, 5, 9, 10: one layout for run folders (the book's runs/<profile>/stage1), errors that
name the folder that would work, commands that take a trained model's recorded profile, saved weights
readable under the umask, a tokenizer config with the model's context, ``duo route`` not overwriting."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from duolib import cli
from duolib.data.run_data import model_folder, profile_for_model, recorded_profile
from duolib.folders import RunFolderError, checkout_root, claim, resolve_folder
from duolib.train.command import config_from_args, default_run_dir
from duolib.train.loop import train
from tiny_runs import tiny


@pytest.fixture(scope="module")
def run_under_umask(cache_dir, tmp_path_factory):
    """A finished 2-step tiny run written under umask 027 (so group-readable, world-nothing: modes that
    differ from both mkdtemp's 0700 / 0600 and the usual 0755 / 0644)."""
    run = tmp_path_factory.mktemp("book") / "runs" / "tiny" / "stage1"
    old = os.umask(0o027)
    try:
        train(tiny(cache_dir, steps=2, eval_every=2, checkpoint_every=1), run)
    finally:
        os.umask(old)
    return run


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_saved_weights_and_folders_get_the_umasks_modes(run_under_umask):
    run = run_under_umask
    folders = [run / "final", run / "tokenizer", *sorted((run / "checkpoint").glob("step-*"))]
    assert len(folders) >= 4
    for folder in folders:
        assert mode(folder) == 0o750, (folder, oct(mode(folder)))
        for f in folder.iterdir():
            assert mode(f) == 0o640, (f, oct(mode(f)))
    assert mode(run / "final" / "model.safetensors") == 0o640


def test_tokenizer_config_holds_the_models_context_and_no_loader_options(run_under_umask):
    final = run_under_umask / "final"
    tok = json.loads((final / "tokenizer_config.json").read_text())
    context = json.loads((final / "config.json").read_text())["max_position_embeddings"]
    assert tok["model_max_length"] == context
    assert not {"is_local", "local_files_only"} & set(tok)


def test_oracle_and_route_take_the_runs_recorded_profile_unless_given(run_under_umask, monkeypatch, capsys):
    run = run_under_umask
    assert recorded_profile(run) == recorded_profile(run / "final") == "tiny"
    assert profile_for_model(str(run), None, cli.PRESETS, "duo oracle") == "tiny"
    assert "profile tiny (recorded by the run" in capsys.readouterr().out
    assert profile_for_model(str(run), "default", cli.PRESETS, "duo oracle") == "default"
    assert profile_for_model(None, None, cli.PRESETS, "duo route") == "default"
    seen = {}
    monkeypatch.setattr(cli, "entry_point", lambda command: lambda args: seen.setdefault(command, args.profile) and 0)
    cli.main(["oracle", "--model", str(run), "--out", "x"])
    cli.main(["route", "--model", str(run / "final"), "--out", "y"])
    assert seen == {"oracle": "tiny", "route": "tiny"}


def test_a_book_folder_given_as_model_names_the_run_inside(run_under_umask):
    book = run_under_umask.parent
    with pytest.raises(ValueError, match=rf"holds the run folder {run_under_umask}: give that to --model"):
        model_folder(book)


def test_claims_across_layouts_name_the_folder_that_would_work(tmp_path):
    book = tmp_path / "runs" / "tiny"
    with claim(book, "duo book"):  # the book's run folder, as duo book marks it
        pass
    with pytest.raises(RunFolderError, match=rf"Stage-1 run is {book}/stage1"):
        with claim(book, "duo train"):
            pass
    trained = tmp_path / "runs" / "mine"
    with claim(trained, "duo train"):
        pass
    with pytest.raises(RunFolderError, match=r"keeps its Stage-1 run in a subfolder, stage1/"):
        with claim(trained, "duo book"):
            pass


def test_duo_train_defaults_to_the_books_stage1_folder_and_caches(monkeypatch, tmp_path):
    root = Path(__file__).resolve().parents[1]
    for here in (root, root / "notebooks"):  # anywhere in the checkout: the project root's runs/
        monkeypatch.chdir(here)
        args = cli.build_parser().parse_args(["train", "--profile", "tiny"])
        assert args.out is None and default_run_dir("tiny") == root / "runs/tiny/stage1"
        assert config_from_args(args).cache_dir == str(root / "runs/tiny/cache")
    args = cli.build_parser().parse_args(["train", "--profile", "tiny", "--out", "elsewhere"])
    assert config_from_args(args).cache_dir is None
    monkeypatch.chdir(tmp_path)  # outside any checkout: the current folder
    assert default_run_dir("tiny") == tmp_path.resolve() / "runs/tiny/stage1"


def test_one_rule_places_every_relative_folder(monkeypatch, tmp_path):
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root / "book")
    assert checkout_root() == root
    assert resolve_folder("runs/x", "unused") == root / "runs/x"
    assert resolve_folder(None, Path("runs") / "tiny") == root / "runs/tiny"
    assert resolve_folder(tmp_path / "abs", "unused") == tmp_path / "abs"
    assert resolve_folder("x", "unused", root=tmp_path) == tmp_path.resolve() / "x"
    monkeypatch.chdir(tmp_path)
    assert checkout_root() is None and resolve_folder("x", "unused") == tmp_path.resolve() / "x"


def test_duo_route_refuses_to_overwrite_a_router_without_overwrite(tmp_path, capsys):
    with claim(tmp_path, "duo route"):  # a duo route folder (its marker), holding a router
        (tmp_path / "router").mkdir()
        (tmp_path / "router" / "router.json").write_text("{}")
    rc = cli.main(["route", "--random-init", "--profile", "tiny", "--out", str(tmp_path), "--steps", "1"])
    assert rc == 1 and "already holds a router; give --overwrite" in capsys.readouterr().err
    assert (tmp_path / "router" / "router.json").read_text() == "{}"


def test_final_holds_a_model_card_with_size_data_tokens_routes_and_loading(run_under_umask):
    run = run_under_umask
    card = (run / "final" / "README.md").read_text()
    summary = json.loads((run / "summary.json").read_text())
    config = json.loads((run / "config.json").read_text())["config"]
    assert f"Tokens seen in training: {summary['tokens']:,}." in card
    assert f"corpus `{config['corpus']}`" in card and f"{config['steps']} steps" in card
    for r in summary["final_eval"]:
        assert f"| {r['holdout']} | {r['routes']} | {r['loss']:.4f} | {r['ppl']:.2f} |" in card
    assert "| total |" in card and "`routes=None` (the default) is all big" in card
    assert "trust_remote_code=True" in card and "import duolib" in card
    assert mode(run / "final" / "README.md") == 0o640


def test_no_progress_on_every_command_silences_transformers_bars_too(monkeypatch, capsys):
    parser = cli.build_parser()
    for command in (["data"], ["book"], ["train"], ["oracle", "--out", "x"], ["route", "--out", "x"]):
        assert parser.parse_args(command + ["--no-progress"]).quiet, command
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.setattr(cli, "build_book", lambda *a: None)
    assert cli.main(["book", "--skip-notebooks", "--skip-build", "--no-progress"]) == 0
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"  # read by huggingface_hub and transformers' bars
