"""Issue 23, defects 1-16: what used to be trusted without a check.  Each test names its defect; each
failed on the code before the fix (a silent wrong result, a deleted file, a raw traceback).  The runs
are copies of one finished tiny run (``finished_run`` in conftest.py)."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from duolib.cli import main
from duolib.data.run_data import run_data
from duolib.folders import LOCK_FILE, RunFolderError, claim
from duolib.manifests import digest
from duolib.train.checkpoint import latest_checkpoint
from duolib.train.loop import train
from duolib.train.run_folder import NonFiniteError
from tiny_runs import SYNTH, tiny

ORACLE = ["--profile", "tiny", "--n-sequences", "2", "--seq-len", "16", "--no-progress"]


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(LOCK_FILE))
    return dst


def oracle(run: Path, out: Path, *extra) -> int:
    return main(["oracle", "--model", str(run), "--out", str(out), *ORACLE, *extra])


def error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err


def edit_merge(path: Path) -> None:
    """Swap the first and the last BPE merge rule: the tokenizer still loads, and tokenises differently."""
    tok = json.loads(path.read_text())
    merges = tok["model"]["merges"]
    merges[0], merges[-1] = merges[-1], merges[0]
    path.write_text(json.dumps(tok))


def cfg(cache_dir, **kw):
    return tiny(cache_dir, steps=10, eval_every=10, checkpoint_every=5, **kw)


# ----------------------------------------------------------------------------- 1-3: one identity


def test_1_a_changed_or_foreign_run_tokenizer_is_refused_by_every_consumer(finished_run, cache_dir, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    edit_merge(run / "tokenizer" / "tokenizer.json")
    assert oracle(run, tmp_path / "o") == 1
    assert "tokenizer/tokenizer.json differs from the checked copy" in error(capsys)
    assert main(["route", "--model", str(run), "--out", str(tmp_path / "r"), "--profile", "tiny", "--steps", "1",
                 "--no-progress"]) == 1
    assert "tokenizer/tokenizer.json differs" in error(capsys)
    with pytest.raises(RunFolderError, match="tokenizer.json differs"):
        run_data(run)
    with pytest.raises(RunFolderError, match="tokenizer.json differs"):  # was: "already finished"
        train(cfg(cache_dir), run)


def test_2_a_reader_holds_the_shared_lock_so_a_writer_cannot_replace_the_run_meanwhile(finished_run, tmp_path,
                                                                                         capsys):
    run = copy_run(finished_run, tmp_path / "run")
    with claim(run, "duo train"):  # a `duo train --overwrite` in progress
        assert oracle(run, tmp_path / "o") == 1
    assert f"run folder {run} is in use by pid {os.getpid()}" in error(capsys)
    assert oracle(run, tmp_path / "o") == 0  # the writer gone, the same call works


def test_3_an_edited_run_config_is_refused(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    record = json.loads((run / "config.json").read_text())
    record["config"]["data"]["synthetic"]["n_docs"] = 50  # the data options run_data prepares with
    (run / "config.json").write_text(json.dumps(record))
    with pytest.raises(RunFolderError, match="config.json describes data .* differ from what the run was trained on"):
        run_data(run)
    record["identity"]["model"]["rms_norm_eps"] = 1e-3  # the identity itself
    (run / "config.json").write_text(json.dumps(record))
    with pytest.raises(RunFolderError, match="does not match its identity_hash"):
        run_data(run)


def test_3_an_edited_metrics_log_of_a_finished_run_is_refused(finished_run, cache_dir, tmp_path):
    """The book reads a run's metrics.jsonl (training curves, the plateau precondition): a finished run's log
    matches the digest its checksummed summary recorded, or the run is refused, naming the log."""
    from duolib.data.run_data import verify_run

    run = copy_run(finished_run, tmp_path / "run")
    verify_run(run)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])
    last["loss"] = 0.5  # a better-looking curve
    (run / "metrics.jsonl").write_text("\n".join(lines[:-1] + [json.dumps(last)]) + "\n")
    with pytest.raises(RunFolderError, match=r"metrics.jsonl no longer matches the digest its summary recorded"):
        verify_run(run)
    with pytest.raises(RunFolderError, match=r"metrics.jsonl"):
        train(tiny(cache_dir, steps=10, eval_every=10, checkpoint_every=5), run)  # not "already finished"


def test_3_overwrite_keeps_the_old_log_until_the_new_run_writes_its_own(finished_run, cache_dir, tmp_path,
                                                                         monkeypatch):
    import duolib.train.run_folder as run_folder
    from duolib.train.run_folder import read_metric_records

    run = copy_run(finished_run, tmp_path / "run")
    old = (run / "metrics.jsonl").read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk gone")

    monkeypatch.setattr(run_folder, "write_json", fail)  # the new run fails right after the folder was cleared
    with pytest.raises(OSError, match="disk gone"):
        train(tiny(cache_dir, steps=4, eval_every=4), run, overwrite=True)
    assert (run / "metrics.jsonl").read_bytes() == old  # the old run's log: all that is left of it
    assert not (run / "summary.json").exists() and not (run / "final").exists() and not (run / "checkpoint").exists()
    monkeypatch.undo()
    train(tiny(cache_dir, steps=4, eval_every=4), run)  # a fresh run replaces it
    steps = [r["step"] for r in read_metric_records(run / "metrics.jsonl") if r["kind"] == "train"]
    assert steps and max(steps) == 4


# ----------------------------------------------------------------------------- 4-5: caches and corpora


def test_4_the_shared_tokenizer_cache_is_checksummed_and_rebuilt(tmp_path):
    from duolib.data.corpus import prepare
    from duolib.data.tokenizer import tokenizer_hash

    first = prepare("synthetic", 512, tmp_path, synthetic=SYNTH["synthetic"], progress=False)
    cached = first.tokenizer_path / "tokenizer.json"
    good = tokenizer_hash(cached)
    edit_merge(cached)
    with pytest.warns(UserWarning, match=r"tokenizer cache rebuilt: .*tokenizer.json (does not match its recorded sha256|has \d+ bytes, expected)"):
        again = prepare("synthetic", 512, tmp_path, synthetic=SYNTH["synthetic"], progress=False)
    assert tokenizer_hash(again.tokenizer_path) == good  # the same tokenizer, not the damaged one


def test_5_a_non_utf8_or_binary_text_corpus_names_the_file_and_byte(tmp_path):
    from duolib.data.corpus import load_documents

    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\u00e9 au lait\n".encode("latin-1") * 50)
    with pytest.raises(ValueError, match=r"latin.txt is not UTF-8 text: byte offset 3 \(0xe9\)"):
        load_documents(f"text:{latin}")
    binary = tmp_path / "prog"
    binary.write_bytes(b"ELF\x00\x01text" * 50)
    with pytest.raises(ValueError, match=r"prog holds a NUL byte at byte offset 3: it is a binary file"):
        load_documents(f"text:{binary}")


# ----------------------------------------------------------------------------- 6-7: deleting a check


def test_6_a_missing_manifest_a_missing_final_or_an_unlisted_weights_file_is_an_error(finished_run, cache_dir,
                                                                                        tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "nomanifest")
    (run / "final" / "manifest.json").unlink()
    weights = run / "final" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(RunFolderError, match="final/manifest.json is missing"):
        train(cfg(cache_dir), run)
    assert oracle(run, tmp_path / "o") == 1 and "manifest.json is missing" in error(capsys)
    run = copy_run(finished_run, tmp_path / "nofinal")
    shutil.rmtree(run / "final")
    with pytest.raises(RunFolderError, match="final is missing"):  # was: "already finished (not recomputed)"
        train(cfg(cache_dir), run)
    run = copy_run(finished_run, tmp_path / "extra")
    (run / "summary.json").unlink()
    shutil.rmtree(run / "final")
    shutil.copy(latest_checkpoint(run) / "model.safetensors", latest_checkpoint(run) / "zz-override.safetensors")
    with pytest.raises(ValueError, match="holds zz-override.safetensors, which its manifest.json does not list"):
        train(cfg(cache_dir), run)


def test_7_transformers_from_pretrained_of_final_verifies_the_manifest(finished_run, tmp_path):
    from transformers import AutoModelForCausalLM

    run = copy_run(finished_run, tmp_path / "run")
    config = run / "final" / "config.json"
    original = config.read_text()
    config.write_text(original.replace('"rms_norm_eps": 1e-05', '"rms_norm_eps": 0.001'))
    assert config.read_text() != original
    with pytest.raises(RunFolderError, match="final/config.json has .* bytes, expected|final/config.json does not"):
        AutoModelForCausalLM.from_pretrained(run / "final")
    config.write_text(original)
    AutoModelForCausalLM.from_pretrained(run / "final")  # restored: loads


# ----------------------------------------------------------------------------- 8: other silent cases


def test_8_router_save_is_one_folder_and_a_mixed_router_is_refused(tmp_path):
    import safetensors.torch

    from duolib.config import DuoConfig
    from duolib.model import DuoForCausalLM
    from duolib.router.policy import RouterPolicy, load_router

    model = DuoForCausalLM(DuoConfig.preset("tiny"))
    RouterPolicy.for_model(model, seed=0).save(tmp_path / "a", model)
    RouterPolicy.for_model(model, seed=1, options=("skip", "small", "big")).save(tmp_path / "b", model)
    shutil.copy(tmp_path / "b" / "router.safetensors", tmp_path / "a" / "router.safetensors")  # the mix of a kill
    with pytest.raises(RunFolderError, match="a/router.safetensors has .* bytes, expected|a/router.safetensors does"):
        load_router(tmp_path / "a", model)
    (tmp_path / "b" / "router.safetensors").write_bytes((tmp_path / "b" / "router.safetensors").read_bytes()[:100])
    with pytest.raises(RunFolderError, match="b/router.safetensors has 100 bytes"):  # 16: a truncated file is named
        load_router(tmp_path / "b", model)


def test_8_oracle_summaries_are_checksummed_and_record_the_windows_used(finished_run, tmp_path, capsys):
    from duolib.oracle.runs import read_summary

    out = tmp_path / "o"
    assert main(["oracle", "--model", str(finished_run), "--out", str(out), "--profile", "tiny", "--n-sequences",
                 "100000000", "--seq-len", "16", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    summary = read_summary(out)
    assert 0 < summary["n_sequences"] < 100000000 and f"using {summary['n_sequences']}" in printed
    per_k = next(out.rglob("per_k.csv"))
    per_k.write_text(per_k.read_text().replace("1", "2", 1))  # an edited number
    with pytest.raises(RunFolderError, match="per_k.csv .*does not match|per_k.csv has"):
        read_summary(out)


# ----------------------------------------------------------------------------- 9-10: data loss


def test_9_foreign_folders_with_look_alike_json_are_never_deleted(cache_dir, tmp_path, capsys):
    mine = tmp_path / "mine"
    (mine / "data").mkdir(parents=True)
    (mine / "data" / "raw.csv").write_text("a,b\n")
    (mine / "notes.md").write_text("notes")
    (mine / "summary.json").write_text(json.dumps({"results": {}}))
    assert main(["oracle", "--random-init", "--out", str(mine), *ORACLE]) == 1
    assert "did not write" in error(capsys)
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.csv").write_text("x")
    (other / "config.json").write_text(json.dumps({"identity": {}}))
    assert main(["train", "--profile", "tiny", "--corpus", "synthetic", "--set", f"data={json.dumps(SYNTH)}", "--set",
                 f"cache_dir={cache_dir}", "--overwrite", "--out", str(other), "--threads", "1"]) == 1
    assert "did not write" in error(capsys)
    assert (mine / "data" / "raw.csv").is_file() and (mine / "notes.md").is_file() and (other / "results.csv").is_file()


def test_10_clearing_removes_the_log_last_and_a_lost_log_is_reported(finished_run, cache_dir, tmp_path, monkeypatch):
    import duolib.folders as rf

    run = copy_run(finished_run, tmp_path / "run")
    order = []
    monkeypatch.setattr(rf.shutil, "rmtree", lambda p: order.append(Path(p).name))
    monkeypatch.setattr(rf.Path, "unlink", lambda p, missing_ok=False: order.append(p.name))
    rf.clear(run)
    assert order[-1] == "metrics.jsonl" and "checkpoint" in order  # a kill midway keeps the log of what remains
    monkeypatch.undo()
    (run / "summary.json").unlink()
    shutil.rmtree(run / "final")
    (run / "metrics.jsonl").unlink()  # lost by a kill
    with pytest.warns(UserWarning, match="holds no training records up to step 10"):
        train(cfg(cache_dir), run)


# ----------------------------------------------------------------------------- 11-12: security


def test_11_a_lock_symlink_in_a_received_folder_never_overwrites_its_target(finished_run, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "o"
    assert main(["oracle", "--random-init", "--out", str(out), *ORACLE]) == 0
    (out / LOCK_FILE).unlink()
    (out / LOCK_FILE).symlink_to(victim)
    assert main(["oracle", "--random-init", "--out", str(out), *ORACLE]) == 1
    assert "symbolic link" in error(capsys) and victim.read_text() == "precious"
    run = copy_run(finished_run, tmp_path / "run")
    (run / LOCK_FILE).symlink_to(victim)
    assert oracle(run, tmp_path / "o2") == 1
    assert "symbolic link" in error(capsys) and victim.read_text() == "precious"


def test_12_checkpoint_latest_is_confined_to_the_run(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    elsewhere = copy_run(finished_run, tmp_path / "elsewhere")
    (run / "checkpoint" / "latest").write_text("../../elsewhere/checkpoint/step-00000005")
    assert (run / "checkpoint" / "../../elsewhere/checkpoint/step-00000005").is_dir()
    with pytest.warns(UserWarning, match="names no checkpoint folder of this run"):
        assert latest_checkpoint(run) == run / "checkpoint" / "step-00000010"
    assert elsewhere.is_dir()


# ----------------------------------------------------------------------------- 13-16: clear errors


def test_13_a_full_disk_while_checkpointing_names_the_folder(cache_dir, tmp_path, monkeypatch, capsys):
    def full(obj, f, *a, **kw):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0; "
                           "basic_ios::clear: iostream error")

    monkeypatch.setattr(torch, "save", full)
    run = tmp_path / "run"
    args = ["train", "--profile", "tiny", "--corpus", "synthetic", "--set", f"data={json.dumps(SYNTH)}", "--set",
            f"cache_dir={cache_dir}", "--threads", "1", "--no-progress", "--out", str(run), "--steps", "5",
            "--checkpoint-every", "5", "--eval-every", "5"]
    assert main(args) == 1
    err = error(capsys)
    assert f"could not write the checkpoint {run / 'checkpoint' / 'step-00000005'}" in err and "MB free" in err


def test_14_a_refused_pickle_names_the_file_and_never_suggests_weights_only_false(tmp_path):
    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'ran'}",)

    from duolib.train.checkpoint import load_plain

    path = tmp_path / "optimizer.pt"
    torch.save({"state": Payload()}, path)
    with pytest.raises(ValueError, match="optimizer.pt is not a plain tensor file") as err:
        load_plain(path)
    assert "weights_only=False" not in str(err.value) and not (tmp_path / "ran").exists()


def test_15_a_cuda_device_on_a_cpu_build_is_refused_before_the_folder_exists(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["train", "--profile", "tiny", "--set", "device=cuda", "--out", str(tmp_path / "r")]) == 1
    assert "device='cuda' but this torch build" in error(capsys) and not (tmp_path / "r").exists()


@pytest.mark.parametrize("extra, message", [(["--seed", str(2**64)], "argument --seed: 18446744073709551616 is out of range"),
                                            (["--threads", "abc"], "argument --threads: 'abc' is not a number of threads")])
def test_16_bad_seeds_and_thread_counts_say_what_to_give(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit):
        main(["train", "--profile", "tiny", "--out", str(tmp_path / "r"), *extra])
    assert message in capsys.readouterr().err


def test_16_model_of_an_unfinished_run_says_so(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    (run / "summary.json").unlink()
    shutil.rmtree(run / "final")
    assert oracle(run, tmp_path / "o") == 1
    assert "is not finished (no summary.json, no final/): finish it with `duo train` first" in error(capsys)


def test_16_a_nan_stop_before_any_checkpoint_does_not_claim_one(cache_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, max_norm: torch.tensor(float("nan")))
    with pytest.raises(NonFiniteError, match="no checkpoint had been written yet") as err:
        train(cfg(cache_dir), tmp_path / "run")
    assert "last good checkpoint" not in str(err.value)


def test_16_a_read_only_finished_run_is_returned_without_writing(finished_run, cache_dir, tmp_path, monkeypatch):
    import duolib.train.run_folder as run_folder

    run = copy_run(finished_run, tmp_path / "run")
    (run / LOCK_FILE).touch()
    monkeypatch.setattr(run_folder.os, "access", lambda path, mode: False)  # as for a user without write permission

    def no_writer(*a, **kw):
        raise AssertionError("a finished read-only run needs no writer's lock")

    monkeypatch.setattr(run_folder, "claim", no_writer)
    assert train(cfg(cache_dir), run).skipped


def test_16_more_threads_than_cores_warns():
    from duolib.utils import apply_threads

    before = torch.get_num_threads()
    try:
        with pytest.warns(UserWarning, match=f"threads=1000 but this machine has {os.cpu_count()} CPU core"):
            apply_threads(1000)
    finally:
        torch.set_num_threads(before)
