"""Small helpers shared by every stage: content hashes, thread count, train/eval and freeze scopes, batches, progress."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .profiles import get_profile


# ----------------------------------------------------------------------------- hashes (cache keys and manifests)


def json_hash(obj) -> str:
    """sha256 hex digest of ``obj`` as canonical JSON (sorted keys; non-JSON values by ``str``)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def parts_hash(*parts) -> str:
    """16-hex-digit sha256 of several parts: bytes as they are, anything else as canonical JSON."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def tensor_hash(t: torch.Tensor) -> str:
    """16-hex-digit sha256 of a tensor's bytes (on CPU, contiguous)."""
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- token arrays


def token_array(stream) -> np.ndarray:
    """The tokens of a stream (anything with ``.tokens``), tensor or array, as a numpy array."""
    t = getattr(stream, "tokens", stream)
    return t.numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


# ----------------------------------------------------------------------------- threads


def set_threads(profile: str) -> int:
    """Use the profile's torch thread count (its ``train.threads``; unchanged if it sets none); returns the count."""
    threads = get_profile(profile)["train"].get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


# ----------------------------------------------------------------------------- model scopes


@contextlib.contextmanager
def eval_mode(model):
    """Evaluation mode for the duration (the previous mode restored even on errors)."""
    with frozen(model, freeze=False, evaluate=True):
        yield


@contextlib.contextmanager
def frozen(model, freeze: bool = True, evaluate: bool | None = None):
    """With ``freeze``, every parameter of ``model`` stops requiring grad for the duration; with ``evaluate``
    (default: ``freeze``) the model is in eval mode.  Flags and mode are restored even on errors."""
    evaluate = freeze if evaluate is None else evaluate
    flags = [(p, p.requires_grad) for p in model.parameters()] if freeze else []
    was_training = model.training
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        if evaluate:
            model.eval()
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


# ----------------------------------------------------------------------------- batches and progress


def batch_source(batches) -> Callable[[int], torch.Tensor]:
    """``batches``: a function step -> LongTensor [B, T], a tensor [N, B, T] / [B, T], or an iterable."""
    if callable(batches) and not torch.is_tensor(batches):
        return batches
    if torch.is_tensor(batches):
        if batches.dim() == 2:
            return lambda step: batches
        if batches.dim() == 3:
            return lambda step: batches[step % batches.shape[0]]
        raise ValueError(f"a tensor of batches must be [B, T] or [N, B, T]; got {tuple(batches.shape)}")
    iterator = iter(batches)

    def next_batch(step):
        nonlocal iterator
        try:
            return next(iterator)
        except StopIteration:
            iterator = iter(batches)
            return next(iterator)

    return next_batch


def progress(iterable, show: bool, desc: str):
    """``iterable`` wrapped in a tqdm bar when ``show``."""
    if not show:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False)
