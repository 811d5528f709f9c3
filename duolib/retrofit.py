"""Retrofit an existing Hugging Face causal LM into a Duo-routable model (the paper's OPT-1.3B appendix).

``duolib.retrofit_model(model, small_ffn_size=None, init="importance")`` works **in place** on models of
three families:

- **Llama** (and Llama-like: Mistral, Qwen2 ...): ``model.model.layers[i].mlp`` (SwiGLU gate/up/down);
- **OPT**: ``model.model.decoder.layers[i]``, whose forward calls ``self.fc1``, ``self.activation_fn``
  and ``self.fc2`` inline on flattened ``[B*T, d]`` rows;
- **GPT-2**: ``model.transformer.h[i].mlp`` (``Conv1D`` c_fc / c_proj with GELU).

OPT / GPT-2 MLPs are not SwiGLU and these models use learned positions and LayerNorm, so the result
is not a :class:`~duolib.DuoForCausalLM`.  Each layer's MLP is wrapped in a :class:`DuoFFN` holding
``big`` (the original MLP, same weights, frozen) and ``small`` (the same family structure, inner
width ``small_ffn_size``; default ``big // 16`` as in the paper), which serves each token with big,
small or nothing (skip) per a routing policy, with gather / scatter (sparse execution).

- Llama / GPT-2: ``layers[i].mlp`` is replaced by the DuoFFN.
- OPT: ``layer.fc1`` becomes the DuoFFN (computing the whole fc1 -> act -> fc2 path),
  ``layer.activation_fn`` and ``layer.fc2`` become identities, so the unchanged HF layer forward
  (residual, dropout, LayerNorms) still runs around it.  The DuoFFN gets its ``[B, T]`` shape and
  positions from a forward pre-hook on the layer.

Routes are given through a context manager, since HF forwards take no ``routes`` argument::

    duolib.retrofit_model(model)
    with routing(model, policy) as rec:       # any RoutingPolicy, pattern, or [B, T, L] codes
        out = model(input_ids)
    rec.trace().routes                         # [B, T, L]

With no policy set, every token takes the big module: the original model, bit for bit.

**Small-module initialisation** [ours] (``init="importance"``): the ``small_ffn_size`` inner units of
the big MLP with the largest importance score, copied (weights and biases; the output bias whole).
Score of unit j: ``||W_in[j]|| * ||W_out[:, j]||`` (fc1 row x fc2 column for OPT, c_fc column x
c_proj row for GPT-2), times ``||W_gate[j]||`` for SwiGLU.  ``init="random"``: normal(0, 0.02),
zero biases (:mod:`duolib.retrofit_small`).  Then :func:`train_small_modules` trains the small modules with random routing
(original weights frozen) and :func:`duolib.router.train.train_router` trains a router.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import torch
from torch import nn

from .utils import batch_source, frozen, progress as progress_bar
from .layers import hard_ffn
from .retrofit_small import FCMLP, init_small, inner_size, make_small
from .model import trace_from
from .routing import BIG, SKIP, SMALL, FixedRoutes, RandomRoutes, RoutingPolicy, RoutingTrace, make_policy

FAMILIES = ("llama", "opt", "gpt2")


# ----------------------------------------------------------------------------- the routed FFN slot


class DuoFFN(nn.Module):
    """An FFN slot with a ``big`` (original) and a ``small`` module, routed per token.

    ``policy`` (set by :func:`routing`) decides per token: hard codes run each module only on its
    rows; soft probabilities ``[B, T, 3]`` mix ``P(small) * small + P(big) * big``.  Without a policy
    the big module runs on everything (the original model)."""

    def __init__(self, big: nn.Module, small: nn.Module, layer_idx: int, hidden_size: int):
        super().__init__()
        self.big, self.small = big, small
        self.layer_idx, self.hidden_size = layer_idx, hidden_size
        # a plain dict, not attributes: a router is an nn.Module and must not become a submodule here
        self._route_state: dict = {"policy": None, "recorder": None}
        self.batch_shape: tuple[int, int] | None = None
        self._positions: torch.Tensor | None = None

    @property
    def policy(self) -> RoutingPolicy | None:
        return self._route_state["policy"]

    @property
    def recorder(self) -> "RoutingRecorder | None":
        return self._route_state["recorder"]

    def set_route(self, policy: RoutingPolicy | None, recorder: "RoutingRecorder | None" = None) -> None:
        self._route_state.update(policy=policy, recorder=recorder)

    def module(self, code: int):
        return {BIG: self.big, SMALL: self.small, SKIP: None}[code]

    def _shape(self, x: torch.Tensor) -> tuple[int, int]:
        if x.dim() == 3:
            return x.shape[0], x.shape[1]
        if self.batch_shape is not None and self.batch_shape[0] * self.batch_shape[1] == x.shape[0]:
            return self.batch_shape
        return 1, x.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        policy = self.policy
        if policy is None:
            return self.big(x)
        B, T = self._shape(x)
        x3 = x.reshape(B, T, x.shape[-1])
        pos = self._positions
        if pos is None or pos.shape[-1] != T:
            pos = torch.arange(T, device=x.device)[None]
        pos = pos.expand(B, T)
        decision = policy.route_layer(self.layer_idx, x3, pos)
        if self.recorder is not None:
            self.recorder.record(self.layer_idx, decision)
        if decision.is_floating_point():
            out = decision[..., SMALL, None] * self.small(x3) + decision[..., BIG, None] * self.big(x3)
            return out.reshape(x.shape)
        return hard_ffn(x3, decision, self.module).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"layer_idx={self.layer_idx}"


def _capture(ffn: DuoFFN, module, args, kwargs):
    """Forward pre-hook on a decoder layer: tell its DuoFFN the batch shape and positions."""
    hs = args[0] if args else kwargs.get("hidden_states")
    if hs is not None and hs.dim() == 3:
        ffn.batch_shape = (hs.shape[0], hs.shape[1])
    pos = kwargs.get("position_ids")
    ffn._positions = pos.clamp(min=0) if pos is not None else None
    return None


# ----------------------------------------------------------------------------- family detection


def detect_family(model) -> str:
    """``"llama"``, ``"opt"`` or ``"gpt2"``; ValueError for other architectures."""
    retro = getattr(model, "duo_retrofit", None)
    if retro:
        return retro["family"]
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "decoder") and hasattr(getattr(inner.decoder, "layers", None), "__len__"):
        layer = inner.decoder.layers[0]
        if hasattr(layer, "fc1") and hasattr(layer, "fc2"):
            return "opt"
    if inner is not None and hasattr(getattr(inner, "layers", None), "__len__"):
        mlp = getattr(inner.layers[0], "mlp", None)
        if mlp is not None and all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):
            return "llama"
    transformer = getattr(model, "transformer", None)
    if transformer is not None and hasattr(transformer, "h"):
        mlp = getattr(transformer.h[0], "mlp", None)
        if mlp is not None and hasattr(mlp, "c_fc") and hasattr(mlp, "c_proj"):
            return "gpt2"
    raise ValueError(f"cannot retrofit {type(model).__name__}: supported families are Llama-like "
                     f"(model.model.layers[i].mlp with gate/up/down_proj), OPT (model.model.decoder.layers[i] "
                     f"fc1/fc2) and GPT-2 (model.transformer.h[i].mlp with c_fc/c_proj)")


def decoder_layers(model, family: str | None = None) -> nn.ModuleList:
    family = family or detect_family(model)
    return {"llama": lambda: model.model.layers, "opt": lambda: model.model.decoder.layers,
            "gpt2": lambda: model.transformer.h}[family]()


def duo_ffns(model) -> list[DuoFFN]:
    """The DuoFFN modules of a retrofitted model, in layer order (ValueError if there are none)."""
    ffns = sorted((m for m in model.modules() if isinstance(m, DuoFFN)), key=lambda m: m.layer_idx)
    if not ffns:
        raise ValueError(f"{type(model).__name__} is not retrofitted: call duolib.retrofit_model(model) first")
    return ffns


def is_retrofitted(model) -> bool:
    return any(isinstance(m, DuoFFN) for m in model.modules())


# ----------------------------------------------------------------------------- retrofit


def retrofit_model(model, small_ffn_size: int | None = None, init: str = "importance", freeze: bool = True):
    """Turn a Llama / OPT / GPT-2 causal LM into a Duo-routable model, in place; returns ``model``.

    Every layer's MLP becomes the ``big`` module of a :class:`DuoFFN` and gets a ``small`` module of
    inner width ``small_ffn_size`` (default: big width // 16, at least 1), initialised from the big
    module's most important units (``init="importance"``) or randomly (``init="random"``).  With
    ``freeze`` (default) every original parameter is frozen; the small modules stay trainable.
    ``model.duo_retrofit`` records family, widths and init.
    """
    if is_retrofitted(model):
        raise ValueError(f"{type(model).__name__} is already retrofitted")
    if init not in ("importance", "random"):
        raise ValueError(f"init={init!r}; allowed: 'importance', 'random'")
    family = detect_family(model)
    cfg = model.config
    hidden = int(cfg.hidden_size)
    layers = decoder_layers(model, family)
    std = float(getattr(cfg, "initializer_range", 0.02) or 0.02)
    if freeze:
        for p in model.parameters():
            p.requires_grad_(False)
    big_width = None
    for i, layer in enumerate(layers):
        if family == "opt":
            big = FCMLP(layer.fc1, layer.activation_fn, layer.fc2)
        else:
            big = layer.mlp
        big_width = inner_size(big, family)
        width = small_ffn_size if small_ffn_size is not None else max(1, big_width // 16)
        if not 1 <= width < big_width:
            raise ValueError(f"small_ffn_size={width} must be at least 1 and below the big MLP width {big_width}")
        small = make_small(big, family, hidden, width, cfg)
        p = next(big.parameters())
        small = small.to(device=p.device, dtype=p.dtype)
        init_small(small, big, family, init, std)
        for q in small.parameters():
            q.requires_grad_(True)
        ffn = DuoFFN(big, small, i, hidden)
        if family == "opt":
            layer.fc1, layer.activation_fn, layer.fc2 = ffn, nn.Identity(), nn.Identity()
        else:
            layer.mlp = ffn
        layer.register_forward_pre_hook(partial(_capture, ffn), with_kwargs=True)
    model.duo_retrofit = {"family": family, "big_ffn_size": big_width, "small_ffn_size": width, "init": init,
                          "num_layers": len(layers)}
    return model


def small_parameters(model) -> list[nn.Parameter]:
    """The parameters of the small modules of a retrofitted model."""
    return [p for ffn in duo_ffns(model) for p in ffn.small.parameters()]


# ----------------------------------------------------------------------------- routing context


class RoutingRecorder:
    """Collects the decisions of every DuoFFN inside a :func:`routing` block.

    Successive forwards inside one block (e.g. cached generation) are treated as consecutive chunks
    of the same sequences: :meth:`trace` concatenates them along the sequence axis."""

    def __init__(self, num_layers: int):
        self.num_layers = num_layers
        self.decisions: list[list[torch.Tensor]] = [[] for _ in range(num_layers)]

    def record(self, layer_idx: int, decision: torch.Tensor) -> None:
        self.decisions[layer_idx].append(decision)

    def clear(self) -> None:
        self.decisions = [[] for _ in range(self.num_layers)]

    def trace(self) -> RoutingTrace:
        if not all(self.decisions):
            raise ValueError("no routed forward pass was recorded in this routing() block")
        return trace_from([torch.cat(d, dim=1) for d in self.decisions])


class DeferredRoutes(RoutingPolicy):
    """Turns a pattern / per-token tensor into a policy once the batch shape is known."""

    def __init__(self, routes, num_layers: int):
        self.routes, self.num_layers, self.policy = routes, num_layers, None

    def route_layer(self, layer_idx, hidden_states, position_ids):
        B, T = hidden_states.shape[:2]
        if self.policy is None or layer_idx == 0:
            self.policy = make_policy(self.routes, B, T, self.num_layers, FixedRoutes([BIG] * self.num_layers))
        return self.policy.route_layer(layer_idx, hidden_states, position_ids)


@contextmanager
def routing(model, policy, record: bool = True):
    """Route the retrofitted ``model`` by ``policy`` inside the block; yields a :class:`RoutingRecorder`.

    ``policy``: a :class:`~duolib.routing.RoutingPolicy`, a pattern (``"BBSS"``, codes) or per-token
    codes ``[B, T, L]``; ``None`` means all big."""
    ffns = duo_ffns(model)
    if policy is not None and not isinstance(policy, RoutingPolicy):
        policy = DeferredRoutes(policy, len(ffns))
    recorder = RoutingRecorder(len(ffns)) if record else None
    saved = [(f.policy, f.recorder) for f in ffns]
    for f in ffns:
        f.set_route(policy if policy is not None else FixedRoutes([BIG] * len(ffns)), recorder)
    try:
        yield recorder
    finally:
        for f, (p, r) in zip(ffns, saved):
            f.set_route(p, r)


def set_policy(model, policy) -> None:
    """Set a persistent policy on every DuoFFN (``None``: back to the original all-big model)."""
    ffns = duo_ffns(model)
    if policy is not None and not isinstance(policy, RoutingPolicy):
        policy = DeferredRoutes(policy, len(ffns))
    for f in ffns:
        f.set_route(policy)


# ----------------------------------------------------------------------------- training helpers


def train_small_modules(model, batches, steps: int, *, lr: float = 1e-3, p_big: float = 0.5, p_skip: float = 0.0,
                        seed: int = 0, grad_clip: float | None = 1.0, progress: bool = True,
                        log_every: int = 1) -> list[dict]:
    """Train the small modules of a retrofitted model with Stage-1 random routing, the original frozen.

    Each token, at each layer, is big with probability ``p_big`` (skip ``p_skip``, else small), as
    in the paper.  ``batches``: a function step -> LongTensor [B, T] (or tensor / iterable).  The model
    runs in eval mode (no dropout: the base is frozen).  Returns the history (step, loss)."""
    params = small_parameters(model)
    get_batch = batch_source(batches)
    torch.manual_seed(seed)
    policy = RandomRoutes(p_big=p_big, p_skip=p_skip, seed=seed)
    device = params[0].device
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    history = []
    with frozen(model):
        for p in params:
            p.requires_grad_(True)
        for step in progress_bar(range(steps), progress, "small modules"):
            ids = get_batch(step).to(device)
            with routing(model, policy, record=False):
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            if step % log_every == 0 or step == steps - 1:
                history.append({"step": step, "loss": float(loss.detach())})
    return history


@torch.no_grad()
def route_loss(model, input_ids: torch.Tensor, policy) -> float:
    """Mean next-token loss of a retrofitted model on ``input_ids`` routed by ``policy``."""
    with routing(model, policy, record=False):
        return float(model(input_ids=input_ids, labels=input_ids, use_cache=False).loss)
