"""The measured preconditions of the scorecard (:data:`duolib.book.thresholds.PRECONDITIONS`): what a
chapter saves as ``preconditions.<name>`` (an interval dict, or a bare number where the quantity has no
windows to resample).  Each is a capacity the claims that need it are about, in nats of mean loss;
``duo_curve_spread`` is :func:`loss_gap_interval` of the Duo model's per-token losses at p(big) = 0 and 1."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..oracle.reductions import LossMatrix
from ..router.evaluate import FLAT_TAIL
from ..routing import BIG, SMALL, training_routes
from ..stats import N_BOOT, bootstrap, window_totals
from .evidence import tail_improvement


def loss_gap_interval(worse: torch.Tensor, better: torch.Tensor, n_boot: int = N_BOOT, seed: int = 0,
                      clusters=None) -> dict:
    """Mean per-token loss of ``worse`` minus ``better`` (both ``[N, T']`` on the same windows), nats, with
    its paired window-bootstrap interval (whole works or files with ``clusters``)."""
    if worse.shape != better.shape or worse.ndim != 2:
        raise ValueError(f"need per-token losses [N, T'] of the same windows; got {tuple(worse.shape)} and "
                         f"{tuple(better.shape)}")
    per = (worse.double() - better.double()).sum(1).numpy()
    n = np.full(len(per), worse.shape[1], dtype=np.float64)
    return bootstrap(lambda w: (w @ per) / (w @ n), len(per), n_boot=n_boot, seed=seed, clusters=clusters).as_dict()


def small_big_gap(matrix: LossMatrix, n_boot: int = N_BOOT, seed: int = 0, clusters=None) -> dict:
    """``small_big_gap``: all-small minus all-big mean loss on one holdout's shared {small, big} matrix."""
    L = matrix.num_layers
    seq = matrix.seq.numpy()
    diff = (matrix.losses[matrix.pattern_index([SMALL] * L)] - matrix.losses[matrix.pattern_index([BIG] * L)])
    sums, counts = window_totals(diff.double().numpy(), seq, int(seq.max()) + 1)
    return bootstrap(lambda w: (w @ sums) / (w @ counts), len(counts), n_boot=n_boot, seed=seed,
                     clusters=clusters).as_dict()


@torch.no_grad()
def routed_losses(model, sequences: torch.Tensor, routes: torch.Tensor | None, batch_size: int = 16) -> torch.Tensor:
    """Per-token losses ``[N, T-1]`` of ``model`` on ``sequences [N, T]`` under ``routes [N, T, L]`` (None: all big)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for lo in range(0, len(sequences), batch_size):
        x = sequences[lo:lo + batch_size].to(device)
        kw = {} if routes is None else {"routes": routes[lo:lo + len(x)].to(device)}
        logits = model(x, **kw).logits[:, :-1].float()
        out.append(torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none").cpu())
    return torch.cat(out)


def half_skip_cost(model, sequences: torch.Tensor, seed: int = 0, n_boot: int = N_BOOT, clusters=None) -> dict:
    """``half_skip_cost``: mean loss with every FFN slot skipped at random with probability 1/2 (big
    otherwise; evaluation draws, stream 1) minus all-big, on the windows ``sequences [N, T]``."""
    N, T = sequences.shape
    routes = training_routes(seed, 0, range(N), T, model.config.num_hidden_layers, 0.5, 0.5, stream=1)
    return loss_gap_interval(routed_losses(model, sequences, routes), routed_losses(model, sequences, None),
                             n_boot, seed, clusters)


def stage1_plateau(metrics: pd.DataFrame, routes: str = "big") -> float:
    """``stage1_plateau``: the largest relative drop of the holdout loss over the last FLAT_TAIL of the
    steps across holdouts (:func:`duolib.book.evidence.tail_improvement`; the run must hold its learning
    rate constant there for the drop to measure a plateau, not a schedule running out)."""
    return max(t["improvement"] for t in tail_improvement(metrics, FLAT_TAIL, routes).values())
