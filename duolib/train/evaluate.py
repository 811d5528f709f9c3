"""Evaluation of Stage-1 models: holdout perplexity under route modes, and the unigram baseline."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..model import DuoForCausalLM
from ..routing import BIG, SMALL, training_routes
from ..utils import eval_mode, token_array
from .config import TrainConfig, parse_route_mode
from .model_files import unwrap_model


def is_duo(model: nn.Module) -> bool:
    return isinstance(unwrap_model(model), DuoForCausalLM)


def unigram_perplexity(stream, holdout, vocab_size: int | None = None, smoothing: float = 1.0) -> float:
    """Perplexity on ``holdout`` of the unigram model of ``stream`` (add-``smoothing`` counts).

    ``holdout`` is a stream (every token scored) or sequences ``[n, T]`` (tokens 1..T-1 of each scored,
    the ones a causal LM predicts).  ``vocab_size`` defaults to the largest id seen plus one."""
    train = token_array(stream).astype(np.int64)
    if isinstance(holdout, torch.Tensor) and holdout.dim() == 2:
        target = holdout[:, 1:].reshape(-1).numpy()
    else:
        target = token_array(holdout).reshape(-1)
    target = target.astype(np.int64)
    if len(train) == 0 or len(target) == 0:
        raise ValueError("unigram_perplexity needs a non-empty training stream and holdout")
    v = vocab_size or int(max(train.max(), target.max())) + 1
    counts = np.bincount(train, minlength=v).astype(np.float64) + smoothing
    logp = np.log(counts / counts.sum())
    return float(np.exp(-logp[target].mean()))


@torch.no_grad()
def evaluate_route_modes(model: nn.Module, sequences: dict[str, torch.Tensor], route_modes: Sequence[str] = ("small", "big", "random"),
             *, cfg: TrainConfig | None = None, seed: int = 0, batch_size: int = 16) -> list[dict]:
    """Mean next-token loss and perplexity of ``model`` on each holdout ``[n, T]`` under each route mode.

    Random modes draw per-sequence routes from ``(seed, eval stream, sequence index)``: the same routes
    at every evaluation.  Dense (non-Duo) models are evaluated once, with mode "dense"."""
    model = unwrap_model(model)
    with eval_mode(model):
        return _route_mode_records(model, sequences, route_modes, cfg, seed, batch_size)


def _route_mode_records(model, sequences, route_modes, cfg, seed, batch_size) -> list[dict]:
    device = next(model.parameters()).device
    modes = list(route_modes) if is_duo(model) else ["dense"]
    L = model.config.num_hidden_layers
    records = []
    for name, seqs in sequences.items():
        for mode in modes:
            total, count = 0.0, 0
            for lo in range(0, len(seqs), batch_size):
                x = seqs[lo:lo + batch_size].to(device)
                kw = {}
                if mode != "dense":
                    p_big, p_skip = parse_route_mode(mode, cfg)
                    if mode in ("small", "big"):
                        kw["routes"] = [SMALL if mode == "small" else BIG] * L
                    else:
                        kw["routes"] = training_routes(seed, 0, range(lo, lo + len(x)), x.shape[1], L,
                                                       p_big, p_skip, stream=1).to(device)
                loss = model(x, labels=x, use_cache=False, **kw).loss  # no KV cache to build
                n = x.shape[0] * (x.shape[1] - 1)
                total += float(loss) * n
                count += n
            mean = total / count
            records.append(dict(holdout=name, routes=mode, loss=mean, ppl=math.exp(mean), tokens=count))
    return records
