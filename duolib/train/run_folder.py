"""Run folders of Stage-1 training, owned by :class:`RunFolder`: checkpoints and run files, written atomically.

Run folder layout
-----------------
::

    runs/<name>/
        config.json          the run's identity: TrainConfig, resolved model config, data fingerprint
        metrics.jsonl        one JSON object a line: {"kind": "baseline" | "train" | "eval", "step": ...}
        checkpoint/
            latest           name of the newest complete checkpoint (replaced atomically)
            step-00000500/   model.safetensors + config.json (save_pretrained), optimizer.pt,
                             scheduler.pt, trainer_state.json + rng.safetensors (step, tokens seen,
                             RNG states; no pickle), train_config.json, manifest.json (size and
                             sha256 of every file; last)
        final/               a complete HF checkpoint: weights, config with the tokenizer's token ids and
                             auto_map, model code, generation config, tokenizer (``load_run``, or
                             ``pipeline("text-generation", model=".../final")``), and manifest.json
                             (size and sha256 of every file), checked whenever it is loaded or found finished
        tokenizer/           the tokenizer (save_pretrained): every consumer of the run uses this one
                             (``duolib.data.run_data.run_data``, ``duo oracle / route --model RUN``)
        summary.json         written last: the finished run (config hash, final evaluation, baselines)
        .lock, .duolib       the writer lock (``duolib.folders.claim``) and the mark of a duolib folder

Every file and folder is written to a temporary name and renamed into place, so a run killed at any
moment (even with SIGKILL) leaves no half-written file; resuming continues from the newest complete
checkpoint (:mod:`duolib.train.checkpoint`) and, on CPU, ends bitwise identical to an uninterrupted run.  A run folder whose
``summary.json`` matches the requested configuration is not recomputed; a finished run asked for more
``steps`` (nothing else changed) continues from its last checkpoint under the longer schedule, and
records that in ``extended``.  One process writes a run folder at a time; ``--overwrite`` clears only a
folder duolib recognises as its own.  A non-finite loss or gradient stops the run (:class:`NonFiniteError`)
before the optimizer applies it.

A checkpoint is a folder ``checkpoint/step-NNNNNNNN`` holding the model (save_pretrained, one
safetensors file), ``optimizer.pt``, ``scheduler.pt`` (both loaded with ``weights_only=True``),
``trainer_state.json`` (step and counters) with ``rng.safetensors`` (the RNG states: no pickle, so
a run folder received from someone else cannot run code on resume), ``train_config.json`` (the
run's identity) and ``manifest.json`` (size and sha256 of every file, written last).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from ..moves import moved
from ..data.run_data import summary_checksum, verify_run
from ..fileio import atomic_dir, atomic_write_text, write_json
from ..model import DuoForCausalLM
from .model_card import with_section
from ..folders import claim, clear, reading, writing
from ..manifests import digest, verify_manifest, write_manifest
from ..utils import config_differences, json_hash
from .checkpoint import CKPT_DIR, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .distributed import barrier
from .model_files import quiet_hf, save_complete_checkpoint, save_run_tokenizer

#: Names that moved out of this module in this release (an import of one names its new module).
__getattr__ = moved(__name__, {"save_model": "duolib.train.model_files.save_model",
                               "unwrap_model": "duolib.train.model_files.unwrap_model",
                               "fix_tokenizer_config": "duolib.train.model_files.fix_tokenizer_config",
                               "MetricsLog": "duolib.train.run_folder.RunFolder.log"})


METRICS_FILE, CONFIG_FILE, SUMMARY_FILE = "metrics.jsonl", "config.json", "summary.json"
FINAL_DIR, TOKENIZER_DIR = "final", "tokenizer"
#: DuoConfig fields added after the first runs, with their defaults (left out of a run's identity at the default).
LATER_MODEL_FIELDS = {"stage1_route_probs": None}


# ----------------------------------------------------------------------------- run files


def model_fields(config) -> dict:
    """A model config as a dict without the fields that do not define the model."""
    d = config.to_dict()
    for k in ("transformers_version", "architectures", "dtype", "torch_dtype"):
        d.pop(k, None)
    for k, default in LATER_MODEL_FIELDS.items():  # absent from the runs made before them: same identity
        if d.get(k, default) == default:
            d.pop(k, None)
    return d


def identity(cfg: TrainConfig, data_fingerprint: str) -> dict:
    """What defines a run: the semantic config, the resolved model config and the data fingerprint."""
    model = model_fields(cfg.duo_config())
    # JSON round trip: the form config.json / train_config.json hold (string keys, lists)
    return json.loads(json.dumps(dict(train=cfg.semantic(), model=model, data=data_fingerprint), default=str))


def read_metric_records(path: Path) -> list[dict]:
    """The records of metrics.jsonl; a line that is not a JSON object (cut by a kill, or damaged) is
    skipped with a warning naming it."""
    if not path.is_file():
        return []
    out, bad = [], []
    for i, line in enumerate(path.read_bytes().splitlines(), 1):
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            record = None
        if isinstance(record, dict):
            out.append(record)
        elif line.strip():
            bad.append(i)
    if bad:
        warnings.warn(f"{path}: skipped {len(bad)} unreadable line(s) (line {', '.join(map(str, bad[:5]))}"
                      f"{', ...' if len(bad) > 5 else ''}); a resumed run rewrites the file without them", stacklevel=2)
    return out


def kept_metrics(path: Path, resumed_at: int | None) -> list[dict]:
    """The metrics.jsonl records a run resumed at step ``resumed_at`` keeps (those up to that step; a fresh
    run: none), with a warning when the log lost them (a kill while ``--overwrite`` cleared the folder)."""
    if resumed_at is None:
        return []
    keep = [r for r in read_metric_records(path) if r.get("step", 0) <= resumed_at]
    if resumed_at > 0 and not any(r.get("kind") == "train" for r in keep):
        warnings.warn(f"{path} holds no training records up to step {resumed_at}, where this run resumes (the "
                      f"log was lost, e.g. by a kill while the folder was cleared); its log starts at step "
                      f"{resumed_at}: rerun with --overwrite for a complete one", stacklevel=3)
    return keep


def finished_summary(run_dir: Path, ident: dict) -> dict | None:
    """The summary of ``run_dir`` when it is a finished run of identity ``ident`` (also one extended to it),
    after checking the whole run (:func:`duolib.data.run_data.verify_run`); None when it is not."""
    summary = read_run_json(Path(run_dir) / SUMMARY_FILE, "the run's summary", required=False)
    grown = json_hash({**ident, "extended": summary["extended"]}) if (summary or {}).get("extended") else None
    if summary is None or summary.get("identity_hash") not in (json_hash(ident), grown):
        return None
    verify_run(run_dir)  # final/, the tokenizer and config.json, not just the summary
    return summary


def read_run_json(path: Path, what: str, required: bool = True):
    """A JSON object file of the run folder; None if absent (``required=False``), else a ValueError naming it.
    An unreadable optional file (the summary, written last) is ignored with a warning: the run resumes."""
    try:
        value = json.loads(path.read_bytes().decode("utf-8")) if path.is_file() or required else None
    except FileNotFoundError:
        raise ValueError(f"{path} ({what}) is missing; restart the run with --overwrite") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        if not required:
            warnings.warn(f"{path} ({what}) is unreadable ({err}); ignored: the run resumes from its last checkpoint",
                          stacklevel=2)
            return None
        raise ValueError(f"{path} ({what}) is unreadable ({err}); restart the run with --overwrite, or use "
                         f"another run folder") from None
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"{path} ({what}) does not hold a JSON object; restart the run with --overwrite")
    return value


def verify_final(run_dir: str | os.PathLike) -> Path:
    """The ``final/`` folder of a run, checked against its manifest (ValueError naming a bad file)."""
    final = final_model_dir(run_dir)
    if final == Path(run_dir) and (final / SUMMARY_FILE).is_file():  # a finished run folder without its final/
        raise ValueError(f"{Path(run_dir) / FINAL_DIR} is missing: the trained model of {run_dir} was deleted; "
                         f"retrain it (duo train --overwrite) or restore the folder from a copy")
    verify_manifest(final, f"the trained model in {final} is damaged: retrain it (duo train --overwrite) or "
                           f"restore the folder from a copy")
    return final


class NonFiniteError(ValueError):
    """Training produced a non-finite loss, gradient or weight; nothing non-finite is saved."""

    def __init__(self, step: int, loss: float, grad_norm: float, run_dir: Path, what: str = ""):
        what = what or f"loss {loss}, gradient norm {grad_norm}"
        ckpts = Path(run_dir) / CKPT_DIR
        kept = (f"the last good checkpoint is kept in {ckpts}" if any(ckpts.glob("step-*"))
                else "no checkpoint had been written yet")
        super().__init__(f"training {run_dir} stopped at step {step}: {what} (not finite); {kept} and no final/ "
                         f"was written. Lower the learning rate (lr) or raise warmup_steps, then rerun with "
                         f"--overwrite")


def only_longer(existing: dict, ident: dict) -> bool:
    """Whether a requested run differs from an existing one only by more steps."""
    diff = config_differences(existing, ident)
    try:
        longer = ident["train"]["steps"] > existing["train"]["steps"]
    except (KeyError, TypeError):
        return False
    return longer and len(diff) == 1 and diff[0].startswith("train.steps:")


def read_metrics(run_dir: str | os.PathLike):
    """metrics.jsonl of a run as a pandas DataFrame."""
    import pandas as pd

    return pd.DataFrame(read_metric_records(Path(run_dir) / METRICS_FILE))


def update_card(run_dir: str | os.PathLike, section: str) -> Path:
    """Put ``section`` (Markdown with its ``## `` heading, e.g. the book's numbers) into the model card
    ``final/README.md`` of the finished run ``run_dir``, replacing an earlier section of that heading; returns
    the card.  Under the run's writer lock, ``final/`` is checked against its manifest first (a damaged model
    is never re-listed as sound) and its manifest is rewritten after."""
    with claim(Path(run_dir), "duo train"):  # the kind of folder it is, so the lock is the writer's own
        final = verify_final(run_dir)
        path = final / "README.md"
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        new = with_section(text, section)
        if new != text:
            atomic_write_text(path, new)
            write_manifest(final)
    return path


def final_model_dir(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / FINAL_DIR if (path / FINAL_DIR).is_dir() else path


def load_run(run_dir: str | os.PathLike) -> nn.Module:
    """The trained model of a finished run (``run_dir`` or its ``final/`` folder), in eval mode; its files
    are checked against ``final/manifest.json`` first.  Its data: :func:`duolib.data.run_data.run_data`."""
    final = final_model_dir(run_dir)
    if not (final / "config.json").is_file():
        raise ValueError(f"{final} holds no trained model (no config.json); train the run first")
    verify_final(final)
    cfg = json.loads((final / "config.json").read_text())
    from transformers import LlamaForCausalLM

    cls = DuoForCausalLM if cfg.get("model_type") == "duo" else LlamaForCausalLM
    with quiet_hf():
        return cls.from_pretrained(final).eval()


def remove_leftovers(run_dir: Path) -> None:
    """Temporary files and folders a killed process left behind (never read: safe to delete)."""
    for folder in (run_dir, run_dir / CKPT_DIR):
        for p in folder.glob(".*") if folder.is_dir() else []:
            if p.name.startswith((".tmp-", ".old-", ".latest.")) or p.name.endswith(".tmp"):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def write_json_lines(path: Path, records: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


# ----------------------------------------------------------------------------- the run folder


@dataclass
class Start:
    """Where a run starts (:meth:`RunFolder.open`): the summary of a finished run of the same identity
    (nothing to train), else the checkpoint to resume from (None: from scratch) and the lengths a finished
    run is being extended from (``[{"from_steps": n, "at_step": s}, ...]``; empty for an ordinary run)."""

    finished: dict | None = None
    checkpoint: Path | None = None
    extended: list[dict] = field(default_factory=list)


class RunFolder:
    """One Stage-1 run folder (layout in the module docstring): its paths, its writer lock, the identity of
    the run it holds, its checkpoints, its metrics log and its final model.  Every rank of a distributed run
    holds one; rank 0 writes, and the methods that write wait for every rank (``barrier``) before they
    return.  The training loop (:func:`duolib.train.loop.train`) uses it as::

        folder = RunFolder(path, identity(cfg, data_fingerprint(data)), rank, world)
        with folder.open(resume=True, overwrite=False) as start:   # the writer lock, held to the end
            if start.finished is None:
                state = folder.load(start, model, optimizer, scheduler)   # counters at the checkpoint
                folder.begin(cfg, tokenizer, resumed_at=state["step"] if start.checkpoint else None)
                ... folder.log(record); folder.save_checkpoint(step, ...) ...
                folder.finish(model, tokenizer, cfg, summary)
    """

    def __init__(self, path: str | os.PathLike, ident: dict, rank: int = 0, world: int = 1):
        self.path, self.ident, self.rank, self.world = Path(path), ident, rank, world
        self.extended: list[dict] = []
        self.config_file, self.metrics_file = self.path / CONFIG_FILE, self.path / METRICS_FILE
        self.summary_file, self.final_dir = self.path / SUMMARY_FILE, self.path / FINAL_DIR
        self.tokenizer_dir = self.path / TOKENIZER_DIR

    @property
    def recorded_identity(self) -> dict:
        """The identity written to config.json: an extended run is not the fresh run of its length, so its
        identity also records the lengths it grew from."""
        return {**self.ident, "extended": self.extended} if self.extended else self.ident

    @property
    def identity_hash(self) -> str:
        return json_hash(self.recorded_identity)

    @contextlib.contextmanager
    def open(self, resume: bool = True, overwrite: bool = False) -> Iterator[Start]:
        """Lock the folder for this run (rank 0: :func:`duolib.folders.claim`, held until the block ends)
        and say where the run starts (:class:`Start`).  ``overwrite`` or not ``resume``: clear the folder
        first (only a folder duolib wrote).  A finished run of this identity is checked and returned; a
        finished run asked for more steps, nothing else changed, is extended; a folder of another run raises
        ValueError.  A finished run in a folder this process may not write is read under a shared lock."""
        if self.world == 1 and resume and not overwrite and self.path.is_dir() and not os.access(self.path, os.W_OK):
            with reading(self.path):
                done = finished_summary(self.path, self.ident)
            if done is not None:
                yield Start(finished=done)
                return
        with claim(self.path, "duo train") if self.rank == 0 else contextlib.nullcontext():
            yield self._start(resume, overwrite)

    def _start(self, resume: bool, overwrite: bool) -> Start:
        if (overwrite or not resume) and self.rank == 0:
            clear(self.path, keep=(METRICS_FILE,))  # the old log stays until the new run writes its own
        barrier()
        if (done := finished_summary(self.path, self.ident)) is not None:
            return Start(finished=done)
        summary = read_run_json(self.summary_file, "the run's summary", required=False)
        if self.config_file.is_file():
            record = read_run_json(self.config_file, "the run's config")
            existing = {k: v for k, v in record.get("identity", {}).items() if k != "extended"}
            if not (diff := config_differences(existing, self.ident)):
                self.extended = record.get("extended", [])  # an interrupted extension resumes as one
            elif resume and summary is not None and only_longer(existing, self.ident):
                self.extended = record.get("extended", []) + [dict(from_steps=existing["train"]["steps"])]
            elif resume:
                raise ValueError(f"run folder {self.path} belongs to a run with a different config:\n  "
                                 + "\n  ".join(diff) + "\nuse another run folder, or overwrite=True / --overwrite "
                                 "to replace it")
        checkpoint = latest_checkpoint(self.path) if resume else None
        if self.extended and checkpoint is None:
            raise ValueError(f"run folder {self.path} has no checkpoint to continue from; train it afresh with "
                             f"--overwrite, or use another run folder")
        return Start(checkpoint=checkpoint, extended=self.extended)

    def load(self, start: Start, model, optimizer, scheduler) -> dict:
        """The checkpoint ``start`` names loaded into the model, optimiser and schedule (checked against its
        manifest and this run's identity); its counters ``{"step", "tokens_seen", "elapsed", "wall"}``,
        zeros when the run starts from scratch."""
        if start.checkpoint is None:
            return dict(step=0, tokens_seen=0, elapsed=0.0, wall=0.0)
        state = load_checkpoint(start.checkpoint, model, optimizer, scheduler, self.ident,
                                other_steps=bool(start.extended))
        if start.extended:
            start.extended[-1].setdefault("at_step", state["step"])
        return {k: state[k] for k in ("step", "tokens_seen", "elapsed", "wall")}

    def begin(self, cfg: TrainConfig, tokenizer, resumed_at: int | None) -> None:
        """config.json (the recorded identity), metrics.jsonl (a resumed run keeps the lines up to its
        checkpoint's step ``resumed_at``; a fresh one starts empty) and tokenizer/.  A summary left by a
        shorter run being extended goes: it no longer describes the folder."""
        if self.rank == 0:
            self.path.mkdir(parents=True, exist_ok=True)
            remove_leftovers(self.path)
            write_json(self.config_file, dict(identity=self.recorded_identity, identity_hash=self.identity_hash,
                                               config=cfg.to_dict(),
                                               **(dict(extended=self.extended) if self.extended else {})))
            self.summary_file.unlink(missing_ok=True)
            write_json_lines(self.metrics_file, kept_metrics(self.metrics_file, resumed_at))
            if tokenizer is not None and not self.tokenizer_dir.is_dir():
                save_run_tokenizer(tokenizer, self.tokenizer_dir, cfg.duo_config().max_position_embeddings)
        barrier()

    def log(self, record: dict) -> None:
        """Append one record to metrics.jsonl (rank 0)."""
        if self.rank == 0:
            with open(self.metrics_file, "a") as f:
                f.write(json.dumps(record) + "\n")

    def save_checkpoint(self, step: int, model, optimizer, scheduler, counters: dict, keep: int) -> None:
        """``checkpoint/step-NNNNNNNN`` after ``step`` steps (:func:`duolib.train.checkpoint.save_checkpoint`)."""
        if self.rank == 0:
            save_checkpoint(self.path, step, model, optimizer, scheduler, self.ident, counters, keep)
        barrier()

    def finish(self, model, tokenizer, cfg: TrainConfig, summary: dict) -> dict:
        """final/ (the trained model and its manifest) and summary.json (with the finished log's digest and
        its checksum), after checking that every weight is finite; ``summary`` completed in place."""
        if self.rank == 0:
            bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
            if bad:
                raise NonFiniteError(cfg.steps, math.nan, math.nan, self.path, f"non-finite weights in {bad[:3]}")
            summary["metrics"] = digest(self.metrics_file)  # the finished log, checked with the run (verify_run)
            with writing(self.final_dir, "the trained model"), atomic_dir(self.final_dir) as tmp:
                save_complete_checkpoint(model, tokenizer, tmp, cfg.to_dict(), summary)
                write_manifest(tmp)  # every file of final/, checked when the run is loaded or found finished
            summary["checksum"] = summary_checksum(summary)
            write_json(self.summary_file, summary)
        barrier()
        return summary
