"""The model and optimiser of a Stage-1 run: a freshly initialised Duo (or dense Llama) model, the
stage 'small' start from the stage 'big' weights, the trainable parameters of a stage, AdamW and the
learning-rate schedule."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..convert import llama_config
from ..model import DuoForCausalLM
from ..utils import config_differences
from .config import TrainConfig, hold_steps, lr_factor
from .run_folder import load_run, model_fields


def build_model(cfg: TrainConfig) -> nn.Module:
    """A freshly initialised model of the run (seeded by ``cfg.seed``): Duo, or a dense Llama."""
    torch.manual_seed(cfg.seed)
    if cfg.arch == "dense":
        from transformers import LlamaForCausalLM

        return LlamaForCausalLM(llama_config(cfg.duo_config(), intermediate_size=cfg.ffn_width()))
    return DuoForCausalLM(cfg.duo_config())


def trainable_parameters(model: nn.Module, cfg: TrainConfig) -> list[tuple[str, nn.Parameter]]:
    """Sets ``requires_grad`` by stage and returns the trainable (name, parameter) pairs.

    joint: everything; big: everything but the small FFNs; small: only the small FFNs."""
    named = list(model.named_parameters())
    for name, p in named:
        small = ".small." in name
        p.requires_grad_({"joint": True, "big": not small, "small": small}[cfg.stage])
    return [(n, p) for n, p in named if p.requires_grad]


def make_optimizer(named: Sequence[tuple[str, nn.Parameter]], cfg: TrainConfig) -> torch.optim.AdamW:
    decay = [p for n, p in named if p.dim() >= 2]
    no_decay = [p for n, p in named if p.dim() < 2]
    groups = [dict(params=decay, weight_decay=cfg.weight_decay), dict(params=no_decay, weight_decay=0.0)]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             eps=cfg.eps, foreach=False)


def make_scheduler(optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio, hold_steps(cfg)))


def load_init(model, final: Path) -> None:
    """Weights of a trained Duo model (stage 'small' starts from the stage 'big' result)."""
    src = load_run(final)
    # a saved final/ also holds its code map and the tokenizer's token ids: neither defines the model
    ignore = ("_name_or_path", "auto_map", "bos_token_id", "eos_token_id", "pad_token_id")
    a, b = ({k: v for k, v in model_fields(c.config).items() if k not in ignore} for c in (src, model))
    if not isinstance(src, DuoForCausalLM) or a != b:
        diff = config_differences(a, b)
        raise ValueError(f"init_from={str(final)!r} is not a Duo model of this run's size: " + "; ".join(diff))
    model.load_state_dict(src.state_dict())
