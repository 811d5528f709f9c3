"""The per-token difficulty table of a loss matrix: how much each token gains from its oracle route
over the all-small route (and all-small minus all-big), with the token's text and label if given."""

from __future__ import annotations

from typing import Sequence

import torch

from ..routing import BIG, SMALL, pattern_to_str
from .reductions import LossMatrix


def token_difficulty(matrix: LossMatrix, k: int, tokenizer=None, labels: torch.Tensor | None = None,
                     label_names: Sequence[str] | None = None):
    """Per-token difficulty table (pandas DataFrame), one row per scored token.

    Columns: ``seq``, ``position`` (t; the row scores the prediction of token t + 1), ``token_id``
    (the predicted token), ``token`` (its text, with ``tokenizer``), ``loss_small`` (all-small
    pattern), ``loss_big`` (all-big), ``loss_oracle`` (per-token oracle with exactly ``k`` big
    layers), ``difficulty`` = loss_small - loss_oracle [ours, the paper's figures], and
    ``small_minus_big``.  With ``labels`` ``[B, T]`` (aligned with the input ids, e.g. the synthetic
    corpus's codes) a ``label`` column holds the predicted token's label (``labels[seq, t + 1]``),
    and ``label_name`` too when ``label_names`` is given."""
    import pandas as pd

    L = matrix.num_layers
    small, big = matrix.loss_of([SMALL] * L), matrix.loss_of([BIG] * L)
    oracle = matrix.oracle(k)
    frame = {"seq": matrix.seq.numpy(), "position": matrix.position.numpy(), "token_id": matrix.target.numpy()}
    if tokenizer is not None:
        frame["token"] = [tokenizer.decode([int(i)]) for i in matrix.target.tolist()]
    frame.update(loss_small=small.numpy(), loss_big=big.numpy(), loss_oracle=oracle.token_losses.numpy(),
                 difficulty=(small - oracle.token_losses).numpy(), small_minus_big=(small - big).numpy(),
                 oracle_pattern=[pattern_to_str(matrix.patterns[w]) for w in oracle.winners.tolist()])
    if labels is not None:
        labels = torch.as_tensor(labels)
        n_seq = int(matrix.seq.max()) + 1 if matrix.num_tokens else 0
        if labels.dim() != 2 or labels.shape[0] < n_seq or labels.shape[1] != matrix.seq_len:
            raise ValueError(f"labels must be [batch, seq_len] = [{n_seq}, {matrix.seq_len}] like the input ids; "
                             f"got shape {tuple(labels.shape)}")
        lab = labels[matrix.seq, matrix.position + 1]
        frame["label"] = lab.numpy()
        if label_names is not None:
            frame["label_name"] = [label_names[int(i)] for i in lab.tolist()]
    return pd.DataFrame(frame)
