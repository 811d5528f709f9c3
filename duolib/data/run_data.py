"""One tokenizer per run: the data of a trained run, tokenised with the tokenizer it was trained with.

A ``duo train`` run folder records its corpus, data options and vocabulary (``config.json``) and keeps
its tokenizer (``tokenizer/``).  Every consumer of a trained model (``duo oracle --model``, ``duo route
--model``, the notebooks, :func:`run_data` in Python) takes both from there: text is never scored with a
tokenizer the model was not trained on.  A model folder that is not a run needs a ``tokenizer.json``
beside its weights; without one it is refused for text corpora.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from ..folders import RunFolderError, folder_kind, reading
from ..manifests import mismatch, verify_manifest
from ..utils import json_hash, token_array
from .corpus import Prepared, prepare

# the names of a run folder's files (duolib.train.run_folder writes them)
CONFIG_FILE, TOKENIZER_DIR, FINAL_DIR, SUMMARY_FILE = "config.json", "tokenizer", "final", "summary.json"
METRICS_FILE = "metrics.jsonl"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def data_fingerprint(data) -> str:
    """Identity of the training data: the streams' cache metadata (corpus, data options, the tokenizer's
    sha256), else a hash of the token arrays."""
    parts = {}
    for name, s in [("train", data.train)] + sorted(getattr(data, "holdout", {}).items()):
        meta = getattr(s, "meta", None)
        if meta:
            parts[name] = {k: v for k, v in meta.items() if k != "split"} | {"split": meta.get("split")}
        else:
            parts[name] = hashlib.sha256(np.ascontiguousarray(token_array(s)).tobytes()).hexdigest()
    return json_hash(parts)


def _damaged(path: Path, why: str) -> RunFolderError:
    return RunFolderError(f"{path} {why}; the run's files no longer agree with its identity: restore the run "
                          f"folder from a copy, or retrain it (duo train --overwrite)")


def verify_run(run: str | os.PathLike, finished: bool = True) -> dict:
    """The record of run folder ``run`` (its config.json), checked end to end before anything uses it:
    the identity matches its recorded ``identity_hash``; the summary (``finished``: required) names the
    same identity; metrics.jsonl matches the digest the summary recorded; ``final/`` matches its manifest; every file of ``tokenizer/`` equals its checked copy
    in ``final/``.  RunFolderError naming the first file that does not agree."""
    run = Path(run)
    try:
        record = json.loads((run / CONFIG_FILE).read_bytes().decode("utf-8"))
        ident, ident_hash = record["identity"], record["identity_hash"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise _damaged(run / CONFIG_FILE, "is missing or unreadable") from None
    if not isinstance(ident, dict) or json_hash(ident) != ident_hash:
        raise _damaged(run / CONFIG_FILE, "holds an identity that does not match its identity_hash (edited)")
    summary_path = run / SUMMARY_FILE
    if not summary_path.is_file():
        if finished:
            raise RunFolderError(f"run {run} is not finished (no {SUMMARY_FILE}, no {FINAL_DIR}/): finish it with "
                                 f"`duo train` first")
        return record
    try:
        summary = json.loads(summary_path.read_bytes().decode("utf-8"))
        summary_hash = summary["identity_hash"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise _damaged(summary_path, "is unreadable") from None
    if summary.get("checksum", summary_checksum(summary)) != summary_checksum(summary):  # none: an older release's
        raise _damaged(summary_path, "does not match its checksum (edited or damaged)")
    if summary_hash != ident_hash:
        raise _damaged(summary_path, f"names identity {str(summary_hash)[:12]}, but {run / CONFIG_FILE} "
                                     f"records {ident_hash[:12]}")
    if "metrics" in summary:  # the finished log's digest (runs of earlier releases recorded none)
        why = mismatch(run / METRICS_FILE, summary["metrics"])
        if why:
            raise _damaged(run / METRICS_FILE, f"no longer matches the digest its summary recorded ({why})")
    final = run / FINAL_DIR
    if not final.is_dir():
        raise _damaged(final, "is missing (the run's summary says it finished)")
    verify_manifest(final, f"the trained model in {final} is damaged: retrain it (duo train --overwrite) or "
                           f"restore the folder from a copy")
    tok = run / TOKENIZER_DIR
    if tok.is_symlink() or (tok.exists() and not tok.is_dir()):
        raise _damaged(tok, "is not a folder (duolib writes no link)")
    if tok.is_dir() or (final / "tokenizer.json").is_file():
        present = {p.name for p in tok.iterdir()} if tok.is_dir() else set()
        for name in sorted(present | {n for n in TOKENIZER_FILES if (final / n).is_file()}):
            p, ref = tok / name, final / name
            if p.is_symlink() or not p.is_file():
                raise _damaged(p, "is missing or not a plain file")
            if ref.is_file() and p.read_bytes() != ref.read_bytes():
                raise _damaged(p, f"differs from the checked copy {ref}")
    return record


def summary_checksum(summary: dict) -> str:
    """The checksum a run's summary.json carries: the sha256 of everything else it holds."""
    return json_hash({k: v for k, v in summary.items() if k != "checksum"})


@contextlib.contextmanager
def reading_model(path: str | os.PathLike | None) -> Iterator[Path | None]:
    """Hold the shared lock of the run folder of ``path`` (a run or its ``final/``) while a consumer loads
    its model, tokenizer and config, so a ``duo train --overwrite`` cannot replace them in between."""
    run = find_run(path) if path is not None else None
    with reading(run) if run is not None else contextlib.nullcontext():
        yield run


def find_run(path: str | os.PathLike) -> Path | None:
    """The ``duo train`` run folder of ``path`` (the run folder itself or its ``final/``), or None."""
    path = Path(path)
    for folder in (path, path.parent if path.name == FINAL_DIR else None):
        if folder is not None and not (folder / CONFIG_FILE).is_file() and folder_kind(folder) == "duo train":
            raise _damaged(folder / CONFIG_FILE, "is missing (the folder is a `duo train` run)")
        if folder is not None and (folder / CONFIG_FILE).is_file():
            try:
                record = json.loads((folder / CONFIG_FILE).read_bytes().decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise ValueError(f"{folder / CONFIG_FILE} (the run's config) is unreadable; retrain the run "
                                 f"(duo train --overwrite) or restore the file") from None
            if isinstance(record, dict) and "identity" in record:
                return folder
    return None


def recorded_profile(path: str | os.PathLike) -> str | None:
    """The profile the `duo train` run of ``path`` (the run folder or its ``final/``) was trained with; None
    for a model folder that is not a run."""
    run = find_run(path)
    if run is None:
        return None
    profile = json.loads((run / CONFIG_FILE).read_text()).get("config", {}).get("profile")
    return profile if isinstance(profile, str) else None


def profile_for_model(model: str | os.PathLike | None, given: str | None, known: tuple[str, ...],
                      command: str) -> str:
    """The profile of a command given ``--model model`` and ``--profile given``: ``given`` if any; else the one
    the `duo train` run was trained with (its sizes and budgets fit that model: the default profile's
    12-layer budgets do not fit a tiny run); else ``default``."""
    if given is not None or not model:
        return given or "default"
    profile = recorded_profile(model)
    if profile is None:
        return "default"
    if profile not in known:
        raise ValueError(f"{model} was trained with profile {profile!r}, which {command} does not know; give "
                         f"--profile ({', '.join(known)})")
    if profile != "default":
        print(f"{command}: profile {profile} (recorded by the run {model}; --profile overrides it)")
    return profile


def runs_inside(path: Path) -> list[Path]:
    """The `duo train` run folders directly inside ``path`` (a book's run folder holds ``stage1``, ...)."""
    return [p for p in sorted(path.iterdir()) if p.is_dir() and find_run(p)] if path.is_dir() else []


def model_folder(path: str | os.PathLike) -> Path:
    """The folder holding a model's weights (a run's ``final/``), checked against its manifest; a run
    folder is checked end to end first (:func:`verify_run`)."""
    path = Path(path)
    run = find_run(path)
    if run is not None:
        verify_run(run)
        return run / FINAL_DIR
    folder = path / FINAL_DIR if (path / FINAL_DIR / "config.json").is_file() else path
    if not (folder / "config.json").is_file():
        inside = runs_inside(path)
        hint = (f"; it holds the run folder{'s' * (len(inside) > 1)} {', '.join(map(str, inside))}: give "
                f"{'one of them' if len(inside) > 1 else 'that'} to --model" if inside else
                "; give a model folder or a `duo train` run folder")
        raise ValueError(f"{path} holds no model (no config.json, nor {FINAL_DIR}/config.json){hint}")
    # not a run: a plain save_pretrained folder has no manifest; one that has it is checked
    verify_manifest(folder, f"the model in {folder} is damaged: retrain it (duo train --overwrite) or restore it",
                    required=False)
    return folder


def run_data(run_dir: str | os.PathLike, corpus: str | None = None, *, progress: bool = False) -> Prepared:
    """The corpus of run ``run_dir`` with the run's own tokenizer (``run_dir/tokenizer``).

    ``corpus`` (default: the run's) may name another corpus: it is tokenised with the run's tokenizer
    too (and default data options).  The run's ``cache_dir`` holds the token caches."""
    run = find_run(run_dir)
    if run is None:
        raise ValueError(f"{run_dir} is not a `duo train` run folder (no config.json recording its data)")
    record = verify_run(run)
    cfg, vocab = record.get("config", {}), record["identity"]["model"]["vocab_size"]
    if not (run / TOKENIZER_DIR / "tokenizer.json").is_file():
        raise ValueError(f"run {run} records no tokenizer ({run / TOKENIZER_DIR} is missing): it was trained on data "
                         f"given in Python; prepare that data yourself with its tokenizer")
    same = corpus is None or corpus == cfg.get("corpus")
    options = dict(cfg.get("data") or {}) if same else {}
    prep = prepare(cfg.get("corpus") if same else corpus, vocab, cfg.get("cache_dir"), progress=progress,
                   tokenizer=run / TOKENIZER_DIR, **options)
    if same and data_fingerprint(prep) != record["identity"]["data"]:
        # the corpus, its data options (config.json's "config") or the tokenizer differ from the trained run's
        raise _damaged(run / CONFIG_FILE, "describes data (corpus, data options, tokenizer) that differ from "
                                          "what the run was trained on (its identity's data fingerprint)")
    return prep


def data_for_model(model_path: str | os.PathLike, corpus: str | None, vocab_size: int, *,
                   progress: bool = False) -> Prepared:
    """The data a CLI scores a model with: the run's (:func:`run_data`) when ``model_path`` is a run
    folder, else ``corpus`` tokenised with the tokenizer saved beside the weights (refused without one)."""
    run = find_run(model_path)
    if run is not None:
        return run_data(run, corpus, progress=progress)
    folder = model_folder(model_path)
    if not (folder / "tokenizer.json").is_file():
        raise ValueError(f"{model_path} is a model folder without its tokenizer (no tokenizer.json), so its text "
                         f"could only be tokenised with a guess: give the `duo train` run folder instead (it "
                         f"records its tokenizer), or --corpus random")
    return prepare(corpus or "mix", vocab_size, progress=progress, tokenizer=folder)
