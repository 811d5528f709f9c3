"""One tokenizer per run: the data of a trained run, tokenised with the tokenizer it was trained with.

A ``duo train`` run folder records its corpus, data options and vocabulary (``config.json``) and keeps
its tokenizer (``tokenizer/``).  Every consumer of a trained model (``duo oracle --model``, ``duo route
--model``, the notebooks, :func:`run_data` in Python) takes both from there: text is never scored with a
tokenizer the model was not trained on.  A model folder that is not a run needs a ``tokenizer.json``
beside its weights; without one it is refused for text corpora.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..runfolder import verify_manifest
from .corpus import Prepared, prepare

CONFIG_FILE, TOKENIZER_DIR, FINAL_DIR = "config.json", "tokenizer", "final"


def find_run(path: str | os.PathLike) -> Path | None:
    """The ``duo train`` run folder of ``path`` (the run folder itself or its ``final/``), or None."""
    path = Path(path)
    for folder in (path, path.parent if path.name == FINAL_DIR else None):
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
    """The folder holding a model's weights (a run's ``final/``), checked against its manifest."""
    path = Path(path)
    folder = path / FINAL_DIR if (path / FINAL_DIR / "config.json").is_file() else path
    if not (folder / "config.json").is_file():
        inside = runs_inside(path)
        hint = (f"; it holds the run folder{'s' * (len(inside) > 1)} {', '.join(map(str, inside))}: give "
                f"{'one of them' if len(inside) > 1 else 'that'} to --model" if inside else "")
        raise ValueError(f"{path} holds no model (no config.json, nor {FINAL_DIR}/config.json){hint or '; give a model folder or a `duo train` run folder'}")
    verify_manifest(folder, f"the model in {folder} is damaged: retrain it (duo train --overwrite) or restore it")
    return folder


def run_data(run_dir: str | os.PathLike, corpus: str | None = None, *, progress: bool = False) -> Prepared:
    """The corpus of run ``run_dir`` with the run's own tokenizer (``run_dir/tokenizer``).

    ``corpus`` (default: the run's) may name another corpus: it is tokenised with the run's tokenizer
    too (and default data options).  The run's ``cache_dir`` holds the token caches."""
    run = find_run(run_dir)
    if run is None:
        raise ValueError(f"{run_dir} is not a `duo train` run folder (no config.json recording its data)")
    record = json.loads((run / CONFIG_FILE).read_text())
    cfg, vocab = record.get("config", {}), record["identity"]["model"]["vocab_size"]
    if not (run / TOKENIZER_DIR / "tokenizer.json").is_file():
        raise ValueError(f"run {run} records no tokenizer ({run / TOKENIZER_DIR} is missing): it was trained on data "
                         f"given in Python; prepare that data yourself with its tokenizer")
    same = corpus is None or corpus == cfg.get("corpus")
    options = dict(cfg.get("data") or {}) if same else {}
    return prepare(cfg.get("corpus") if same else corpus, vocab, cfg.get("cache_dir"), progress=progress,
                   tokenizer=run / TOKENIZER_DIR, **options)


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
