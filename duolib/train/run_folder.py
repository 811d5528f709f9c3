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
                             scheduler.pt, trainer_state.pt (step, tokens seen, RNG states),
                             train_config.json, manifest.json (size and sha256 of every file; last)
        final/               a complete HF checkpoint: weights, config with the tokenizer's token ids and
                             auto_map, model code, generation config, tokenizer (``load_run``, or
                             ``pipeline("text-generation", model=".../final")``)
        tokenizer/           the tokenizer (save_pretrained)
        summary.json         written last: the finished run (config hash, final evaluation, baselines)

Every file and folder is written to a temporary name and renamed into place, so a run killed at any
moment (even with SIGKILL) leaves no half-written file; resuming continues from the newest complete
checkpoint and, on CPU, ends bitwise identical to an uninterrupted run.  A run folder whose
``summary.json`` matches the requested configuration is not recomputed.

A checkpoint is a folder ``checkpoint/step-NNNNNNNN`` holding the model (save_pretrained, one
safetensors file), ``optimizer.pt``, ``scheduler.pt``, ``trainer_state.pt`` (step, RNG states, data
position), ``train_config.json`` (the run's identity) and ``manifest.json`` (size and sha256 of every
file, written last).  Folders and files are written under temporary names and renamed into place,
so a process killed at any moment leaves no half-written file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..model import DuoForCausalLM
from ..utils import file_sha256, json_hash, token_array
from .config import TrainConfig
from ..fileio import atomic_write_text

CKPT_DIR = "checkpoint"
METRICS_FILE, CONFIG_FILE, SUMMARY_FILE = "metrics.jsonl", "config.json", "summary.json"
FINAL_DIR, TOKENIZER_DIR = "final", "tokenizer"


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


def save_complete_checkpoint(model: nn.Module, tokenizer, folder: str | os.PathLike) -> None:
    """A Hugging Face checkpoint that works from its path alone (``pipeline("text-generation", model=folder)``):
    weights and config (with ``auto_map`` and the model code for ``trust_remote_code=True``), the
    tokenizer's bos / eos / pad ids in the config and the generation config (so ``generate`` stops at
    the tokenizer's eos), and the tokenizer files.  ``tokenizer=None`` saves the model alone."""
    model = unwrap_model(model)
    if tokenizer is not None:
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            setattr(model.config, name, getattr(tokenizer, name))
            if getattr(model, "generation_config", None) is not None:
                setattr(model.generation_config, name, getattr(tokenizer, name))
    save_model(model, Path(folder))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))


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


def _rng_state() -> dict:
    return dict(torch=torch.get_rng_state(), numpy=np.random.get_state(), python=random.getstate(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, ident: dict, extra: dict,
                    keep: int = 2) -> Path:
    """Write ``checkpoint/step-NNNNNNNN`` atomically, point ``checkpoint/latest`` at it, prune old ones."""
    root = Path(run_dir) / CKPT_DIR
    name = f"step-{step:08d}"
    with atomic_dir(root / name) as tmp:
        save_model(model, tmp)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(dict(step=step, rng=_rng_state(), **extra), tmp / "trainer_state.pt")
        write_json(tmp / "train_config.json", ident)
        manifest = {p.name: dict(size=p.stat().st_size, sha256=file_sha256(p)) for p in sorted(tmp.iterdir())}
        write_json(tmp / "manifest.json", dict(step=step, files=manifest))
    tmp_latest = root / f".latest.{os.getpid()}.tmp"
    tmp_latest.write_text(name)
    os.replace(tmp_latest, root / "latest")
    done = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in done[:-keep] if keep else []:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return root / name


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint folder of a run (``checkpoint/latest``, else the highest step), or None."""
    root = Path(run_dir) / CKPT_DIR
    latest = root / "latest"
    if latest.is_file():
        name = latest.read_text().strip()
        if name and (root / name).is_dir():
            return root / name
    steps = sorted(p for p in root.glob("step-*") if p.is_dir()) if root.is_dir() else []
    return steps[-1] if steps else None


def verify_checkpoint(path: Path) -> dict:
    """Check every file of a checkpoint against its manifest; ValueError naming what is wrong."""
    advice = ("delete the checkpoint folder to resume from an older one, or restart the run "
              "(resume=False / --no-resume, or overwrite=True / --overwrite)")
    manifest_path = path / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"checkpoint {path} is incomplete or corrupted (unreadable manifest.json: {err}); {advice}") from None
    for name, info in files.items():
        p = path / name
        if not p.is_file():
            raise ValueError(f"checkpoint {path} is incomplete: {name} is missing; {advice}")
        if p.stat().st_size != info["size"]:
            raise ValueError(f"checkpoint {path} is truncated: {name} has {p.stat().st_size} bytes, "
                             f"expected {info['size']}; {advice}")
        if file_sha256(p) != info["sha256"]:
            raise ValueError(f"checkpoint {path} is corrupted: {name} does not match its sha256; {advice}")
    return manifest


def load_checkpoint(path: Path, model, optimizer, scheduler, ident: dict) -> dict:
    """Verify and load a checkpoint into model / optimizer / scheduler; returns the trainer state."""
    from safetensors.torch import load_file

    verify_checkpoint(path)
    saved = json.loads((path / "train_config.json").read_text())
    diff = config_differences(saved, ident)
    if diff:
        raise ValueError(f"checkpoint {path} was written by a run with a different config:\n  " + "\n  ".join(diff)
                         + "\nuse another run folder, or overwrite=True / --overwrite to start this one afresh")
    weights = sorted(path.glob("*.safetensors"))
    state = {}
    for w in weights:
        state.update(load_file(w))
    target = unwrap_model(model)
    missing, unexpected = target.load_state_dict(state, strict=False)
    tied = set(getattr(target, "_tied_weights_keys", None) or {}) if target.config.tie_word_embeddings else set()
    missing = [k for k in missing if k not in tied and k != "lm_head.weight"]
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not fit the model: missing {missing}, unexpected {unexpected}")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    trainer_state = torch.load(path / "trainer_state.pt", weights_only=False)
    _set_rng_state(trainer_state["rng"])
    return trainer_state


# ----------------------------------------------------------------------------- run files


def data_fingerprint(data) -> str:
    """Identity of the training data: the streams' cache metadata, else a hash of the token arrays."""
    parts = {}
    for name, s in [("train", data.train)] + sorted(getattr(data, "holdout", {}).items()):
        meta = getattr(s, "meta", None)
        if meta:
            parts[name] = {k: v for k, v in meta.items() if k != "split"} | {"split": meta.get("split")}
        else:
            parts[name] = hashlib.sha256(np.ascontiguousarray(token_array(s)).tobytes()).hexdigest()
    return json_hash(parts)


def model_fields(config) -> dict:
    """A model config as a dict without the fields that do not define the model."""
    d = config.to_dict()
    for k in ("transformers_version", "architectures", "dtype", "torch_dtype"):
        d.pop(k, None)
    return d


def identity(cfg: TrainConfig, data_fingerprint: str) -> dict:
    """What defines a run: the semantic config, the resolved model config and the data fingerprint."""
    model = model_fields(cfg.duo_config())
    # JSON round trip: the form config.json / train_config.json hold (string keys, lists)
    return json.loads(json.dumps(dict(train=cfg.semantic(), model=model, data=data_fingerprint), default=str))


def read_metric_records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill: drop it
            pass
    return out


def read_metrics(run_dir: str | os.PathLike):
    """metrics.jsonl of a run as a pandas DataFrame."""
    import pandas as pd

    return pd.DataFrame(read_metric_records(Path(run_dir) / METRICS_FILE))


def final_model_dir(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / FINAL_DIR if (path / FINAL_DIR).is_dir() else path


def load_run(run_dir: str | os.PathLike) -> nn.Module:
    """The trained model of a finished run (``run_dir`` or its ``final/`` folder), in eval mode."""
    final = final_model_dir(run_dir)
    if not (final / "config.json").is_file():
        raise ValueError(f"{final} holds no trained model (no config.json); train the run first")
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
