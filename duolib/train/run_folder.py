"""Run folders of Stage-1 training: checkpoints and run files, written atomically.

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
        .lock, .duolib       the writer lock (``duolib.runfolder.claim``) and the mark of a duolib folder

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
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from torch import nn

from ..model import DuoForCausalLM
from .config import TrainConfig
from .model_card import model_card
from ..fileio import atomic_write_text, umask_modes
from ..runfolder import verify_manifest
from ..data.run_data import verify_run
from ..utils import json_hash

CKPT_DIR = "checkpoint"
METRICS_FILE, CONFIG_FILE, SUMMARY_FILE = "metrics.jsonl", "config.json", "summary.json"
FINAL_DIR, TOKENIZER_DIR = "final", "tokenizer"
#: DuoConfig fields added after the first runs, with their defaults (left out of a run's identity at the default).
LATER_MODEL_FIELDS = {"stage1_route_probs": None}
LOADER_KEYS = ("is_local", "local_files_only", "cache_dir", "force_download", "revision", "token", "subfolder",
               "trust_remote_code", "_commit_hash")


def unwrap_model(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@contextlib.contextmanager
def quiet_hf():
    """No transformers progress bars ("Writing model shards", "Loading weights") inside."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def save_model(model: nn.Module, folder: Path) -> None:
    """save_pretrained as one safetensors file, quietly."""
    with quiet_hf():
        unwrap_model(model).save_pretrained(folder, max_shard_size="1000GB")
    for weights in Path(folder).glob("*.safetensors"):
        umask_modes(weights)  # safetensors writes 0600


def save_complete_checkpoint(model: nn.Module, tokenizer, folder: str | os.PathLike, train: dict | None = None,
                             summary: dict | None = None) -> None:
    """A Hugging Face checkpoint that works from its path alone (``pipeline("text-generation", model=folder)``):
    weights and config (with ``auto_map`` and the model code for ``trust_remote_code=True``), the
    tokenizer's bos / eos / pad ids in the config and the generation config (so ``generate`` stops at
    the tokenizer's eos), the tokenizer files, and a model card ``README.md`` (size, route semantics, how to
    load; with ``train`` (TrainConfig.to_dict()) and ``summary`` also its data, schedule and final evaluation).
    ``tokenizer=None`` saves the model alone."""
    model = unwrap_model(model)
    if tokenizer is not None:
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            setattr(model.config, name, getattr(tokenizer, name))
            if getattr(model, "generation_config", None) is not None:
                setattr(model.generation_config, name, getattr(tokenizer, name))
    save_model(model, Path(folder))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
        fix_tokenizer_config(Path(folder) / "tokenizer_config.json", model.config.max_position_embeddings)
    if isinstance(model, DuoForCausalLM):
        atomic_write_text(Path(folder) / "README.md", model_card(model, train, summary))


def save_run_tokenizer(tokenizer, folder: Path, context: int) -> None:
    """The run's own ``tokenizer/`` folder, saved as ``final/`` saves its copy (:func:`fix_tokenizer_config`), so
    that the two agree byte for byte (``duolib.data.run_data.verify_run`` compares them)."""
    with atomic_dir(folder) as tmp:
        tokenizer.save_pretrained(str(tmp))
        fix_tokenizer_config(Path(tmp) / "tokenizer_config.json", context)


def fix_tokenizer_config(path: Path, context: int) -> None:
    """The saved tokenizer's ``model_max_length`` is the model's context (transformers' default is 1e30, so
    ``truncation=True`` would never truncate), without the loading options transformers copies in
    (``is_local``, ``local_files_only``, ...): they describe how a tokenizer was once read, not the tokenizer."""
    config = json.loads(path.read_text())
    for key in LOADER_KEYS:
        config.pop(key, None)
    config["model_max_length"] = int(context)
    atomic_write_text(path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (temp file + os.replace)."""
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=str))


@contextlib.contextmanager
def atomic_dir(target: Path):
    """Yield a temp folder next to ``target``; on success it replaces ``target`` (else it is removed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        yield tmp
        umask_modes(tmp)  # mkdtemp's 0700 (and safetensors' 0600) would make the folder private
        if target.exists():
            old = target.with_name(f".old-{target.name}-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def config_differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} (existing) vs {vb!r} (requested)")
    return out


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


class MetricsLog:
    def __init__(self, path: Path, active: bool):
        self.path, self.active = path, active

    def write(self, record: dict) -> None:
        if self.active:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def write_json_lines(path: Path, records: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
