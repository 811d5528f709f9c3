"""Issue 15, items 8-10: bad values rejected, one-line ``duo: error:`` messages naming the file or value,
damaged run files named or recovered, and the smaller items (single-file text corpus, stale temporaries,
FixedRoutes / token ids / empty batches, extending a finished run).  ``tiny`` profile."""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from duolib.config import DuoConfig
from duolib.model import DuoForCausalLM
from duolib.train.checkpoint import latest_checkpoint
from duolib.cli import main
from duolib.routing import BIG, FixedRoutes
from duolib.train.config import TrainConfig
from duolib.train.loop import train
from duolib.train.run_folder import read_metrics
from duolib.utils import json_hash
from tiny_runs import SYNTH, tiny


def train_args(cache_dir, run, *extra) -> list[str]:
    return ["train", "--profile", "tiny", "--corpus", "synthetic", "--set", f"data={json.dumps(SYNTH)}",
            "--set", f"cache_dir={cache_dir}", "--threads", "1", "--no-progress", "--out", str(run), *extra]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    last = err.rstrip("\n").split("\n")[-1].split("\r")[-1]  # after any progress bar of model loading
    assert last.startswith("duo: error: ") and "Traceback" not in err, err
    return last


@pytest.fixture(scope="module")
def finished(cache_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "run"
    train(tiny(cache_dir, steps=10, eval_every=10, checkpoint_every=5), run)
    return run


def unfinished(finished, dst) -> Path:
    shutil.copytree(finished, dst, ignore=shutil.ignore_patterns(".lock"))
    (dst / "summary.json").unlink()
    shutil.rmtree(dst / "final")
    shutil.rmtree(latest_checkpoint(dst))  # killed between its two checkpoints
    (dst / "checkpoint" / "latest").write_text("step-00000005")
    return dst


# ----------------------------------------------------------------------------- 8. bad values

@pytest.mark.parametrize("extra, message", [
    (["--set", "steps=true"], "steps=True (bool) must be int"),
    (["--set", 'model={"nosuch": 1}'], "unknown model field(s) ['nosuch']"),
    (["--set", 'data={"nosuch": 1}'], "unknown data option(s) ['nosuch']"),
    (["--set", "lr=fast"], "lr='fast' (str) must be int or float"),
    (["--threads", "-1"], "threads=-1: give a positive number of threads"),
    (["--steps", "0"], "steps=0 must be a positive integer"),
])
def test_duo_train_rejects_bad_values(cache_dir, tmp_path, capsys, extra, message):
    assert main(train_args(cache_dir, tmp_path / "r", *extra)) == 1
    assert message in one_line_error(capsys)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command, message", [
    (["oracle", "--profile", "tiny", "--random-init", "--n-sequences", "0"], "n_sequences=0 must be a whole number >= 1"),
    (["oracle", "--profile", "tiny", "--random-init", "--seq-len", "0"], "seq_len=0 must be a whole number in 2..128"),
    (["route", "--profile", "tiny", "--random-init", "--batch-size", "0"], "batch_size=0 must be a whole number >= 1"),
    (["route", "--profile", "tiny", "--random-init", "--steps", "0"], "steps=0 must be a whole number >= 1"),
])
def test_oracle_and_route_reject_zero_sizes(tmp_path, capsys, command, message):
    assert main(command + ["--out", str(tmp_path / "o"), "--no-progress"]) == 1
    assert message in one_line_error(capsys)


# ----------------------------------------------------------------------------- 9. clear errors

def test_damaged_run_files_are_named_or_recovered(finished, cache_dir, tmp_path, capsys):
    cfg = tiny(cache_dir, steps=10, eval_every=10, checkpoint_every=5)
    run = unfinished(finished, tmp_path / "latest")
    (run / "checkpoint" / "latest").write_bytes(b"\xff\xfe garbage")
    with pytest.warns(UserWarning, match="checkpoint/latest is unreadable"):
        assert train(cfg, run).summary["steps"] == 10
    run = unfinished(finished, tmp_path / "metrics")
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(b'{"kind": "train", "st\xff\xfe\n')
    with pytest.warns(UserWarning, match=r"metrics.jsonl: skipped 1 unreadable line\(s\)"):
        train(cfg, run)
    assert list(read_metrics(run).query("kind == 'train'").step) == [1, 5, 10]
    run = unfinished(finished, tmp_path / "summary")
    shutil.copytree(finished / "final", run / "final")
    (run / "summary.json").write_text('{"identity_hash": ')
    with pytest.warns(UserWarning, match=r"summary.json \(the run's summary\) is unreadable"):
        assert not train(cfg, run).skipped
    run = unfinished(finished, tmp_path / "config")
    (run / "config.json").write_bytes(b"\x00\x01")
    assert main(train_args(cache_dir, run, "--steps", "10", "--checkpoint-every", "5", "--eval-every", "10")) == 1
    assert "config.json (the run's config) is unreadable" in one_line_error(capsys)


def test_a_truncated_run_tokenizer_is_named(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run, ignore=shutil.ignore_patterns(".lock"))
    tok = run / "tokenizer" / "tokenizer.json"
    tok.write_bytes(tok.read_bytes()[:500])
    assert main(["oracle", "--profile", "tiny", "--model", str(run), "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 1
    assert "tokenizer/tokenizer.json differs from the checked copy" in one_line_error(capsys)


def test_paths_and_disks_give_one_line_errors(cache_dir, tmp_path, capsys, monkeypatch):
    missing = tmp_path / "nowhere.txt"
    assert main(train_args(cache_dir, tmp_path / "r", "--corpus", f"text:{missing}")) == 1
    assert f"text corpus path '{missing}' does not exist" in one_line_error(capsys)
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(train_args(cache_dir, afile, "--steps", "2")) == 1
    assert "afile is a file, not a folder" in one_line_error(capsys)
    assert main(["oracle", "--profile", "tiny", "--random-init", "--out", str(afile), "--no-progress"]) == 1
    assert "afile is a file, not a folder" in one_line_error(capsys)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "readonly"
        locked.mkdir(mode=0o500)
        assert main(train_args(cache_dir, locked / "run", "--steps", "2")) == 1
        assert "readonly/run" in one_line_error(capsys)

    def full_disk(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "r2" / "metrics.jsonl"))

    monkeypatch.setattr("duolib.train.run_folder.save_checkpoint", full_disk)
    assert main(train_args(cache_dir, tmp_path / "r2", "--steps", "2", "--checkpoint-every", "1")) == 1
    assert "r2/metrics.jsonl: No space left on device; free some disk space" in one_line_error(capsys)


def test_hf_corpus_without_datasets_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    assert main(["oracle", "--profile", "tiny", "--random-init", "--corpus", "hf:wikitext", "--out",
                 str(tmp_path / "o"), "--no-progress"]) == 1
    assert "hf: corpora need the datasets library" in one_line_error(capsys)


# ----------------------------------------------------------------------------- 10. smaller items

def test_a_single_text_file_is_split_into_blocks_and_trains(tmp_path):
    from duolib.data.corpus import load_documents, prepare

    book = tmp_path / "book.txt"
    book.write_text("".join(f"Line {i} of a long single-file corpus, with some words in it.\n" for i in range(3000)))
    docs = load_documents(f"text:{book}")
    assert len(docs) > 2 and "".join(d.text for d in docs) == book.read_text()
    data = prepare(f"text:{book}", 512, tmp_path / "cache", progress=False)
    assert len(data.train.tokens) > 0 and len(data.holdout["text"].tokens) > 0
    cfg = TrainConfig.from_profile("tiny", corpus=f"text:{book}", cache_dir=str(tmp_path / "cache"), steps=2,
                                   eval_every=2, eval_sequences=2, progress=False, threads=1)
    assert train(cfg, tmp_path / "run").summary["steps"] == 2


def test_a_killed_cache_write_leaves_no_temporary_behind(cache_dir, tmp_path):
    from duolib.data.corpus import prepare

    cache = tmp_path / "cache"
    shutil.copytree(cache_dir, cache)
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    stray = cache / "streams" / f".0123.tokens.npy.{dead}.tmp"
    stray.write_bytes(b"half")
    next((cache / "streams").glob("*.json")).unlink()  # an entry to rebuild: its writer cleans the folder
    prepare("synthetic", 512, cache, synthetic=SYNTH["synthetic"], progress=False)
    assert not stray.exists()


def test_fixed_routes_token_ids_and_empty_batches_are_clear_errors():
    model = DuoForCausalLM(DuoConfig.preset("tiny")).eval()
    ids = torch.randint(0, 512, (2, 8))
    with pytest.raises(ValueError, match="FixedRoutes pattern 'BB' has 2 routes but the model has 4 layers"):
        model(ids, routes=FixedRoutes([BIG, BIG]))
    with pytest.raises(ValueError, match="token id 512, outside the model's vocabulary 0..511"):
        model(torch.full((1, 4), 512))
    with pytest.raises(ValueError, match="token id -1"):
        model(torch.full((1, 4), -1))
    with pytest.raises(ValueError, match=r"input_ids is empty \(shape \(0, 8\)\)"):
        model(torch.zeros((0, 8), dtype=torch.long))
    assert model(ids, routes=FixedRoutes([BIG] * 4)).logits.shape == (2, 8, 512)


def test_more_steps_continue_a_finished_run_from_its_last_checkpoint(finished, cache_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run, ignore=shutil.ignore_patterns(".lock"))
    before = read_metrics(run)
    assert main(train_args(cache_dir, run, "--steps", "14", "--eval-every", "10", "--checkpoint-every", "5")) == 0
    assert f"{run} extended from 10 to 14 steps" in capsys.readouterr().out  # issue 23: it says so
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 14 and summary["extended"] == [{"from_steps": 10, "at_step": 10}]
    record = json.loads((run / "config.json").read_text())  # and its identity records it
    assert record["identity"]["extended"] == summary["extended"]
    assert summary["identity_hash"] == record["identity_hash"] == json_hash(record["identity"])
    fresh = {k: v for k, v in record["identity"].items() if k != "extended"}
    assert summary["identity_hash"] != json_hash(fresh)  # not the identity of a fresh 14-step run
    after = read_metrics(run)
    assert after[after.step <= 10].reset_index(drop=True).equals(before)  # history kept
    assert list(after.query("kind == 'train'").step) == [1, 5, 10, 14] and latest_checkpoint(run).name.endswith("14")
    again = train(tiny(cache_dir, steps=14, eval_every=10, checkpoint_every=5), run)
    assert again.skipped  # the extended run now counts as finished
    with pytest.raises(ValueError, match="different config"):  # any other change still needs a new folder
        train(tiny(cache_dir, steps=20, lr=1e-3, eval_every=10, checkpoint_every=5), run)
    assert np.isfinite(summary["final_eval"][0]["ppl"])


def test_an_interrupted_extension_resumes_to_the_same_result(finished, cache_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from duolib.train.run_folder import NonFiniteError

    cfg = tiny(cache_dir, steps=14, eval_every=10, checkpoint_every=5)
    whole = train(cfg, shutil.copytree(finished, tmp_path / "whole", ignore=shutil.ignore_patterns(".lock")))
    run = shutil.copytree(finished, tmp_path / "run", ignore=shutil.ignore_patterns(".lock"))
    real, calls = torch.nn.utils.clip_grad_norm_, []

    def dies_at_step_12(params, max_norm):
        calls.append(1)
        return torch.tensor(float("nan")) if len(calls) == 2 else real(params, max_norm)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", dies_at_step_12)
    with pytest.raises(NonFiniteError, match="step 12"):
        train(cfg, run)
    assert not (run / "summary.json").exists()  # the 10-step summary no longer describes the folder
    monkeypatch.undo()
    resumed = train(cfg, run)
    assert resumed.summary["extended"] == [{"from_steps": 10, "at_step": 10}]
    a, b = load_file(run / "final" / "model.safetensors"), load_file(whole.run_dir / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
