"""Issue 15, items 1-7: one tokenizer per run, safe overwrite, the run-folder lock, finite training,
verified final/ and caches, complete-or-marked outputs, pickle-free resume.  ``tiny`` profile, a small
synthetic corpus in a temporary cache."""

import json
import math
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from duolib.train.checkpoint import latest_checkpoint
from duolib.cli import main
from duolib.folders import RunFolderError, claim
from duolib.manifests import digest
from duolib.train.loop import train
from duolib.train.run_folder import NonFiniteError, load_run
from tiny_runs import SYNTH, tiny


@pytest.fixture(scope="module")
def finished(cache_dir, tmp_path_factory):
    """A finished 10-step run (checkpoints every 5 steps); tests copy it before changing it."""
    run = tmp_path_factory.mktemp("runs") / "run"
    train(tiny(cache_dir, steps=10, eval_every=10, checkpoint_every=5), run)
    return run


def copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def flip(path: Path, at: int = 200) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def big_ppl(run: Path) -> float:
    summary = json.loads((run / "summary.json").read_text())
    return next(r["ppl"] for r in summary["final_eval"] if r["routes"] == "big")


# ----------------------------------------------------------------------------- 1. one tokenizer per run

def test_oracle_and_route_score_with_the_runs_own_tokenizer_and_data(finished, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DUOLIB_CACHE", str(tmp_path / "default_cache"))  # the run's cache_dir must be used
    out = tmp_path / "oracle"
    assert main(["oracle", "--profile", "tiny", "--model", str(finished), "--out", str(out), "--corpus",
                 "synthetic", "--n-sequences", "8",
                 "--seq-len", "64", "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["results"]["synthetic/shared"]["all_big"] == pytest.approx(big_ppl(finished), rel=1e-4)
    assert main(["route", "--profile", "tiny", "--model", str(finished), "--out", str(tmp_path / "route"),
                 "--steps", "1",
                 "--batch-size", "8", "--seq-len", "64", "--eval-sequences", "8", "--no-progress"]) == 0
    table = pd.read_csv(tmp_path / "route" / "eval.csv")
    assert table[table.method == "all big"].ppl.item() == pytest.approx(big_ppl(finished), rel=1e-4)
    assert not (tmp_path / "default_cache").exists()  # nothing tokenised with another tokenizer


def test_python_api_loads_the_runs_data_and_a_bare_model_folder_without_tokenizer_is_refused(finished, tmp_path,
                                                                                            capsys):
    from duolib.data.run_data import run_data
    from duolib.data.tokenizer import tokenizer_hash

    data = run_data(finished)
    assert tokenizer_hash(data.tokenizer_path) == tokenizer_hash(finished / "tokenizer")
    assert data.corpus == "synthetic" and len(data.train.tokens) > 0
    bare = copy_run(finished / "final", tmp_path / "bare")
    for f in bare.glob("tokenizer*"):  # a model folder that carries no tokenizer
        f.unlink()
    (bare / "manifest.json").unlink()
    assert main(["oracle", "--profile", "tiny", "--model", str(bare), "--out", str(tmp_path / "o"),
                 "--corpus", "synthetic"]) == 1
    assert "without its tokenizer" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 2. safe overwrite

def test_overwrite_and_no_resume_refuse_a_foreign_folder_and_leave_it_untouched(cache_dir, tmp_path, capsys):
    folder = tmp_path / "thesis"
    (folder / "sub").mkdir(parents=True)
    (folder / "thesis.txt").write_text("chapter 1")
    (folder / "sub" / "data.csv").write_text("a\n1\n")
    with pytest.raises(RunFolderError, match="thesis holds files that duolib did not write"):
        train(tiny(cache_dir, steps=2), folder, overwrite=True)
    args = ["train", "--profile", "tiny", "--corpus", "synthetic", "--set", f"data={json.dumps(SYNTH)}", "--set",
            f"cache_dir={cache_dir}", "--steps", "2", "--no-progress", "--out", str(folder), "--no-resume"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("duo: error: ") and "thesis holds files that duolib did not write" in err
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == ["sub", "sub/data.csv", "thesis.txt"]


def test_overwrite_replaces_a_run_folder(finished, cache_dir, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    result = train(tiny(cache_dir, steps=4, eval_every=4), run, overwrite=True)
    assert result.summary["steps"] == 4 and not (run / "checkpoint" / "step-00000010").exists()


# ----------------------------------------------------------------------------- 3. one writer per folder

def test_a_second_writer_gets_one_clear_error_naming_the_holder(finished, cache_dir, tmp_path, capsys):
    import os

    run = copy_run(finished, tmp_path / "run")
    (run / "summary.json").unlink()
    with claim(run, "duo train"):
        with pytest.raises(RunFolderError, match=f"in use by pid {os.getpid()} \\(duo train"):
            train(tiny(cache_dir, steps=10, eval_every=10, checkpoint_every=5), run)
    assert main(["oracle", "--profile", "tiny", "--random-init", "--out", str(run),
                 "--no-progress"]) == 1  # never clears a training run
    assert "is a `duo train` folder; give `duo oracle` a folder of its own" in capsys.readouterr().err
    assert (run / "final" / "model.safetensors").is_file()
    scores = tmp_path / "scores"
    with claim(scores, "duo oracle"):
        assert main(["oracle", "--profile", "tiny", "--random-init", "--out", str(scores), "--no-progress"]) == 1
        assert f"in use by pid {os.getpid()}" in capsys.readouterr().err
    out = tmp_path / "routed"
    with claim(out, "duo route"):
        assert main(["route", "--profile", "tiny", "--random-init", "--out", str(out), "--steps", "1",
                     "--no-progress"]) == 1
        assert "is in use by pid" in capsys.readouterr().err
    from duolib.book.pipeline import run_pipeline

    book = tmp_path / "book"
    with claim(book, "duo book"):
        with pytest.raises(RunFolderError, match="is in use by pid"):
            run_pipeline("tiny", run_dir=book, book_dir=tmp_path / "html", only=["01_data"])


# ----------------------------------------------------------------------------- 4. finite values

def test_non_finite_hyper_parameters_are_refused(cache_dir, tmp_path, capsys):
    assert main(["train", "--profile", "tiny", "--lr", "inf", "--out", str(tmp_path / "r")]) == 1
    assert "lr=inf is not a finite number" in capsys.readouterr().err
    assert main(["route", "--profile", "tiny", "--random-init", "--out", str(tmp_path / "q"), "--lr", "nan",
                 "--no-progress"]) == 1
    assert "lr=nan must be a finite positive number" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not (tmp_path / "q").exists()


def test_a_non_finite_gradient_stops_the_run_keeping_the_last_good_checkpoint(cache_dir, tmp_path, monkeypatch):
    real, calls = torch.nn.utils.clip_grad_norm_, []

    def clip(params, max_norm):
        calls.append(1)
        norm = real(params, max_norm)
        return torch.tensor(math.nan) if len(calls) == 8 else norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteError, match="stopped at step 8: loss .*gradient norm nan .*last good checkpoint"):
        train(tiny(cache_dir, steps=10, eval_every=10, checkpoint_every=5), run)
    assert latest_checkpoint(run).name == "step-00000005"
    assert not (run / "final").exists() and not (run / "summary.json").exists()


# ----------------------------------------------------------------------------- 5. verified files

def test_a_flipped_byte_in_final_is_refused_naming_the_file(finished, cache_dir, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    flip(run / "final" / "model.safetensors", 4000)
    cfg = tiny(cache_dir, steps=10, eval_every=10, checkpoint_every=5)
    with pytest.raises(RunFolderError, match=r"final/model.safetensors does not match its recorded sha256"):
        train(cfg, run)  # not "already finished"
    with pytest.raises(RunFolderError, match="model.safetensors does not match"):
        load_run(run)
    assert main(["oracle", "--profile", "tiny", "--model", str(run), "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 1
    assert "model.safetensors does not match its recorded sha256" in capsys.readouterr().err


def test_a_damaged_token_cache_is_detected_and_rebuilt(cache_dir, tmp_path):
    import shutil

    from duolib.data.corpus import prepare

    cache = tmp_path / "cache"
    shutil.copytree(cache_dir, cache)
    good = prepare("synthetic", 512, cache, synthetic=SYNTH["synthetic"], progress=False)
    want = np.array(good.train.tokens)
    path = max((cache / "streams").glob("*.tokens.npy"), key=lambda p: p.stat().st_size)  # the training stream
    flip(path, 1000)
    with pytest.warns(UserWarning, match=r"token cache rebuilt: .*tokens.npy does not match its recorded sha256"):
        again = prepare("synthetic", 512, cache, synthetic=SYNTH["synthetic"], progress=False)
    np.testing.assert_array_equal(np.array(again.train.tokens), want)
    path.write_bytes(path.read_bytes()[:-10])  # truncated: no more "mmap length is greater than file size"
    with pytest.warns(UserWarning, match=r"tokens.npy has \d+ bytes, expected"):
        again = prepare("synthetic", 512, cache, synthetic=SYNTH["synthetic"], progress=False)
    np.testing.assert_array_equal(np.array(again.train.tokens), want)


def test_a_damaged_notebook_matrix_cache_is_recomputed(tmp_path):
    from duolib.config import DuoConfig
    from duolib.model import DuoForCausalLM
    from duolib.book.analysis import cached_loss_matrix

    torch.manual_seed(0)
    model = DuoForCausalLM(DuoConfig.preset("tiny")).eval()
    ids = torch.randint(0, 512, (2, 12))
    first = cached_loss_matrix(model, ids, tmp_path)
    (path,) = (tmp_path / "oracle").glob("matrix-*.pt")
    raw = bytearray(path.read_bytes())
    at = raw.index(first.losses.numpy().tobytes()[:16])  # inside the stored losses
    raw[at + 3] ^= 0x40
    path.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="cache entry rebuilt: .*matrix-shared-.*does not match"):
        again = cached_loss_matrix(model, ids, tmp_path)
    assert torch.equal(again.losses, first.losses)


# ----------------------------------------------------------------------------- 6. complete outputs

def test_an_interrupted_oracle_rerun_leaves_no_summary_and_no_mixed_results(tmp_path, monkeypatch, capsys):
    import duolib.oracle.runs as oracle_io
    from duolib.oracle.runs import read_summary

    out = tmp_path / "o"
    args = ["oracle", "--profile", "tiny", "--random-init", "--out", str(out), "--semantics", "both", "--no-progress"]
    assert main(args + ["--seed", "1"]) == 0
    assert read_summary(out)["seed"] == 1
    real, calls = oracle_io.write_oracle_tables, []

    def killed_after_one(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # stands for a kill
        return real(*a, **kw)

    monkeypatch.setattr(oracle_io, "write_oracle_tables", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        main(args + ["--seed", "2"])
    assert not (out / "summary.json").exists() and not (out / "random" / "fixed-context").exists()
    with pytest.raises(ValueError, match="did not finish; rerun it"):
        read_summary(out)


def test_router_save_is_atomic(tmp_path, monkeypatch):
    import safetensors.torch

    from duolib.config import DuoConfig
    from duolib.model import DuoForCausalLM
    from duolib.router.policy import RouterPolicy, load_router

    model = DuoForCausalLM(DuoConfig.preset("tiny"))
    RouterPolicy.for_model(model, seed=0).save(tmp_path / "r", model)
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()}

    def dies_midway(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError(28, "No space left on device", filename)

    monkeypatch.setattr(safetensors.torch, "save_file", dies_midway)
    with pytest.raises(RunFolderError, match=r"could not write the router .*r \(No space left on device"):
        RouterPolicy.for_model(model, seed=1).save(tmp_path / "r", model)
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()} == before
    monkeypatch.undo()
    load_router(tmp_path / "r", model)


# ----------------------------------------------------------------------------- 7. no pickle on resume

class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_pickle_payload_in_a_resume_state_does_not_run(finished, cache_dir, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    (run / "summary.json").unlink()  # as if killed after its last checkpoint
    ckpt = latest_checkpoint(run)
    assert (ckpt / "trainer_state.json").is_file() and (ckpt / "rng.safetensors").is_file()
    assert not (ckpt / "trainer_state.pt").exists()
    marker = tmp_path / "pwned"
    (ckpt / "trainer_state.json").unlink()  # an older-format checkpoint received from someone else
    (ckpt / "rng.safetensors").unlink()
    (ckpt / "trainer_state.pt").write_bytes(pickle.dumps({"step": 10, "rng": _Payload(marker)}))
    manifest = json.loads((ckpt / "manifest.json").read_text())
    files = {k: v for k, v in manifest["files"].items() if k not in ("trainer_state.json", "rng.safetensors")}
    files["trainer_state.pt"] = {k: digest(ckpt / "trainer_state.pt")[k] for k in ("size", "sha256")}
    older = {k: v for k, v in manifest.items() if k != "checksum"}  # older manifests carry no checksum
    (ckpt / "manifest.json").write_text(json.dumps({**older, "files": files}))
    with pytest.raises(ValueError, match="holds trainer_state.pt, the trainer state of an earlier release .*duo migrate"):
        train(tiny(cache_dir, steps=10, eval_every=10, checkpoint_every=5), run)  # never unpickled on resume
    assert main(["migrate", str(run)]) != 0  # read only with weights_only: the payload is refused, nothing converted
    assert "trainer_state.pt is not a plain trainer state" in capsys.readouterr().err
    assert not marker.exists() and (ckpt / "trainer_state.pt").is_file()


def legacy_trainer_state(ckpt) -> dict:
    """A checkpoint's trainer state in the format of an earlier release (one pickle with the RNG states)."""
    from safetensors.torch import load_file

    state = json.loads((ckpt / "trainer_state.json").read_text())
    t = load_file(str(ckpt / "rng.safetensors"))
    n, py = state.pop("numpy"), state.pop("python")
    state.pop("cuda_devices", None)
    rng = {"torch": t["torch"], "cuda": None,
           "numpy": (n["algorithm"], t["numpy"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]),
           "python": (py["version"], tuple(int(v) for v in t["python"].tolist()), py["gauss_next"])}
    return {**state, "rng": rng}


def test_duo_migrate_rewrites_an_older_checkpoint_and_the_run_resumes_to_the_same_weights(finished, cache_dir,
                                                                                          tmp_path):
    from safetensors.torch import load_file

    run = copy_run(finished, tmp_path / "run")
    for name in ("summary.json", "final"):
        shutil.rmtree(run / name) if (run / name).is_dir() else (run / name).unlink()
    steps = sorted((run / "checkpoint").glob("step-*"))
    for later in steps[1:]:
        shutil.rmtree(later)  # killed after its first checkpoint
    ckpt = steps[0]
    (run / "checkpoint" / "latest").write_text(ckpt.name)
    torch.save(legacy_trainer_state(ckpt), ckpt / "trainer_state.pt")
    for name in ("trainer_state.json", "rng.safetensors"):
        (ckpt / name).unlink()
    manifest = json.loads((ckpt / "manifest.json").read_text())
    files = {k: v for k, v in manifest["files"].items() if k not in ("trainer_state.json", "rng.safetensors")}
    files["trainer_state.pt"] = {k: digest(ckpt / "trainer_state.pt")[k] for k in ("size", "sha256")}
    (ckpt / "manifest.json").write_text(json.dumps({"step": manifest["step"], "files": files}))
    assert main(["migrate", str(run)]) == 0
    assert not (ckpt / "trainer_state.pt").exists() and (ckpt / "trainer_state.json").is_file()
    train(tiny(cache_dir, steps=10, eval_every=10, checkpoint_every=5), run)
    ours, theirs = (load_file(str(r / "final" / "model.safetensors")) for r in (run, finished))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)  # resume = uninterrupted
