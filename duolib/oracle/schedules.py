"""The paper's per-position budget schedules ``k(t)`` (falling / rising / constant) and [ours] their shuffled
control, read by :meth:`duolib.oracle.reductions.LossMatrix.schedule_oracle`."""

from __future__ import annotations

import torch

#: The paper's three budget schedules on 12 layers: (budget at the first token, at the last token).
SCHEDULES = {"falling": (6, 2), "rising": (2, 6), "constant": (4, 4)}
#: Name of the shuffled control schedule (:func:`shuffled_schedule`).
SHUFFLED = "shuffled"
PAPER_LAYERS = 12


def budget_schedule(kind: str, num_layers: int, seq_len: int) -> torch.Tensor:
    """A per-position budget ``k(t)`` ``[seq_len]`` (long) for the paper's schedules.

    ``falling`` (6 big layers at the first token down to 2 at the last), ``rising`` (2 up to 6) and
    ``constant`` (4).  [ours] The paper gives them for 12 layers; for ``L`` layers the end points are
    scaled by ``L / 12`` and rounded, and the budget moves linearly with the position ``t`` in
    ``0..seq_len-1`` (rounded to the nearest integer), so the rising and falling schedules average
    the constant budget."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; allowed: {', '.join(SCHEDULES)}")
    if seq_len < 1:
        raise ValueError(f"seq_len={seq_len} must be positive")
    start, end = (round(v * num_layers / PAPER_LAYERS) for v in SCHEDULES[kind])
    frac = torch.arange(seq_len, dtype=torch.float64) / max(1, seq_len - 1)
    return torch.round(start + (end - start) * frac).long()


def shuffled_schedule(num_layers: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """[ours] The control of the schedule study: the falling schedule's budgets (the same multiset as
    the rising one's) at positions permuted at random (seeded).  It spends the same compute with the
    same spread of budgets as falling and rising, but unrelated to the position: a schedule that beats
    it gains from *where* it spends, not from how unevenly."""
    g = torch.Generator().manual_seed(int(seed))
    return budget_schedule("falling", num_layers, seq_len)[torch.randperm(seq_len, generator=g)]
