"""The seeded pattern samples that the reductions, the registry and the bf16 leaf share."""

from __future__ import annotations

import torch

from ..moves import moved

#: Names that moved out of this module in this release (an import of one names its new module).
__getattr__ = moved(__name__, {"check_budget": "duolib.checks.budget"})


def random_rows(rows: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` of ``rows`` drawn without replacement with ``seed`` (all of them if fewer), sorted: the
    best-of-N sample (the bf16 engine certifies the same sample)."""
    g = torch.Generator().manual_seed(int(seed))
    return rows[torch.randperm(len(rows), generator=g)[: int(n)]].sort().values
