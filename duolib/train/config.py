"""``TrainConfig``: every knob of a Stage-1 run, with validation, and the learning-rate schedule."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path


from ..config import DuoConfig, check_context
from ..flops import dense_equivalent_width
from ..profiles import PROFILES
from ..stage_config import StageConfig
from ..utils import check_threads
from ..data.corpus import parse_corpus
from ..data.tokenizer import check_vocab_size

ARCHS = ("duo", "dense")
STAGES = ("joint", "big", "small")
TRAIN_ROUTES = ("random", "big", "small")
P_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
#: Fields that do not change what a run computes (excluded from the config identity).
COSMETIC_FIELDS = ("checkpoint_every", "keep_checkpoints", "log_every", "progress", "threads", "device",
                   "cache_dir", "deterministic")
#: Semantic fields added after the first runs, with their defaults (left out of the identity at the default).
LATER_FIELDS = {"amp": False, "hold_fraction": 0.0}


# ----------------------------------------------------------------------------- configuration

@dataclass
class TrainConfig(StageConfig):
    """One Stage-1 run.  ``TrainConfig.from_profile("default", steps=100)`` fills it from a profile's ``train``
    section (:class:`duolib.stage_config.StageConfig`).

    model / data: overrides of the profile's model section / extra ``duolib.data.corpus.prepare`` keywords
    (``max_docs``, ``synthetic``, ``holdout_fraction``, ``tokenizer_chars``).
    arch: "duo" or "dense" (a ``transformers.LlamaForCausalLM`` with one FFN of width ``dense_width``,
    or ``dense_equivalent_width(model, dense_p_big)``; all-big width if neither is given).
    stage: "joint" (every module trains), "big" (all-big routes, small modules frozen) or "small"
    (only the small modules train, from ``init_from``: a run folder or a ``final/`` folder).
    train_routes: "random" (p_big / p_skip per token and layer), "big" or "small"; None = what the
    stage implies (random; all-big for stage "big"; ``small_stage_routes`` for stage "small").
    amp: bfloat16 autocast for the forward pass (GPU runs; the ``paper`` profile).
    eval_routes: route modes of the periodic evaluation ("small", "big", "random" = the training
    p_big / p_skip, "random:P" = p_big P and no skip, "random:P:S" = p_big P and p_skip S); dense models
    are evaluated once ("dense").
    """

    SECTION = "train"

    profile: str = "default"
    model: dict = field(default_factory=dict)
    corpus: str = "mix"
    data: dict = field(default_factory=dict)
    arch: str = "duo"
    dense_p_big: float | None = None
    dense_width: int | None = None
    stage: str = "joint"
    init_from: str | None = None
    small_stage_routes: str = "random"
    train_routes: str | None = None
    p_big: float = 0.5
    p_skip: float = 0.0
    steps: int = 1000
    batch_size: int = 16
    seq_len: int = 128
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    # the last hold_fraction of the steps run at the final learning rate, so a plateau is judged where the schedule no
    # longer lowers the loss by itself
    hold_fraction: float = 0.0
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 250
    eval_sequences: int = 32
    eval_batch_size: int = 16
    eval_routes: tuple[str, ...] = ("small", "big", "random")
    amp: bool = False
    # cosmetic (see COSMETIC_FIELDS)
    checkpoint_every: int | None = None
    keep_checkpoints: int = 2
    log_every: int = 10
    progress: bool = True
    threads: int | str | None = None  # a count, or "auto" (duolib.utils.apply_threads: measured at start)
    device: str = "auto"
    cache_dir: str | None = None
    deterministic: bool = True

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["eval_routes"] = list(d["eval_routes"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        if "eval_routes" in d:
            d["eval_routes"] = tuple(d["eval_routes"])
        return cls(**d)

    # ---- derived --------------------------------------------------------------------------
    def duo_config(self) -> DuoConfig:
        """The Duo model of this run (the profile's model section with ``model`` overrides)."""
        return DuoConfig.preset(self.profile, **self.model)

    def routes_mode(self) -> str:
        if self.train_routes is not None:
            return self.train_routes
        return {"joint": "random", "big": "big", "small": self.small_stage_routes}[self.stage]

    def ffn_width(self) -> int:
        """Inner width of the dense baseline's FFN."""
        cfg = self.duo_config()
        if self.dense_width is not None:
            return int(self.dense_width)
        if self.dense_p_big is not None:
            return dense_equivalent_width(cfg, self.dense_p_big)
        return cfg.big_ffn_size

    def semantic(self) -> dict:
        """The fields that define what the run computes (everything but COSMETIC_FIELDS)."""
        d = self.to_dict()
        for k in COSMETIC_FIELDS:
            d.pop(k)
        for k, default in LATER_FIELDS.items():  # absent at their default: older run folders keep their identity
            if d[k] == default:
                d.pop(k)
        if self.init_from is not None:
            d["init_from"] = str(Path(self.init_from).resolve())
        return d

    def validate(self, world_size: int = 1) -> None:
        """ValueError naming the bad value and what is allowed; touches no file."""
        check_threads(self.threads)
        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; allowed: {', '.join(PROFILES)}")
        self._check_types()
        choices = dict(arch=ARCHS, stage=STAGES, small_stage_routes=("random", "small"))
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}; allowed: {', '.join(allowed)}")
        if self.train_routes is not None and self.train_routes not in TRAIN_ROUTES:
            raise ValueError(f"train_routes={self.train_routes!r}; allowed: {', '.join(TRAIN_ROUTES)} or None")
        if isinstance(self.data, dict) and "corpus" in self.data:
            raise ValueError("give the corpus as TrainConfig.corpus, not inside data")
        parse_corpus(self.corpus)
        cfg = self.duo_config()  # validates the model overrides
        check_vocab_size(cfg.vocab_size)
        if not (0.0 <= self.p_big <= 1.0 and 0.0 <= self.p_skip <= 1.0 and self.p_big + self.p_skip <= 1.0):
            raise ValueError(f"p_big={self.p_big}, p_skip={self.p_skip}: each in [0, 1], sum at most 1")
        for name in ("steps", "batch_size", "seq_len", "grad_accum", "eval_every", "eval_sequences",
                     "eval_batch_size", "keep_checkpoints", "log_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive integer")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1 and self.eps > 0 and self.weight_decay >= 0):
            raise ValueError(f"need 0 <= beta1, beta2 < 1, eps > 0 and weight_decay >= 0; got {self.beta1}, "
                             f"{self.beta2}, {self.eps}, {self.weight_decay}")
        if self.warmup_steps < 0 or self.seed < 0:
            raise ValueError(f"warmup_steps={self.warmup_steps} and seed={self.seed} must be non-negative")
        if not 0 <= self.hold_fraction < 1:
            raise ValueError(f"hold_fraction={self.hold_fraction} must lie in [0, 1): the share of the steps held at "
                             f"the final learning rate")
        if self.seed >= 2**64:  # torch's generators take 64-bit seeds
            raise ValueError(f"seed={self.seed} is too large: give a seed below 2**64 = {2**64}")
        check_device(self.device)
        if not (self.lr > 0 and 0 <= self.min_lr_ratio <= 1 and self.grad_clip > 0):
            raise ValueError(f"need lr > 0, 0 <= min_lr_ratio <= 1, grad_clip > 0; got {self.lr}, "
                             f"{self.min_lr_ratio}, {self.grad_clip}")
        check_context(cfg, self.seq_len, "seq_len")
        if self.batch_size % (world_size * self.grad_accum):
            raise ValueError(f"batch_size={self.batch_size} must be divisible by world_size x grad_accum = "
                             f"{world_size} x {self.grad_accum}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every={self.checkpoint_every} must be positive or None")
        if self.arch == "dense":
            if self.stage != "joint":
                raise ValueError(f"stage={self.stage!r} needs arch='duo' (a dense model has no small modules)")
            if self.dense_p_big is not None and not 0.0 <= self.dense_p_big <= 1.0:
                raise ValueError(f"dense_p_big={self.dense_p_big} must lie in [0, 1]")
            if self.dense_width is not None and self.dense_width < 1:
                raise ValueError(f"dense_width={self.dense_width} must be positive")
        if self.stage == "small" and not self.init_from:
            raise ValueError("stage='small' trains the small modules of a trained model: give init_from "
                             "(the run folder of a stage='big' run, or its final/ folder)")
        for mode in self.eval_routes:
            parse_route_mode(mode, self)


    def _check_types(self) -> None:
        """ValueError for a value of the wrong kind: booleans are not numbers, numbers are finite, and the
        ``model`` / ``data`` sections hold only known keys."""
        for f in dataclasses.fields(self):
            value, kinds = getattr(self, f.name), _KINDS.get(f.name)
            if kinds is None or (value is None and f.name in _OPTIONAL):
                continue
            ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
            if ok and isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name}={value!r} is not a finite number")
            if not ok:
                want = " or ".join(k.__name__ for k in kinds) + (" or None" if f.name in _OPTIONAL else "")
                raise ValueError(f"{f.name}={value!r} ({type(value).__name__}) must be {want}")
        model_keys = set(DuoConfig.__annotations__)
        unknown = sorted(set(self.model) - model_keys)
        if unknown:
            raise ValueError(f"unknown model field(s) {unknown}; allowed: {sorted(model_keys)}")
        unknown = sorted(set(self.data) - set(DATA_KEYS))
        if unknown:
            raise ValueError(f"unknown data option(s) {unknown}; allowed: {', '.join(DATA_KEYS)}")


#: The keywords of ``duolib.data.prepare`` a run's ``data`` section may set.
DATA_KEYS = ("max_docs", "synthetic", "holdout_fraction", "tokenizer_chars")
_INT, _NUM = (int,), (int, float)
_KINDS = {**{n: _INT for n in ("steps", "batch_size", "seq_len", "grad_accum", "warmup_steps", "seed", "eval_every",
                               "eval_sequences", "eval_batch_size", "keep_checkpoints", "log_every", "dense_width",
                               "checkpoint_every")},
          **{n: _NUM for n in ("p_big", "p_skip", "lr", "min_lr_ratio", "hold_fraction", "weight_decay", "beta1", "beta2", "eps",
                               "grad_clip", "dense_p_big")},
          **{n: (bool,) for n in ("amp", "progress", "deterministic")},
          **{n: (str,) for n in ("profile", "corpus", "arch", "stage", "small_stage_routes", "device", "train_routes")},
          "init_from": (str, os.PathLike), "cache_dir": (str, os.PathLike),
          "model": (dict,), "data": (dict,), "eval_routes": (tuple, list)}
_OPTIONAL = ("dense_width", "checkpoint_every", "dense_p_big", "train_routes", "init_from", "cache_dir")


def parse_route_mode(mode: str, cfg: TrainConfig | None = None) -> tuple[float, float]:
    """(p_big, p_skip) of a route mode: small (0, 0), big (1, 0), random (the config's), random:P (P, 0),
    random:P:S (P, S: big with probability P, skip with S, small otherwise)."""
    if mode == "small":
        return 0.0, 0.0
    if mode == "big":
        return 1.0, 0.0
    if mode == "random":
        return (cfg.p_big, cfg.p_skip) if cfg is not None else (0.5, 0.0)
    if mode.startswith("random:"):
        parts = mode.split(":")[1:]
        try:
            p, s = float(parts[0]), float(parts[1]) if len(parts) == 2 else 0.0
        except ValueError:
            p = s = -1.0
        if len(parts) <= 2 and 0.0 <= p <= 1.0 and 0.0 <= s <= 1.0 and p + s <= 1.0:
            return p, s
    raise ValueError(f"route mode {mode!r}; allowed: small, big, random, random:P or random:P:S with P, S in [0, 1] "
                     "and P + S <= 1")


# ----------------------------------------------------------------------------- schedule, routes, baselines

def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup over ``warmup_steps`` to
    ``lr``, then cosine decay reaching ``min_lr_ratio * lr`` at step ``steps - 1 - hold_steps(cfg)``, held
    there for the last :func:`hold_steps` steps."""
    return cfg.lr * lr_factor(step, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio, hold_steps(cfg))


def hold_steps(cfg: TrainConfig) -> int:
    """The number of final steps run at the final learning rate: ``hold_fraction`` of the steps, never into
    the warm-up."""
    return max(0, min(round(cfg.hold_fraction * cfg.steps), cfg.steps - cfg.warmup_steps))


def lr_factor(step: int, steps: int, warmup: int, min_ratio: float, hold: int = 0) -> float:
    if step < warmup:
        return (step + 1) / warmup
    end = steps - 1 - hold  # the step at which the cosine reaches the floor
    if hold and step >= end:
        return min_ratio
    span = max(1, end - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def check_device(device) -> None:
    """ValueError unless ``device`` ("auto", "cpu", "cuda", "cuda:1", ...) exists in this torch build:
    checked before any run folder is created, so a wrong device leaves nothing behind."""
    import torch

    if device == "auto":
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is not a torch device; give 'auto', 'cpu' or 'cuda'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but this torch build ({torch.__version__}) sees no CUDA GPU; use "
                         f"device=cpu (or auto), or install a CUDA build of torch on a machine with a GPU")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device={device!r} but only {torch.cuda.device_count()} CUDA device(s) are visible")
