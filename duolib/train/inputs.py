"""The data of a Stage-1 run: the config's corpus prepared (rank 0 first) and checked against the
run's model and batch shape before any file is written; the holdout sequences it is evaluated on."""

from __future__ import annotations

import torch

from ..data.batches import holdout_sequences, sample_batch
from ..data.corpus import prepare
from ..utils import token_array
from .config import TrainConfig
from .distributed import barrier


def load_data(cfg: TrainConfig, data, rank: int):
    """``data`` if given, else the config's corpus prepared (rank 0 first: it writes the token cache the others read)."""
    if data is not None:
        return data
    vocab = cfg.duo_config().vocab_size
    kwargs = dict(cfg.data)
    if rank == 0:
        out = prepare(cfg.corpus, vocab, cfg.cache_dir, progress=cfg.progress, **kwargs)
    barrier()
    if rank != 0:
        out = prepare(cfg.corpus, vocab, cfg.cache_dir, progress=False, **kwargs)
    return out


def check_data(cfg: TrainConfig, data, world_size: int) -> dict[str, torch.Tensor]:
    """Fail early (before any file is written) if the data cannot feed this run; returns eval sequences."""
    n = len(token_array(data.train))
    if n == 0:
        raise ValueError(f"corpus {cfg.corpus!r} gave an empty training stream")
    tok = getattr(data, "tokenizer", None)
    vocab = cfg.duo_config().vocab_size
    if tok is not None and len(tok) > vocab:
        raise ValueError(f"the tokenizer has {len(tok)} tokens but the model's vocab_size is {vocab}")
    top = int(token_array(data.train).max())
    if top >= vocab:
        raise ValueError(f"the training stream holds token id {top} but the model's vocab_size is {vocab}")
    try:
        sample_batch(data.train, 0, cfg.batch_size, cfg.seq_len, cfg.seed, 0, world_size)
    except ValueError as err:
        raise ValueError(f"batch_size={cfg.batch_size}, seq_len={cfg.seq_len} do not fit the data of corpus "
                         f"{cfg.corpus!r}: {err}") from None
    holdout = getattr(data, "holdout", None) or {}
    if not holdout:
        raise ValueError(f"corpus {cfg.corpus!r} has no holdout stream to evaluate on")
    seqs = {}
    for name, stream in holdout.items():
        try:
            seqs[name] = holdout_sequences(stream, cfg.eval_sequences, cfg.seq_len)
        except ValueError as err:
            raise ValueError(f"holdout {name!r} cannot be evaluated with seq_len={cfg.seq_len}: {err}") from None
    return seqs
