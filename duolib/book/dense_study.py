"""The dense comparison of notebook ``08_dense`` (Fig. 8, claim C10).

- the runs: :func:`compare_config` (the Stage-1 recipe with the comparison's model and step budget),
  :func:`freeze_split` (the freeze ablation's two stages within the joint run's budget),
  :func:`compare_data`, :func:`size_tag` (the runs' folder);
- the evaluation: :func:`route_losses` (per-token losses of every model on the same windows under the
  same random routes), :func:`perplexity_frame` (pooled and per-holdout perplexity),
  :func:`pooled_unigram`, :func:`above_bar` (models too weak for the C10 rule).

Intervals come from :func:`duolib.book.evidence.dense_gap_intervals` and
:func:`duolib.book.evidence.paired_loss_intervals` on the losses of :func:`route_losses`.
"""

from __future__ import annotations

import math
import numbers
from typing import Mapping, Sequence

import numpy as np
import torch

from ..data.corpus import prepare
from .. import checks
from .config import BookConfig
from ..train.evaluate import is_duo, unigram_perplexity
from .evidence import window_losses
from .kit import book_train_config


def compare_config(profile: str, run_dir, steps: int, seed: int = 0, model: Mapping | None = None):
    """The Stage-1 TrainConfig of ``profile`` with the dense comparison's model and budget: ``model``
    overrides of the model section (None: the profile's book ``compare_model``), ``steps`` training
    steps, evaluated once at the end, warm-up scaled by ``steps / profile steps`` (at least 1)."""
    cfg = book_train_config(profile, run_dir, seed=seed)
    steps = checks.whole("compare_steps", steps)
    warmup = max(1, round(cfg.warmup_steps * steps / cfg.steps))
    model = BookConfig.from_profile(profile).compare_model if model is None else dict(model)
    cfg = cfg.replace(steps=int(steps), eval_every=int(steps), warmup_steps=min(warmup, int(steps)),
                      model={**cfg.model, **model})
    cfg.validate()
    return cfg


def freeze_split(steps: int) -> tuple[int, int]:
    """Steps of the freeze ablation's two stages (big first, then small) that add up to ``steps``, the
    joint run's budget: the halves, the small stage taking the odd step."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 2:
        raise ValueError(f"the freeze ablation needs at least 2 steps (one per stage); got {steps!r}")
    return int(steps) // 2, int(steps) - int(steps) // 2


def size_tag(config) -> str:
    """A folder name for the comparison's runs that records the model size (``L4-d128-ffn512-32``), so that
    runs of another size never meet in one folder."""
    return (f"L{config.num_hidden_layers}-d{config.hidden_size}-ffn{config.big_ffn_size}-{config.small_ffn_size}"
            f"-h{config.num_attention_heads}")


def compare_data(cfg):
    """The corpus of ``cfg`` (the book's, cached in its run folder by ``01_data``): read from the token
    caches, not from the Stage-1 run, so the comparison can run beside Stage-1 training."""
    return prepare(cfg.corpus, cfg.duo_config().vocab_size, cfg.cache_dir, progress=False, **cfg.data)


def route_losses(model, sequences: torch.Tensor, p_values: Sequence[float], seed: int = 0,
                 batch_size: int = 16) -> dict[float, torch.Tensor]:
    """Per-token losses ``[N, T-1]`` of ``model`` on ``sequences [N, T]`` at each p(big): a Duo model
    under the random routes :func:`duolib.book.evidence.window_losses` draws (the same routes for every
    Duo model at a given p), a dense model once, the same tensor for every p."""
    if not is_duo(model):
        once = window_losses(model, sequences, None, seed, batch_size)
        return {float(p): once for p in p_values}
    return {float(p): window_losses(model, sequences, float(p), seed, batch_size) for p in p_values}


def perplexity_frame(losses: Mapping[str, Mapping[float, torch.Tensor]], holdout: Sequence[str]):
    """Rows (model, p, holdout, loss, ppl, tokens) of per-token losses ``{model: {p: [N, T']}}``, per
    holdout (``holdout``: the holdout of each of the N windows) and pooled over them (holdout "all":
    the token-weighted mean loss)."""
    import pandas as pd

    holdout = np.asarray(holdout)
    rows = []
    for name, by_p in losses.items():
        for p, x in by_p.items():
            if x.shape[0] != len(holdout):
                raise ValueError(f"{name} at p={p}: {x.shape[0]} windows, but {len(holdout)} holdout labels")
            groups = [("all", np.ones(len(holdout), dtype=bool))] + [(h, holdout == h) for h in dict.fromkeys(holdout)]
            for h, mask in groups:
                part = x[torch.from_numpy(mask)].double()
                loss = float(part.mean())
                rows.append({"model": name, "p": float(p), "holdout": h, "loss": loss, "ppl": math.exp(loss),
                             "tokens": int(part.numel())})
    return pd.DataFrame(rows)


def pooled_unigram(train_stream, sequences: Mapping[str, torch.Tensor], vocab_size: int) -> float:
    """The unigram baseline's perplexity on the windows of every holdout, pooled like
    :func:`perplexity_frame` (token-weighted mean loss)."""
    scored = {h: x.shape[0] * (x.shape[1] - 1) for h, x in sequences.items()}
    total = sum(scored[h] * math.log(unigram_perplexity(train_stream, x, vocab_size)) for h, x in sequences.items())
    return math.exp(total / sum(scored.values()))


def above_bar(perplexities: Mapping[str, float], bar: float) -> list[str]:
    """The names whose perplexity is not at or below ``bar`` (NaN counts as above)."""
    return [name for name, ppl in perplexities.items() if not ppl <= bar]
