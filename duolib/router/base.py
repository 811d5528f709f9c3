"""The router base class, the registry of router types, and save / load: the one place to add a router type.

A :class:`Router` routes each token at each layer from the hidden state entering the FFN slot.  A type
implements :meth:`Router.raw_logits` (``[B, T, n_options]`` scores over its options) and, if it has
constructor arguments that shape its weights, :meth:`Router.config`; it registers itself with
:func:`register_router` under a ``kind``.  Everything else is shared:

- ``logits = raw_logits + offsets[layer]``: ``offsets`` ``[L, n_options]`` is a buffer that calibration
  (:func:`duolib.router.calibration.calibrate_router`) and the benchmarks move with :meth:`Router.shift`,
  never a type's own weights;
- hard routes (argmax over the options, real sparse execution) and the soft training mixture;
- :meth:`Router.save` / :func:`load_router`: safetensors + ``router.json``, whose ``type`` names the kind
  that :func:`load_router` instantiates; a router is refused for a base model of another architecture.

``CONTRIBUTING.md`` has the checklist; ``tests/test_extension.py`` adds a toy type.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar, Mapping, Sequence

import torch
from torch import nn

from ..routing import ROUTE_NAMES, RoutingPolicy
from ..folders import writing
from ..manifests import verify_manifest, write_manifest
from ..fileio import atomic_dir
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


# ----------------------------------------------------------------------------- the base class and its registry

#: Router types by kind (``router.json``'s ``type``).
ROUTER_TYPES: dict[str, type["Router"]] = {}


def register_router(cls: type["Router"]) -> type["Router"]:
    """Class decorator: make ``cls`` loadable by its ``kind`` (ValueError if the kind is taken by another class)."""
    kind = getattr(cls, "kind", None)
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"{cls.__name__} needs a class attribute kind (a non-empty string) to be registered")
    if ROUTER_TYPES.get(kind, cls) is not cls:
        raise ValueError(f"router kind {kind!r} is taken by {ROUTER_TYPES[kind].__name__}")
    ROUTER_TYPES[kind] = cls
    return cls


class Router(RoutingPolicy, nn.Module):
    """Base of every router type (module docstring).

    ``mode``: ``"hard"`` (default; argmax codes ``[B, T]``, sparse execution) or ``"soft"`` (probabilities
    ``[B, T, 3]`` over (skip, small, big) = ``softmax(logits / tau)`` placed on the router's options, zero
    elsewhere: the training mixture).  ``targets`` holds the budget it was trained for and ``meta``
    free-form facts (budget, steps, calibration) that :meth:`save` writes out."""

    kind: ClassVar[str]

    def __init__(self, hidden_size: int, num_layers: int, options: Sequence[str | int] | str = ("small", "big")):
        nn.Module.__init__(self)
        if hidden_size < 1 or num_layers < 1:
            raise ValueError(f"hidden_size={hidden_size} and num_layers={num_layers} must be positive")
        self.options = parse_options(options)
        self.hidden_size, self.num_layers = int(hidden_size), int(num_layers)
        self.register_buffer("option_codes", torch.tensor(self.options, dtype=torch.long), persistent=False)
        self.register_buffer("offsets", torch.zeros(num_layers, len(self.options)))
        self.mode = "hard"
        self.tau = 1.0
        self.targets: dict[int, float] | None = None
        self.meta: dict = {"kind": "router", "trained_steps": 0}
        self.base: dict | None = None

    # ---- what a type implements ----------------------------------------------------------------------
    def raw_logits(self, layer_idx: int, hidden_states: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, T, n_options]`` of layer ``layer_idx`` before the calibration offsets."""
        raise NotImplementedError(f"{type(self).__name__} must implement raw_logits")

    def config(self) -> dict:
        """JSON-ready constructor arguments (beyond sizes and options) that :func:`load_router` passes back."""
        return {}

    @torch.no_grad()
    def set_prior(self, fractions: Mapping[int, float]) -> None:
        """Make a router whose scores are zero take each option at ``fractions`` (options missing from it
        share the remaining mass equally): every layer's offsets become the centred log-fractions.  A type
        may put the prior into its own weights instead (the linear router uses its biases)."""
        self.offsets.copy_(prior_logits(self.options, fractions).to(self.offsets))

    # ---- shared ---------------------------------------------------------------------------------------
    @classmethod
    def for_model(cls, model, options: Sequence[str | int] | str = ("small", "big"), **kwargs) -> "Router":
        """A router sized for ``model`` (Duo or retrofitted), remembering the base model's signature."""
        hidden, layers = model_sizes(model)
        router = cls(hidden, layers, options, **kwargs)
        router.base = base_record(model)
        p = next(model.parameters(), None)
        return router.to(p.device) if p is not None else router

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(ROUTE_NAMES[c] for c in self.options)

    def logits(self, layer_idx: int, hidden_states: torch.Tensor) -> torch.Tensor:
        """Router logits ``[B, T, n_options]`` of layer ``layer_idx``: the type's scores plus the offsets."""
        raw = self.raw_logits(layer_idx, hidden_states)
        return raw + self.offsets[layer_idx].to(raw.dtype)

    @torch.no_grad()
    def shift(self, delta, layer_idx: int | None = None) -> None:
        """Add ``delta`` (``[n_options]``) to the offsets of layer ``layer_idx`` (every layer if None)."""
        delta = torch.as_tensor(delta, dtype=self.offsets.dtype, device=self.offsets.device)
        if layer_idx is None:
            self.offsets.add_(delta)
        else:
            self.offsets[layer_idx].add_(delta)

    def option_probs(self, layer_idx: int, hidden_states: torch.Tensor, tau: float | None = None) -> torch.Tensor:
        """``softmax(logits / tau)`` over the router's options ``[B, T, n_options]``."""
        return torch.softmax(self.logits(layer_idx, hidden_states) / (self.tau if tau is None else tau), dim=-1)

    def full_probs(self, option_probs: torch.Tensor) -> torch.Tensor:
        """Spread ``[..., n_options]`` onto the three routes ``[..., 3]`` (zeros for absent options)."""
        full = option_probs.new_zeros(*option_probs.shape[:-1], 3)
        return full.index_copy(-1, self.option_codes.to(option_probs.device), option_probs)

    def hard_codes(self, layer_idx: int, hidden_states: torch.Tensor) -> torch.Tensor:
        """Route codes ``[B, T]``: the argmax option (a type may compute the same faster)."""
        codes = self.option_codes.to(hidden_states.device)
        return codes[self.logits(layer_idx, hidden_states).argmax(-1)]

    def route_layer(self, layer_idx, hidden_states, position_ids):
        if layer_idx >= self.num_layers:
            raise ValueError(f"router has {self.num_layers} layers; asked for layer {layer_idx}")
        if self.mode == "soft":
            return self.full_probs(self.option_probs(layer_idx, hidden_states)).to(hidden_states.dtype)
        if self.mode != "hard":
            raise ValueError(f"router mode {self.mode!r}; allowed: 'hard', 'soft'")
        return self.hard_codes(layer_idx, hidden_states)

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
        return f"type={self.kind!r}, options={self.option_names}, mode={self.mode!r}, role={self.meta.get('kind')!r}"

    def save(self, path: str | Path, model=None) -> Path:
        """Write ``router.safetensors`` and ``router.json`` (type, options, sizes, base-model signature,
        budget targets, meta) into folder ``path``; ``model`` refreshes the base signature."""
        from safetensors.torch import save_file

        if model is not None:
            self.base = base_record(model)
        path = Path(path)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        info = {
            "format": FORMAT, "version": FORMAT_VERSION, "type": self.kind, "router_config": self.config(),
            "options": list(self.option_names), "hidden_size": self.hidden_size, "num_layers": self.num_layers,
            "base": self.base, "targets": {ROUTE_NAMES[c]: f for c, f in (self.targets or {}).items()},
            "meta": self.meta,
        }
        # one folder renamed into place: a kill never leaves new weights beside an old router.json
        with writing(path, "the router"), atomic_dir(path) as tmp:
            save_file(state, str(tmp / "router.safetensors"))
            (tmp / "router.json").write_text(json.dumps(info, indent=2, sort_keys=True, default=str))
            write_manifest(tmp)
        return path


def prior_logits(options: Sequence[int], fractions: Mapping[int, float]) -> torch.Tensor:
    """Centred ``log(fraction)`` per option ``[n_options]`` (options missing from ``fractions`` share the
    remaining mass equally; fractions below 1e-3 count as 1e-3)."""
    given = {int(c): float(f) for c, f in fractions.items() if int(c) in options}
    rest = [c for c in options if c not in given]
    left = max(0.0, 1.0 - sum(given.values()))
    full = {**given, **{c: left / len(rest) for c in rest}} if rest else given
    logits = torch.tensor([math.log(max(full.get(c, 0.0), 1e-3)) for c in options])
    return logits - logits.mean()


def base_record(model) -> dict:
    """What a router remembers of its base model: signature and fingerprints."""
    return {"signature": base_signature(model), "config_fingerprint": config_fingerprint(model),
            "weights_fingerprint": weights_fingerprint(model)}


def load_router(path: str | Path, model) -> Router:
    """Load a router saved by :meth:`Router.save` for ``model``, as the type its ``router.json`` names
    (files without a type are linear routers, the only type before types existed).

    ValueError if it was trained for a different base model (hidden size, layer count or config
    fingerprint) or its type is not registered; a warning if only the weights differ (e.g. another
    checkpoint of the same run)."""
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
    kind = info.get("type", "linear")
    if kind not in ROUTER_TYPES:
        raise ValueError(f"router at {path} has type {kind!r}, which this process has not registered (known: "
                         f"{', '.join(sorted(ROUTER_TYPES))}); import the module that defines it first")
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
    router = ROUTER_TYPES[kind](hidden, layers, info["options"], **info.get("router_config", {}))
    state = load_file(str(path / "router.safetensors"))
    state.setdefault("offsets", torch.zeros_like(router.offsets))  # saved before offsets existed: none
    router.load_state_dict(state)
    router.base = base or None
    router.targets = {OPTION_CODES[k]: float(v) for k, v in info.get("targets", {}).items()} or None
    router.meta = info.get("meta", {})
    p = next(model.parameters(), None)
    return (router.to(p.device) if p is not None else router).eval()
