"""The paper's comparisons run with the Stage-1 loop: dense baselines and the freeze-big ablation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from .config import P_GRID, TrainConfig
from .loop import TrainResult, train


def dense_baselines(base: TrainConfig, runs_root: str | os.PathLike, p_values: Sequence[float] = P_GRID,
                    **kwargs) -> dict[float, TrainResult]:
    """Train the dense baselines: for each p(big), a Llama whose FFN has ``dense_equivalent_width``
    (FLOPs of p * big + (1 - p) * small), with the same loop and settings; runs_root/dense-p{p}."""
    out = {}
    for p in p_values:
        cfg = base.replace(arch="dense", dense_p_big=float(p), dense_width=None, stage="joint")
        out[p] = train(cfg, Path(runs_root) / f"dense-p{p:g}", **kwargs)
    return out


def freeze_ablation(base: TrainConfig, runs_root: str | os.PathLike, small_routes: str = "random",
                    small_steps: int | None = None, **kwargs) -> tuple[TrainResult, TrainResult]:
    """The paper's ablation: (1) train the big modules alone (all-big routes, small modules frozen and
    unused) into runs_root/ablation-big; (2) freeze them with attention, norms and embeddings and
    train only the small modules (``small_routes``: "random" = the run's p_big, or "small") into
    runs_root/ablation-small-<routes>.  The big stage trains ``base.steps`` steps, the small stage
    ``small_steps`` (None: as many), with the warm-up of ``base`` (at most its steps) and one final
    evaluation."""
    big = train(base.replace(stage="big", arch="duo"), Path(runs_root) / "ablation-big", **kwargs)
    second = base
    if small_steps is not None:  # a base evaluated only at its end stays so
        n = int(small_steps)
        second = base.replace(steps=n, eval_every=n if base.eval_every >= base.steps else min(base.eval_every, n),
                              warmup_steps=min(base.warmup_steps, n))
    small = train(second.replace(stage="small", arch="duo", init_from=str(big.final_dir),
                                 small_stage_routes=small_routes),
                  Path(runs_root) / f"ablation-small-{small_routes}", **kwargs)
    return big, small
