"""The small modules of a retrofitted model: their structure per family (a Llama-style gated MLP,
OPT's fc1 -> activation -> fc2 path, GPT-2's MLP) and their initialisation from the big MLP's most
important inner units.  :func:`duolib.retrofit.retrofit_model` builds them; the scores are described
in :mod:`duolib.retrofit`."""

from __future__ import annotations

import torch
from torch import nn


class GatedMLP(nn.Module):
    """A small Llama-style MLP: ``down(act(gate(x)) * up(x))``."""

    def __init__(self, hidden_size: int, inner_size: int, act: nn.Module, bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, inner_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, inner_size, bias=bias)
        self.down_proj = nn.Linear(inner_size, hidden_size, bias=bias)
        self.act_fn = act

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class FCMLP(nn.Module):
    """OPT's fc1 -> activation -> fc2 path as one module (wraps the original modules for ``big``)."""

    def __init__(self, fc1: nn.Module, act: nn.Module, fc2: nn.Module):
        super().__init__()
        self.fc1, self.act, self.fc2 = fc1, act, fc2

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def _norm_rows(w: torch.Tensor) -> torch.Tensor:
    return w.float().norm(dim=1)


def importance_scores(big: nn.Module, family: str) -> torch.Tensor:
    """Importance of each inner unit of a big MLP ``[inner]`` (see the module docstring)."""
    with torch.no_grad():
        if family == "llama":
            return (_norm_rows(big.gate_proj.weight) * _norm_rows(big.up_proj.weight)
                    * _norm_rows(big.down_proj.weight.t()))
        if family == "opt":
            return _norm_rows(big.fc1.weight) * _norm_rows(big.fc2.weight.t())
        return _norm_rows(big.c_fc.weight.t()) * _norm_rows(big.c_proj.weight)  # Conv1D weights are [in, out]


def inner_size(big: nn.Module, family: str) -> int:
    """Inner width of an MLP of ``family``."""
    return {"llama": lambda: big.up_proj.out_features, "opt": lambda: big.fc1.out_features,
            "gpt2": lambda: big.c_fc.weight.shape[1]}[family]()


def make_small(big: nn.Module, family: str, hidden: int, width: int, config) -> nn.Module:
    """A freshly built small MLP of inner width ``width``, of the same family structure as ``big``."""
    if family == "llama":
        return GatedMLP(hidden, width, big.act_fn, bias=big.up_proj.bias is not None)
    if family == "opt":
        return FCMLP(nn.Linear(hidden, width, bias=big.fc1.bias is not None), big.act,
                     nn.Linear(width, hidden, bias=big.fc2.bias is not None))
    from transformers.models.gpt2.modeling_gpt2 import GPT2MLP

    return GPT2MLP(width, config)


@torch.no_grad()
def init_small(small: nn.Module, big: nn.Module, family: str, init: str, std: float) -> None:
    """``init="importance"``: copy the big MLP's most important units into ``small``; ``"random"``:
    normal(0, ``std``) weights and zero biases (see :mod:`duolib.retrofit`)."""
    if init == "random":
        for p in small.parameters():
            if p.dim() > 1:
                p.normal_(0.0, std)
            else:
                p.zero_()
        return
    width = inner_size(small, family)
    keep = importance_scores(big, family).topk(width).indices.sort().values
    if family == "llama":
        small.gate_proj.weight.copy_(big.gate_proj.weight[keep])
        small.up_proj.weight.copy_(big.up_proj.weight[keep])
        small.down_proj.weight.copy_(big.down_proj.weight[:, keep])
        for name in ("gate_proj", "up_proj"):
            if getattr(small, name).bias is not None:
                getattr(small, name).bias.copy_(getattr(big, name).bias[keep])
        if small.down_proj.bias is not None:
            small.down_proj.bias.copy_(big.down_proj.bias)
    elif family == "opt":
        small.fc1.weight.copy_(big.fc1.weight[keep])
        small.fc2.weight.copy_(big.fc2.weight[:, keep])
        if small.fc1.bias is not None:
            small.fc1.bias.copy_(big.fc1.bias[keep])
        if small.fc2.bias is not None:
            small.fc2.bias.copy_(big.fc2.bias)
    else:
        small.c_fc.weight.copy_(big.c_fc.weight[:, keep])
        small.c_fc.bias.copy_(big.c_fc.bias[keep])
        small.c_proj.weight.copy_(big.c_proj.weight[keep])
        small.c_proj.bias.copy_(big.c_proj.bias)
