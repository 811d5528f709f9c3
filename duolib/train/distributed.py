"""The distributed side of Stage-1 training: ranks, barriers, the device of a rank, the
DistributedDataParallel wrapper and the collectives the loop needs (under ``torchrun``; one process
otherwise, where every helper is a no-op)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

from .config import TrainConfig
from .evaluate import is_duo


def dist_rank_world() -> tuple[int, int]:
    """``(rank, world size)`` of this process: ``(0, 1)`` outside ``torchrun``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if dist_rank_world()[1] > 1:
        dist.barrier()


def train_device(cfg: TrainConfig) -> torch.device:
    """The device of this rank: ``cfg.device``, or with "auto" the rank's GPU (``LOCAL_RANK``) if any, else CPU."""
    if cfg.device != "auto":
        return torch.device(cfg.device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def wrap_distributed(model, cfg: TrainConfig, device: torch.device, world: int):
    """``model`` wrapped in DistributedDataParallel when there are several processes."""
    if world == 1:
        return model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=_may_leave_modules_unused(model, cfg))


def _may_leave_modules_unused(model, cfg: TrainConfig) -> bool:
    """Whether a trainable FFN can get no token in a step (DDP then needs find_unused_parameters)."""
    if not is_duo(model):
        return False
    mode = cfg.routes_mode()
    small_unused = mode == "big" or (mode == "random" and cfg.p_big + cfg.p_skip >= 1.0)
    big_unused = mode == "small" or (mode == "random" and cfg.p_big == 0.0)
    return (small_unused and cfg.stage != "big") or (big_unused and cfg.stage != "small") or cfg.p_skip > 0


def mean_over_ranks(value: float, device: torch.device, world: int) -> float:
    """The mean of ``value`` over all ranks (``value`` itself in a single process)."""
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / world


def broadcast_from_rank0(obj):
    """Rank 0's ``obj`` on every rank (``obj`` itself in a single process)."""
    out = [obj]
    if dist_rank_world()[1] > 1:
        dist.broadcast_object_list(out, src=0)
    return out[0]
