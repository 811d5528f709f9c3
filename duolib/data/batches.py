"""Stateless batching of token streams: random training windows and non-overlapping holdout windows."""

from __future__ import annotations

import numpy as np
import torch

from .tokenizer import TokenStream

#: Mixed into the seed of the evaluation windows, so they differ from training draws of the same seed.
HOLDOUT_WINDOW_SEED = 7919


def _tokens(stream) -> np.ndarray | torch.Tensor:
    return stream.tokens if isinstance(stream, TokenStream) else stream


def sample_batch(stream, step: int, batch_size: int, seq_len: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """Random windows ``[batch_size // world_size, seq_len]`` (int64) of ``stream``: this rank's rows.

    A pure function of (seed, step, rank): the global batch of ``batch_size`` window starts is drawn
    by ``numpy.random.default_rng([seed, step])`` and rank ``r`` takes rows ``r::world_size``, so the
    ranks' shards are disjoint and together equal the single-process batch.  Windows hold
    ``seq_len`` tokens; the model shifts them internally (labels = input_ids) for next-token loss.
    """
    tokens = _tokens(stream)
    n = len(tokens)
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len={seq_len} and batch_size={batch_size} must be positive")
    if seq_len + 1 > n:
        raise ValueError(f"seq_len={seq_len} too long for a stream of {n} tokens (need seq_len + 1 <= {n})")
    if batch_size * seq_len > n:
        raise ValueError(f"batch_size={batch_size} x seq_len={seq_len} = {batch_size * seq_len} tokens exceeds "
                         f"the stream's {n} tokens; use a smaller batch or more data")
    if world_size < 1 or not 0 <= rank < world_size or batch_size % world_size:
        raise ValueError(f"need 0 <= rank < world_size dividing batch_size; got rank={rank}, "
                         f"world_size={world_size}, batch_size={batch_size}")
    if step < 0 or seed < 0:
        raise ValueError(f"step={step} and seed={seed} must be non-negative")
    starts = np.random.default_rng([seed, step]).integers(0, n - seq_len + 1, size=batch_size)[rank::world_size]
    return _windows(tokens, starts, seq_len)


def _windows(array, starts: np.ndarray, seq_len: int) -> torch.Tensor:
    index = starts[:, None] + np.arange(seq_len)[None, :]
    if isinstance(array, torch.Tensor):
        return array[torch.from_numpy(index)].long()
    return torch.from_numpy(np.asarray(array[index]).astype(np.int64))


def window_starts(n_tokens: int, n: int, seq_len: int, seed: int = 0) -> np.ndarray:
    """Starts of ``min(n, n_tokens // seq_len)`` non-overlapping windows drawn at random (seeded) among
    the ``n_tokens // seq_len`` aligned slots of a stream, in draw order: any prefix of the draw is
    itself a random sample spread over the whole stream, never its first windows."""
    slots = n_tokens // seq_len if seq_len > 0 else 0
    count = min(n, slots)
    if count < 1:
        raise ValueError(f"holdout stream of {n_tokens} tokens holds no window of seq_len={seq_len} (n={n})")
    rng = np.random.default_rng([HOLDOUT_WINDOW_SEED, seed])
    return rng.permutation(slots)[:count].astype(np.int64) * seq_len


def holdout_sequences(stream, n: int, seq_len: int, *, seed: int = 0, with_labels: bool = False):
    """``min(n, len // seq_len)`` non-overlapping windows ``[n', seq_len]`` of ``stream``, drawn at
    random over the whole stream (:func:`window_starts`, seeded; the same ``seed`` gives the same
    windows in every notebook, and a smaller ``n`` gives a prefix of a larger draw).

    With ``with_labels=True`` returns ``(input_ids, labels)``, labels the aligned uint8 codes of
    ``duolib.data.synthetic.LABEL_NAMES`` as int64 (the stream must carry labels: the synthetic corpus).
    """
    tokens = _tokens(stream)
    starts = window_starts(len(tokens), n, seq_len, seed)
    ids = _windows(tokens, starts, seq_len)
    if not with_labels:
        return ids
    labels = getattr(stream, "labels", None)
    if labels is None:
        raise ValueError("this stream has no labels (only the synthetic corpus carries token labels)")
    return ids, _windows(labels, starts, seq_len)
