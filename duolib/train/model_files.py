"""A trained model as files: Hugging Face checkpoints that work from their path alone (weights, config with
the model code, tokenizer, generation config, model card), written quietly and readable by everyone the
umask allows.  A run's ``final/`` folder and its checkpoints are written with these."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from torch import nn

from ..fileio import atomic_dir, atomic_write_text, umask_modes
from ..model import DuoForCausalLM
from .model_card import model_card

#: Loading options transformers copies into a saved tokenizer_config.json; they describe a past read, not the tokenizer.
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
