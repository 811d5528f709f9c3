"""Run-folder mechanisms (duolib.folders, duolib.fileio): recognition and safe clearing, the writer
lock, content manifests and checked cache files, stale temporaries of killed writers.  No training."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from duolib.fileio import remove_stale_temps
from duolib.migrate import migrate
from duolib.folders import (LOCK_FILE, RunFolderError, check_usable, claim, clear, folder_kind, is_duolib_folder,
                            reading)
from duolib.manifests import MANIFEST, read_checked, verify_manifest, write_checked, write_manifest
from duolib.utils import json_hash

ROOT = Path(__file__).resolve().parents[1]


def foreign(tmp_path) -> Path:
    folder = tmp_path / "thesis"
    (folder / "sub").mkdir(parents=True)
    (folder / "thesis.txt").write_text("years of work")
    (folder / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return folder


def test_clear_refuses_a_foreign_folder_and_leaves_it_untouched(tmp_path):
    folder = foreign(tmp_path)
    with pytest.raises(RunFolderError, match=r"thesis holds files that duolib did not write \(sub, thesis.txt\)"):
        clear(folder)
    with pytest.raises(RunFolderError, match="did not write"):
        with claim(folder, "duo train"):
            pass
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == ["sub", "sub/data.csv", "thesis.txt"]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(RunFolderError, match="afile is a file, not a folder"):
        check_usable(tmp_path / "afile")


def test_clear_empties_a_recognised_run_folder_but_keeps_its_lock(tmp_path):
    run = tmp_path / "run"
    with claim(run, "duo train"):
        (run / "final").mkdir()
        (run / "final" / "model.safetensors").write_bytes(b"w")
        clear(run)
        assert sorted(p.name for p in run.iterdir()) == [".duolib", LOCK_FILE]
    legacy = tmp_path / "legacy"  # written before the marker: recognised only after `duo migrate`
    legacy.mkdir()
    identity = {"train": {"steps": 3}}
    (legacy / "config.json").write_text(json.dumps({"identity": identity, "identity_hash": json_hash(identity),
                                                    "config": {}}))
    assert not is_duolib_folder(legacy) and not is_duolib_folder(foreign(tmp_path))
    with pytest.raises(RunFolderError, match="duo migrate"):
        clear(legacy)
    assert migrate(legacy) == "duo train" and is_duolib_folder(legacy)
    clear(legacy)
    assert [p.name for p in legacy.iterdir()] == [".duolib"]


def test_second_writer_gets_an_error_naming_the_holders_pid(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from duolib.folders import claim\n"
                               "with claim(sys.argv[1], 'duo train'):\n    print('held', flush=True); time.sleep(60)",
         str(run)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderError, match=rf"run folder .*run is in use by pid {holder.pid} \(duo train"):
            with claim(run, "duo train"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with claim(run, "duo train"):  # released when its holder died
        pass


def test_lock_is_exclusive_within_one_process_too(tmp_path):
    with claim(tmp_path / "r", "duo route"):
        with pytest.raises(RunFolderError, match=f"in use by pid {os.getpid()} \\(duo route"):
            with claim(tmp_path / "r", "duo route"):
                pass


def test_a_folder_of_one_writer_is_refused_to_another(tmp_path):
    with claim(tmp_path / "run", "duo train"):
        pass
    with pytest.raises(RunFolderError, match=r"run is a `duo train` folder; give `duo oracle` a folder of its own"):
        with claim(tmp_path / "run", "duo oracle"):
            pass


def test_manifest_detects_a_flipped_byte_a_truncation_and_a_missing_file(tmp_path):
    folder = tmp_path / "final"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 4)
    (folder / "sub" / "tokenizer.json").write_text("{}")
    write_manifest(folder)
    verify_manifest(folder, "advice")
    good = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(good[:100] + bytes([good[100] ^ 1]) + good[101:])
    with pytest.raises(RunFolderError, match=r"model.safetensors does not match its recorded sha256.*; retrain"):
        verify_manifest(folder, "retrain")
    (folder / "model.safetensors").write_bytes(good[:-1])
    with pytest.raises(RunFolderError, match="model.safetensors has 1023 bytes, expected 1024"):
        verify_manifest(folder, "retrain")
    (folder / "model.safetensors").write_bytes(good)
    (folder / "sub" / "tokenizer.json").unlink()
    with pytest.raises(RunFolderError, match="tokenizer.json is missing"):
        verify_manifest(folder, "retrain")


def test_checked_cache_file_is_recomputed_after_a_flipped_byte(tmp_path):
    path = tmp_path / "oracle" / "matrix.json"
    write_checked(path, lambda tmp: tmp.write_text(json.dumps([1.5, 2.5])))
    assert read_checked(path, lambda p: json.loads(p.read_text())) == [1.5, 2.5]
    path.write_text(json.dumps([1.5, 2.4]))  # same size, other content
    with pytest.warns(UserWarning, match="cache entry rebuilt: .*matrix.json does not match"):
        assert read_checked(path, lambda p: json.loads(p.read_text())) is None
    assert read_checked(tmp_path / "absent.json", json.loads) is None


def test_stale_temporaries_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".abc.tokens.npy.{dead_pid}.tmp"
    stale.write_bytes(b"half")
    live = tmp_path / f".abc.tokens.npy.{os.getppid()}.tmp"
    live.write_bytes(b"writing")
    kept = tmp_path / "abc.tokens.npy"
    kept.write_bytes(b"x")
    time.sleep(0.01)
    assert remove_stale_temps(tmp_path) == [stale]
    assert live.exists() and kept.exists() and not stale.exists()


# ----------------------------------------------------------------------------- issue 23: marker only, safe lock


@pytest.mark.parametrize("name, content", [("summary.json", {"results": {"a": 1}}),
                                           ("config.json", {"identity": {}, "config": {}}),
                                           ("config.json", {"identity": {}, "identity_hash": "0" * 64, "config": {}})])
def test_a_folder_without_the_marker_is_never_cleared_whatever_its_json_holds(tmp_path, name, content):
    folder = tmp_path / "mine"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "raw.csv").write_text("a,b\n")
    (folder / name).write_text(json.dumps(content))
    assert folder_kind(folder) is None
    with pytest.raises(RunFolderError, match="did not write"):
        clear(folder)
    with pytest.raises(RunFolderError, match="not look like a run folder"):
        migrate(folder)  # a user's JSON does not pass the strict signature either
    assert (folder / "data" / "raw.csv").read_text() == "a,b\n" and not (folder / ".duolib").exists()


def test_a_lock_symlink_is_refused_and_its_target_untouched(tmp_path):
    run, victim = tmp_path / "run", tmp_path / "victim.txt"
    victim.write_text("precious")
    with claim(run, "duo train"):
        pass
    (run / LOCK_FILE).unlink()
    (run / LOCK_FILE).symlink_to(victim)
    with pytest.raises(RunFolderError, match="symbolic link"):
        with claim(run, "duo train"):
            pass
    with pytest.raises(RunFolderError, match="symbolic link"):
        with reading(run):
            pass
    (run / LOCK_FILE).unlink()
    os.link(victim, run / LOCK_FILE)  # a hard link would be truncated just the same
    with pytest.raises(RunFolderError, match="not a plain lock file"):
        with claim(run, "duo train"):
            pass
    assert victim.read_text() == "precious"


def test_readers_share_the_lock_and_exclude_a_writer(tmp_path):
    run = tmp_path / "run"
    with claim(run, "duo train"):
        with pytest.raises(RunFolderError, match=f"in use by pid {os.getpid()}"):
            with reading(run):
                pass
    with reading(run), reading(run):  # two readers at once
        with pytest.raises(RunFolderError, match="in use"):
            with claim(run, "duo train"):
                pass
    with claim(run, "duo train"):  # free again
        pass


@pytest.mark.parametrize("name", ["../outside.txt", "/etc/hostname", "sub/../../outside.txt", "link.txt"])
def test_manifest_names_are_confined_to_their_folder(tmp_path, name):
    folder, outside = tmp_path / "final", tmp_path / "outside.txt"
    folder.mkdir()
    outside.write_text("secret")
    (folder / "w.bin").write_bytes(b"weights")
    (folder / "link.txt").symlink_to(outside)
    (folder / MANIFEST).write_text(json.dumps({"files": {name: {"size": 1, "sha256": "0"}}}))
    with pytest.raises(RunFolderError, match="not a file inside the folder|symbolic link") as err:
        verify_manifest(folder, "restore it")
    assert "bytes" not in str(err.value)  # the size of a file outside is never revealed


def test_a_missing_manifest_or_an_unlisted_file_is_an_error(tmp_path):
    folder = tmp_path / "final"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"w" * 10)
    with pytest.raises(RunFolderError, match="manifest.json is missing"):
        verify_manifest(folder, "retrain it")
    write_manifest(folder)
    verify_manifest(folder, "retrain it")
    (folder / "extra.safetensors").write_bytes(b"x")
    with pytest.raises(RunFolderError, match="extra.safetensors is not listed"):
        verify_manifest(folder, "retrain it")
