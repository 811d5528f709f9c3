"""Trained routers (the paper's Stage 3): the router policy, save / load.  Options, budgets, the penalty
and the temperature: :mod:`duolib.router.budgets`.

A router is one linear layer per transformer layer on the (normalised) hidden state entering the
FFN slot; its logits choose among the router's *options*, a subset of {skip, small, big}:

- ``("small", "big")``: the paper's main setting (budgets of 4, 6, 8 big layers out of 12);
- ``("skip", "big")`` / ``("skip", "small", "big")``: the paper's skip settings
  (70% small / 30% big, 50% big / 50% skip, 50% big / 30% small / 20% skip: see
  :data:`duolib.router.budgets.SETTINGS`).

**Training** (:func:`duolib.router.train.train_router`, as in the paper): the FFN slot outputs the soft mixture
``sum_x P(x) * module_x(h)`` with ``P = softmax(logits / tau)``; the temperature is annealed toward
hard choices by :func:`duolib.router.budgets.temperature`.  The loss is ``CE + alpha * penalty`` where,
per sequence, ``penalty = (mean over tokens and layers of P(big) - budget / L)^2`` (averaged over the
batch), or, with per-option budgets, the sum of that term over the options, each against its target fraction.
The base model is frozen by default.

**Inference**: hard argmax routes (``router.mode == "hard"``, the default) with real sparse
execution.  Decisions depend only on each token's own hidden state, so ``generate(routes=router)``
works with the KV cache.

**Beyond the paper**: :func:`duolib.router.train.train_distilled_router` trains the same router with
cross-entropy to imitate an oracle's per-token, per-layer choices at a budget, teacher-forced along the oracle's routes.

Evaluation helpers (in :mod:`duolib.router.evaluate`) return tidy pandas DataFrames: perplexity vs average big layers
(:func:`perplexity_vs_budget`), perplexity vs FLOPs per token (:func:`perplexity_vs_flops`),
layer x position heatmaps (:func:`decision_heatmap`) and single-sequence decision grids
(:func:`decision_grid`).  Routers are saved as safetensors + json (:meth:`RouterPolicy.save`,
:func:`load_router`); loading one for a different base model raises ValueError.

Every function here works on a :class:`~duolib.DuoForCausalLM` and on a model retrofitted by
:func:`duolib.retrofit` (Llama / OPT / GPT-2 families).
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from ..runfolder import verify_manifest, write_manifest, writing
from ..train.run_folder import atomic_dir
from ..routing import ROUTE_NAMES, RoutingPolicy
from ..model import DuoForCausalLM, shifted_token_losses
from ..retrofit import routing
from .budgets import OPTION_CODES, parse_options

FORMAT = "duolib-router"
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------- base-model signature


_SIGNATURE_FIELDS = (
    "model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "intermediate_size", "ffn_dim", "n_inner", "big_ffn_size", "small_ffn_size", "max_position_embeddings",
    "n_positions", "rope_theta", "hidden_act", "activation_function", "word_embed_proj_dim",
    "do_layer_norm_before", "tie_word_embeddings",
)


def base_signature(model) -> dict:
    """The architecture fields of ``model`` that a router depends on (plus the retrofit small width)."""
    cfg = model.config
    sig = {}
    for name in _SIGNATURE_FIELDS:
        value = getattr(cfg, name, None)
        if isinstance(value, (int, float, str, bool)):
            sig[name] = value
    retro = getattr(model, "duo_retrofit", None)
    if retro:
        sig["retrofit_small_ffn_size"] = retro["small_ffn_size"]
    return sig


def config_fingerprint(model) -> str:
    return hashlib.sha256(json.dumps(base_signature(model), sort_keys=True).encode()).hexdigest()[:16]


@torch.no_grad()
def weights_fingerprint(model) -> str:
    """A cheap hash of the base weights (a few numbers per tensor): same config, different weights differ."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        if not p.is_floating_point() or p.device.type == "meta":
            continue
        flat = p.detach().reshape(-1)[:4096].double()
        h.update(name.encode())
        h.update(f"{float(flat.sum()):.6e},{float(flat.abs().sum()):.6e}".encode())
    return h.hexdigest()[:16]


def model_sizes(model) -> tuple[int, int]:
    cfg = model.config
    return int(cfg.hidden_size), int(cfg.num_hidden_layers)


# ----------------------------------------------------------------------------- the router


class RouterPolicy(RoutingPolicy, nn.Module):
    """One ``nn.Linear(hidden_size, n_options)`` per layer on the hidden state entering the FFN slot.

    ``mode``: ``"hard"`` (default; argmax codes ``[B, T]``, sparse execution) or ``"soft"``
    (probabilities ``[B, T, 3]`` over (skip, small, big) = ``softmax(logits / tau)`` placed on the
    router's options, zero elsewhere: the training mixture).  ``targets`` holds the budget it was
    trained for and ``meta`` free-form facts (kind, budget, steps) that :meth:`save` writes out.
    """

    def __init__(self, hidden_size: int, num_layers: int, options: Sequence[str | int] | str = ("small", "big"),
                 init_fractions: Mapping[int, float] | None = None, init_std: float = 0.02, seed: int | None = 0):
        nn.Module.__init__(self)
        if hidden_size < 1 or num_layers < 1:
            raise ValueError(f"hidden_size={hidden_size} and num_layers={num_layers} must be positive")
        self.options = parse_options(options)
        self.hidden_size, self.num_layers = int(hidden_size), int(num_layers)
        self.register_buffer("option_codes", torch.tensor(self.options, dtype=torch.long), persistent=False)
        self.layers = nn.ModuleList(nn.Linear(hidden_size, len(self.options)) for _ in range(num_layers))
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        with torch.no_grad():
            for lin in self.layers:
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen) * init_std)
                lin.bias.zero_()
        if init_fractions:
            self.set_prior(init_fractions)
        self.mode = "hard"
        self.tau = 1.0
        self.targets: dict[int, float] | None = None
        self.meta: dict = {"kind": "router", "trained_steps": 0}
        self.base: dict | None = None

    @classmethod
    def for_model(cls, model, options: Sequence[str | int] | str = ("small", "big"), **kwargs) -> "RouterPolicy":
        """A router sized for ``model`` (Duo or retrofitted), remembering the base model's signature."""
        hidden, layers = model_sizes(model)
        router = cls(hidden, layers, options, **kwargs)
        router.base = {"signature": base_signature(model), "config_fingerprint": config_fingerprint(model),
                       "weights_fingerprint": weights_fingerprint(model)}
        p = next(model.parameters(), None)
        return router.to(p.device) if p is not None else router

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(ROUTE_NAMES[c] for c in self.options)

    @torch.no_grad()
    def set_prior(self, fractions: Mapping[int, float]) -> None:
        """Set every layer's bias to ``log(fraction)`` per option so that a zero-input router hits the
        given fractions (options missing from ``fractions`` share the remaining mass equally)."""
        given = {int(c): float(f) for c, f in fractions.items() if int(c) in self.options}
        rest = [c for c in self.options if c not in given]
        left = max(0.0, 1.0 - sum(given.values()))
        full = {**given, **{c: left / len(rest) for c in rest}} if rest else given
        bias = torch.tensor([math.log(max(full.get(c, 0.0), 1e-3)) for c in self.options])
        for lin in self.layers:
            lin.bias.copy_(bias - bias.mean())

    def logits(self, layer_idx: int, hidden_states: torch.Tensor) -> torch.Tensor:
        """Router logits ``[B, T, n_options]`` of layer ``layer_idx``."""
        lin = self.layers[layer_idx]
        return lin(hidden_states.to(lin.weight.dtype))

    def option_probs(self, layer_idx: int, hidden_states: torch.Tensor, tau: float | None = None) -> torch.Tensor:
        """``softmax(logits / tau)`` over the router's options ``[B, T, n_options]``."""
        return torch.softmax(self.logits(layer_idx, hidden_states) / (self.tau if tau is None else tau), dim=-1)

    def full_probs(self, option_probs: torch.Tensor) -> torch.Tensor:
        """Spread ``[..., n_options]`` onto the three routes ``[..., 3]`` (zeros for absent options)."""
        full = option_probs.new_zeros(*option_probs.shape[:-1], 3)
        return full.index_copy(-1, self.option_codes.to(option_probs.device), option_probs)

    def route_layer(self, layer_idx, hidden_states, position_ids):
        if layer_idx >= self.num_layers:
            raise ValueError(f"router has {self.num_layers} layers; asked for layer {layer_idx}")
        if self.mode == "soft":
            return self.full_probs(self.option_probs(layer_idx, hidden_states)).to(hidden_states.dtype)
        if self.mode != "hard":
            raise ValueError(f"router mode {self.mode!r}; allowed: 'hard', 'soft'")
        if len(self.options) == 2:  # argmax of two logits is the sign of their difference: one mat-vec
            lin, (first, second) = self.layers[layer_idx], self.options
            flat = hidden_states.reshape(-1, hidden_states.shape[-1]).to(lin.weight.dtype)  # [B*T, d]
            margin = torch.mv(flat, lin.weight[1] - lin.weight[0])  # [B*T]
            codes = (margin > lin.bias[0] - lin.bias[1]).long()  # [B*T] 1 where the second option wins
            if second - first != 1:
                codes.mul_(second - first)
            return codes.add_(first).view(hidden_states.shape[:-1])
        codes = self.option_codes.to(hidden_states.device)
        return codes[self.logits(layer_idx, hidden_states).argmax(-1)]  # [B, T]

    @contextmanager
    def soft(self, tau: float = 1.0):
        """Temporarily route softly at temperature ``tau``."""
        old = (self.mode, self.tau)
        self.mode, self.tau = "soft", float(tau)
        try:
            yield self
        finally:
            self.mode, self.tau = old

    def extra_repr(self) -> str:
        return f"options={self.option_names}, mode={self.mode!r}, kind={self.meta.get('kind')!r}"


    # ---- save / load --------------------------------------------------------------------------------
    def save(self, path: str | Path, model=None) -> Path:
        """Write ``router.safetensors`` and ``router.json`` (options, sizes, base-model signature,
        budget targets, meta) into folder ``path``; ``model`` refreshes the base signature."""
        from safetensors.torch import save_file

        if model is not None:
            self.base = RouterPolicy.for_model(model, self.options).base
        path = Path(path)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        info = {
            "format": FORMAT, "version": FORMAT_VERSION, "options": list(self.option_names),
            "hidden_size": self.hidden_size, "num_layers": self.num_layers, "base": self.base,
            "targets": {ROUTE_NAMES[c]: f for c, f in (self.targets or {}).items()}, "meta": self.meta,
        }
        # one folder renamed into place: a kill never leaves new weights beside an old router.json
        with writing(path, "the router"), atomic_dir(path) as tmp:
            save_file(state, str(tmp / "router.safetensors"))
            (tmp / "router.json").write_text(json.dumps(info, indent=2, sort_keys=True, default=str))
            write_manifest(tmp)
        return path


def load_router(path: str | Path, model) -> RouterPolicy:
    """Load a router saved by :meth:`RouterPolicy.save` for ``model``.

    ValueError if it was trained for a different base model (hidden size, layer count or config
    fingerprint); a warning if only the weights differ (e.g. another checkpoint of the same run)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "router.json").is_file() or not (path / "router.safetensors").is_file():
        raise ValueError(f"{path} holds no saved router (router.json + router.safetensors)")
    verify_manifest(path, f"the router in {path} is damaged or incomplete: train it again (duo route) or restore "
                          f"it from a copy")
    try:
        info = json.loads((path / "router.json").read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path / 'router.json'} is unreadable ({err}); train the router again (duo route)") from None
    if info.get("format") != FORMAT:
        raise ValueError(f"{path / 'router.json'} is not a duolib router (format {info.get('format')!r})")
    hidden, layers = model_sizes(model)
    if info["hidden_size"] != hidden:
        raise ValueError(f"router at {path} was trained for hidden_size={info['hidden_size']} but the model has "
                         f"hidden_size={hidden}; load it into a model of the same base")
    if info["num_layers"] != layers:
        raise ValueError(f"router at {path} was trained for num_hidden_layers={info['num_layers']} but the model has "
                         f"num_hidden_layers={layers}; load it into a model of the same base")
    base = info.get("base") or {}
    if base.get("config_fingerprint") and base["config_fingerprint"] != config_fingerprint(model):
        theirs, ours = base.get("signature", {}), base_signature(model)
        diff = {k: (theirs.get(k), ours.get(k)) for k in sorted(set(theirs) | set(ours))
                if theirs.get(k) != ours.get(k)}
        raise ValueError(f"router at {path} was trained for a different base model (config fingerprint "
                         f"{base['config_fingerprint']} != {config_fingerprint(model)}; differing fields "
                         f"(router's, model's): {diff})")
    if base.get("weights_fingerprint") and base["weights_fingerprint"] != weights_fingerprint(model):
        warnings.warn(f"router at {path} was trained on base weights with another fingerprint "
                      f"({base['weights_fingerprint']} != {weights_fingerprint(model)}): same architecture, "
                      f"different checkpoint", stacklevel=2)
    router = RouterPolicy(hidden, layers, info["options"])
    router.load_state_dict(load_file(str(path / "router.safetensors")))
    router.base = base or None
    router.targets = {OPTION_CODES[k]: float(v) for k, v in info.get("targets", {}).items()} or None
    router.meta = info.get("meta", {})
    p = next(model.parameters(), None)
    return (router.to(p.device) if p is not None else router).eval()


# ----------------------------------------------------------------------------- forward on any routable model


def is_duo_model(model) -> bool:
    return isinstance(model, DuoForCausalLM)


def routed_forward(model, input_ids: torch.Tensor, policy, labels: torch.Tensor | None = None):
    """Run ``model`` (Duo or retrofitted) on ``input_ids`` routed by ``policy``; returns
    ``(output, RoutingTrace)``; ``output.loss`` is the mean next-token loss when labels are given."""
    if is_duo_model(model):
        out = model(input_ids, labels=labels, routes=policy, return_routes=True, use_cache=False)
        return out, out.routing
    with routing(model, policy) as recorder:
        out = model(input_ids=input_ids, labels=labels, use_cache=False)
    return out, recorder.trace()


def token_losses(out, input_ids: torch.Tensor) -> torch.Tensor:
    return shifted_token_losses(out.logits, input_ids)
