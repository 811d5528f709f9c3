"""Budget checks and the seeded pattern samples that the reductions, the registry and the bf16 leaf share."""

from __future__ import annotations

import numpy as np
import torch


def check_budget(k: int, num_layers: int, what: str = "k") -> int:
    """``k`` as an int in ``0..num_layers`` (the number of big layers per token), else ValueError."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= int(k) <= num_layers:
        raise ValueError(f"{what}={k!r} is outside 0..{num_layers}: a budget counts big layers of a "
                         f"{num_layers}-layer model")
    return int(k)


def random_rows(rows: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` of ``rows`` drawn without replacement with ``seed`` (all of them if fewer), sorted: the
    best-of-N sample (the bf16 engine certifies the same sample)."""
    g = torch.Generator().manual_seed(int(seed))
    return rows[torch.randperm(len(rows), generator=g)[: int(n)]].sort().values
