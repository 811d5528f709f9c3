"""Stage 1 of Duo-LLM: train with random routing (and the dense baselines and the freeze ablation).

Public API
----------
``TrainConfig``            every knob of a run (a profile's ``train`` section plus overrides).
``train(config, run_dir)`` train (or resume, or skip a finished run) and return a :class:`TrainResult`.
``dense_baselines``        dense Llama models of FLOP-matched width for p(big) in {0, .25, .5, .75, 1}.
``freeze_ablation``        the paper's ablation: big modules alone, then frozen, then the small ones.
``evaluate``               holdout perplexity of a model under route modes ("small", "big", "random[:P]").
``holdout_set``            the evaluation sequences of a run, per holdout.
``unigram_perplexity``     the unigram baseline a language model has to beat.
``lr_at``                  the learning-rate schedule (linear warmup, cosine decay to ``min_lr_ratio * lr``).
``training_routes``        the random routes of one training step (a pure function of seed, step and rows).
``load_run``               the trained model of a finished run folder.

Command line: ``duo train --profile default --run-dir runs/default`` (``python -m duolib.train`` takes
the same arguments); ``torchrun --nproc_per_node N -m duolib.train ...`` trains with
DistributedDataParallel (gloo on CPU, nccl on GPU), each rank reading its own rows of the global batch.

Choices the paper does not give [ours]
--------------------------------------
AdamW (betas 0.9 / 0.95, eps 1e-8, weight decay 0.1 on matrices and embeddings, none on norms),
linear warmup then cosine decay to 10% of the peak learning rate, gradient clipping at norm 1.0,
uniformly random training windows (``duolib.data.sample_batch``), batch / length / steps from the
profile.  Random routing draws, for every token and layer, big with probability ``p_big``, skip with
``p_skip``, small otherwise; the draws of global batch row ``r`` at step ``s`` come from a generator
seeded by ``(seed, s, r)``, so they do not depend on the number of processes and a resumed run sees
exactly the routes of an uninterrupted one.  The freeze ablation's second stage trains the small
modules under the *same random routing* as joint training (``p_big`` big, rest small), with the big
modules, attention, norms and embeddings frozen; ``small_stage_routes="small"`` trains them all-small
instead.  Dense baselines use ``dense_equivalent_width`` (FLOPs of ``p * big + (1 - p) * small``).

Run folder layout
-----------------
::

    runs/<name>/
        config.json          the run's identity: TrainConfig, resolved model config, data fingerprint
        metrics.jsonl        one JSON object a line: {"kind": "baseline" | "train" | "eval", "step": ...}
        checkpoint/
            latest           name of the newest complete checkpoint (replaced atomically)
            step-00000500/   model.safetensors + config.json (save_pretrained), optimizer.pt,
                             scheduler.pt, trainer_state.pt (step, tokens seen, RNG states),
                             train_config.json, manifest.json (size and sha256 of every file; last)
        final/               save_pretrained of the trained model (load with ``load_run``)
        tokenizer/           the tokenizer (save_pretrained)
        summary.json         written last: the finished run (config hash, final evaluation, baselines)

Every file and folder is written to a temporary name and renamed into place, so a run killed at any
moment (even with SIGKILL) leaves no half-written file; resuming continues from the newest complete
checkpoint and, on CPU, ends bitwise identical to an uninterrupted run.  A run folder whose
``summary.json`` matches the requested configuration is not recomputed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .checkpoint import (CKPT_DIR, _atomic_dir, _differences, _hash, _quiet_hf, _save_model, _unwrap,
                         _write_json, latest_checkpoint, load_checkpoint, save_checkpoint)
from .train_config import (  # noqa: F401 (re-exported: duolib.train is the public entry point)
    ARCHS, COSMETIC_FIELDS, LATER_FIELDS, P_GRID, STAGES, TRAIN_ROUTES, TrainConfig, lr_at, lr_factor,
    parse_route_mode)
from .fileio import atomic_write_text
from .convert import llama_config
from .model import DuoForCausalLM
from .routing import BIG, SKIP, SMALL

METRICS_FILE, CONFIG_FILE, SUMMARY_FILE = "metrics.jsonl", "config.json", "summary.json"
FINAL_DIR, TOKENIZER_DIR = "final", "tokenizer"

def _seed64(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def training_routes(seed: int, step: int, rows: Iterable[int], seq_len: int, num_layers: int,
                    p_big: float, p_skip: float = 0.0, stream: int = 0) -> torch.Tensor:
    """Random routes ``[len(rows), seq_len, num_layers]`` of the given global batch rows at ``step``.

    Row ``r`` draws ``u ~ U[0, 1)^(seq_len x L)`` from a generator seeded by ``(seed, stream, step, r)``:
    big if ``u < p_big``, skip if ``p_big <= u < p_big + p_skip``, small otherwise (the rule of
    :class:`~duolib.routing.RandomRoutes`).  Independent of how rows are spread over processes.
    ``stream`` separates training (0) from evaluation (1) draws.
    """
    out = []
    for r in rows:
        g = torch.Generator().manual_seed(_seed64(seed, stream, step, r))
        u = torch.rand((seq_len, num_layers), generator=g)
        codes = torch.full(u.shape, SMALL, dtype=torch.long)
        codes[u < p_big] = BIG
        codes[(u >= p_big) & (u < p_big + p_skip)] = SKIP
        out.append(codes)
    return torch.stack(out)


def _tokens(stream) -> np.ndarray:
    t = getattr(stream, "tokens", stream)
    return t.numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def unigram_perplexity(stream, holdout, vocab_size: int | None = None, smoothing: float = 1.0) -> float:
    """Perplexity on ``holdout`` of the unigram model of ``stream`` (add-``smoothing`` counts).

    ``holdout`` is a stream (every token scored) or sequences ``[n, T]`` (tokens 1..T-1 of each scored,
    the ones a causal LM predicts).  ``vocab_size`` defaults to the largest id seen plus one."""
    train = _tokens(stream).astype(np.int64)
    if isinstance(holdout, torch.Tensor) and holdout.dim() == 2:
        target = holdout[:, 1:].reshape(-1).numpy()
    else:
        target = _tokens(holdout).reshape(-1)
    target = target.astype(np.int64)
    if len(train) == 0 or len(target) == 0:
        raise ValueError("unigram_perplexity needs a non-empty training stream and holdout")
    v = vocab_size or int(max(train.max(), target.max())) + 1
    counts = np.bincount(train, minlength=v).astype(np.float64) + smoothing
    logp = np.log(counts / counts.sum())
    return float(np.exp(-logp[target].mean()))


# ----------------------------------------------------------------------------- models

def build_model(cfg: TrainConfig) -> nn.Module:
    """A freshly initialised model of the run (seeded by ``cfg.seed``): Duo, or a dense Llama."""
    torch.manual_seed(cfg.seed)
    if cfg.arch == "dense":
        from transformers import LlamaForCausalLM

        return LlamaForCausalLM(llama_config(cfg.duo_config(), intermediate_size=cfg.ffn_width()))
    return DuoForCausalLM(cfg.duo_config())


def is_duo(model: nn.Module) -> bool:
    return isinstance(_unwrap(model), DuoForCausalLM)


def _final_dir(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / FINAL_DIR if (path / FINAL_DIR).is_dir() else path


def load_run(run_dir: str | os.PathLike) -> nn.Module:
    """The trained model of a finished run (``run_dir`` or its ``final/`` folder), in eval mode."""
    final = _final_dir(run_dir)
    if not (final / "config.json").is_file():
        raise ValueError(f"{final} holds no trained model (no config.json); train the run first")
    cfg = json.loads((final / "config.json").read_text())
    from transformers import LlamaForCausalLM

    cls = DuoForCausalLM if cfg.get("model_type") == "duo" else LlamaForCausalLM
    with _quiet_hf():
        return cls.from_pretrained(final).eval()


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
        optimizer, lambda s: lr_factor(s, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio))


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate(model: nn.Module, sequences: dict[str, torch.Tensor], route_modes: Sequence[str] = ("small", "big", "random"),
             *, cfg: TrainConfig | None = None, seed: int = 0, batch_size: int = 16) -> list[dict]:
    """Mean next-token loss and perplexity of ``model`` on each holdout ``[n, T]`` under each route mode.

    Random modes draw per-sequence routes from ``(seed, eval stream, sequence index)``: the same routes
    at every evaluation.  Dense (non-Duo) models are evaluated once, with mode "dense"."""
    model = _unwrap(model)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    modes = list(route_modes) if is_duo(model) else ["dense"]
    L = model.config.num_hidden_layers
    records = []
    for name, seqs in sequences.items():
        for mode in modes:
            total, count = 0.0, 0
            for lo in range(0, len(seqs), batch_size):
                x = seqs[lo:lo + batch_size].to(device)
                kw = {}
                if mode != "dense":
                    p_big, p_skip = parse_route_mode(mode, cfg)
                    if mode in ("small", "big"):
                        kw["routes"] = [SMALL if mode == "small" else BIG] * L
                    else:
                        kw["routes"] = training_routes(seed, 0, range(lo, lo + len(x)), x.shape[1], L,
                                                       p_big, p_skip, stream=1).to(device)
                loss = model(x, labels=x, **kw).loss
                n = x.shape[0] * (x.shape[1] - 1)
                total += float(loss) * n
                count += n
            mean = total / count
            records.append(dict(holdout=name, routes=mode, loss=mean, ppl=math.exp(mean), tokens=count))
    model.train(was_training)
    return records


# ----------------------------------------------------------------------------- files

def _data_fingerprint(data) -> str:
    """Identity of the training data: the streams' cache metadata, else a hash of the token arrays."""
    parts = {}
    for name, s in [("train", data.train)] + sorted(getattr(data, "holdout", {}).items()):
        meta = getattr(s, "meta", None)
        if meta:
            parts[name] = {k: v for k, v in meta.items() if k != "split"} | {"split": meta.get("split")}
        else:
            parts[name] = hashlib.sha256(np.ascontiguousarray(_tokens(s)).tobytes()).hexdigest()
    return _hash(parts)


def _model_fields(config) -> dict:
    """A model config as a dict without the fields that do not define the model."""
    d = config.to_dict()
    for k in ("transformers_version", "architectures", "dtype", "torch_dtype"):
        d.pop(k, None)
    return d


def identity(cfg: TrainConfig, data_fingerprint: str) -> dict:
    """What defines a run: the semantic config, the resolved model config and the data fingerprint."""
    model = _model_fields(cfg.duo_config())
    # JSON round trip: the form config.json / train_config.json hold (string keys, lists)
    return json.loads(json.dumps(dict(train=cfg.semantic(), model=model, data=data_fingerprint), default=str))


def _read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill: drop it
            pass
    return out


def read_metrics(run_dir: str | os.PathLike):
    """metrics.jsonl of a run as a pandas DataFrame."""
    import pandas as pd

    return pd.DataFrame(_read_metrics(Path(run_dir) / METRICS_FILE))


# ----------------------------------------------------------------------------- the training loop

@dataclass
class TrainResult:
    """What :func:`train` returns.  ``summary`` is the content of summary.json."""

    run_dir: Path
    summary: dict
    skipped: bool = False

    @property
    def final_dir(self) -> Path:
        return self.run_dir / FINAL_DIR

    @property
    def metrics(self):
        return read_metrics(self.run_dir)

    def load_model(self) -> nn.Module:
        return load_run(self.run_dir)

    def final_eval(self, holdout: str, routes: str) -> dict:
        for r in self.summary["final_eval"]:
            if r["holdout"] == holdout and r["routes"] == routes:
                return r
        raise KeyError(f"no final evaluation for holdout {holdout!r} under routes {routes!r}")


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if _dist()[1] > 1:
        dist.barrier()


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device != "auto":
        return torch.device(cfg.device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _load_data(cfg: TrainConfig, data, rank: int):
    if data is not None:
        return data
    from .data import prepare

    vocab = cfg.duo_config().vocab_size
    kwargs = dict(cfg.data)
    if rank == 0:
        out = prepare(cfg.corpus, vocab, cfg.cache_dir, progress=cfg.progress, **kwargs)
    _barrier()
    if rank != 0:
        out = prepare(cfg.corpus, vocab, cfg.cache_dir, progress=False, **kwargs)
    return out


def holdout_set(cfg: TrainConfig, data=None) -> dict[str, torch.Tensor]:
    """The evaluation sequences of a run: ``{holdout name: [eval_sequences, seq_len]}`` (prepares the
    corpus unless ``data`` is given), e.g. to evaluate a trained model under other route modes."""
    return _check_data(cfg, _load_data(cfg, data, 0), 1)


def _check_data(cfg: TrainConfig, data, world_size: int) -> dict[str, torch.Tensor]:
    """Fail early (before any file is written) if the data cannot feed this run; returns eval sequences."""
    from .data import holdout_sequences, sample_batch

    n = len(_tokens(data.train))
    if n == 0:
        raise ValueError(f"corpus {cfg.corpus!r} gave an empty training stream")
    tok = getattr(data, "tokenizer", None)
    vocab = cfg.duo_config().vocab_size
    if tok is not None and len(tok) > vocab:
        raise ValueError(f"the tokenizer has {len(tok)} tokens but the model's vocab_size is {vocab}")
    top = int(_tokens(data.train).max())
    if top >= vocab:
        raise ValueError(f"the training stream holds token id {top} but the model's vocab_size is {vocab}")
    try:
        sample_batch(data.train, 0, cfg.batch_size, cfg.seq_len, cfg.seed, 0, world_size)
    except ValueError as err:
        raise ValueError(f"batch_size={cfg.batch_size}, seq_len={cfg.seq_len} do not fit the data of corpus "
                         f"{cfg.corpus!r}: {err}") from None
    holdout = getattr(data, "holdout", None) or {}
    if not holdout:
        raise ValueError(f"corpus {cfg.corpus!r} has no holdout stream to evaluate on")
    seqs = {}
    for name, stream in holdout.items():
        try:
            seqs[name] = holdout_sequences(stream, cfg.eval_sequences, cfg.seq_len)
        except ValueError as err:
            raise ValueError(f"holdout {name!r} cannot be evaluated with seq_len={cfg.seq_len}: {err}") from None
    return seqs


@contextlib.contextmanager
def _torch_settings(cfg: TrainConfig):
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)


def train(config: TrainConfig | None = None, run_dir: str | os.PathLike | None = None, *, data=None,
          resume: bool = True, overwrite: bool = False, **overrides) -> TrainResult:
    """Train one Stage-1 run into ``run_dir`` (default ``runs/<profile>``) and return its result.

    ``config`` defaults to ``TrainConfig.from_profile("default")``; ``overrides`` replace its fields.
    ``data`` (optional): a ``duolib.data.Prepared`` (or any object with ``.train`` and ``.holdout``
    streams); by default the config's corpus is prepared.  A finished run with the same identity is
    returned without training (``skipped=True``); an unfinished one resumes from its newest checkpoint
    (``resume=False`` or ``overwrite=True``: delete the folder and start afresh).  Resuming a
    folder written by a different config raises ValueError.  Under ``torchrun`` the model is
    wrapped in DistributedDataParallel and each rank trains on its rows of the global batch.
    """
    cfg = config if config is not None else TrainConfig.from_profile(overrides.pop("profile", "default"))
    if overrides:
        cfg = cfg.replace(**overrides)
    rank, world = _dist()
    cfg.validate(world)
    run_dir = Path(run_dir) if run_dir is not None else Path("runs") / cfg.profile
    with _torch_settings(cfg):
        return _train(cfg, run_dir, data, resume, overwrite, rank, world)


def _train(cfg: TrainConfig, run_dir: Path, data, resume: bool, overwrite: bool, rank: int, world: int) -> TrainResult:
    from tqdm.auto import tqdm

    from .data import sample_batch

    if cfg.stage == "small":
        init = _final_dir(cfg.init_from)
        if not (init / "config.json").is_file():
            raise ValueError(f"init_from={cfg.init_from!r} holds no trained model; train the stage='big' run first")
    data = _load_data(cfg, data, rank)
    eval_seqs = _check_data(cfg, data, world)
    ident = identity(cfg, _data_fingerprint(data))
    ident_hash = _hash(ident)

    summary_path = run_dir / SUMMARY_FILE
    if (overwrite or not resume) and rank == 0 and run_dir.exists():
        shutil.rmtree(run_dir)
    _barrier()
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        if summary.get("identity_hash") == ident_hash:
            return TrainResult(run_dir, summary, skipped=True)
    if (run_dir / CONFIG_FILE).is_file():
        existing = json.loads((run_dir / CONFIG_FILE).read_text())
        diff = _differences(existing.get("identity", {}), ident)
        if diff and resume:
            raise ValueError(f"run folder {run_dir} belongs to a run with a different config:\n  " + "\n  ".join(diff)
                             + "\nuse another run folder, or overwrite=True / --overwrite to replace it")

    device = _device(cfg)
    model = build_model(cfg)
    if cfg.stage == "small":
        _load_init(model, _final_dir(cfg.init_from))
    model.to(device).train()
    named = trainable_parameters(model, cfg)
    optimizer = make_optimizer(named, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    L = model.config.num_hidden_layers

    start, tokens_seen, elapsed, wall = 0, 0, 0.0, 0.0
    ckpt = latest_checkpoint(run_dir) if resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, optimizer, scheduler, ident)
        start, tokens_seen, elapsed, wall = state["step"], state["tokens_seen"], state["elapsed"], state["wall"]
    wall_t0 = time.perf_counter() - wall  # wall time: steps, evaluations and checkpoints

    metrics_path = run_dir / METRICS_FILE
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(run_dir)
        _write_json(run_dir / CONFIG_FILE, dict(identity=ident, identity_hash=ident_hash, config=cfg.to_dict()))
        # a resumed run drops what the killed one logged after its checkpoint; a fresh one starts empty
        keep = [r for r in _read_metrics(metrics_path) if r.get("step", 0) <= start] if ckpt is not None else []
        _write_json_lines(metrics_path, keep)
        tok = getattr(data, "tokenizer", None)
        if tok is not None and not (run_dir / TOKENIZER_DIR).is_dir():
            with _atomic_dir(run_dir / TOKENIZER_DIR) as tmp:
                tok.save_pretrained(str(tmp))
    _barrier()

    baselines = {name: unigram_perplexity(data.train, seqs, model.config.vocab_size) for name, seqs in eval_seqs.items()}
    log = _MetricsLog(metrics_path, rank == 0)
    if ckpt is None:
        log.write(dict(kind="baseline", step=0, unigram_ppl=baselines))

    ddp = model
    if world > 1:
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=_may_leave_modules_unused(model, cfg))
    local_rows = list(range(rank, cfg.batch_size, world))
    micro = len(local_rows) // cfg.grad_accum
    routes_mode = cfg.routes_mode()
    params = [p for _, p in named]
    ckpt_every = cfg.checkpoint_every or cfg.eval_every

    bar = tqdm(total=cfg.steps, initial=start, disable=not (cfg.progress and rank == 0), desc=f"train {run_dir.name}",
               dynamic_ncols=True)
    last_eval = None
    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        x = sample_batch(data.train, step, cfg.batch_size, cfg.seq_len, cfg.seed, rank, world).to(device)
        routes = None
        if is_duo(model):
            if routes_mode == "random":
                routes = training_routes(cfg.seed, step, local_rows, cfg.seq_len, L, cfg.p_big, cfg.p_skip).to(device)
            else:
                routes = [BIG if routes_mode == "big" else SMALL] * L
        loss_sum = 0.0
        for i in range(cfg.grad_accum):
            xi = x[i * micro:(i + 1) * micro]
            kw = {}
            if routes is not None:
                kw["routes"] = routes[i * micro:(i + 1) * micro] if torch.is_tensor(routes) else routes
            sync = i == cfg.grad_accum - 1 or world == 1
            with contextlib.nullcontext() if sync else ddp.no_sync():
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                    loss = ddp(xi, labels=xi, **kw).loss
                (loss / cfg.grad_accum).backward()
            loss_sum += float(loss.detach()) / cfg.grad_accum
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if world > 1:
            t = torch.tensor([loss_sum], dtype=torch.float64, device=device)
            dist.all_reduce(t)
            loss_sum = float(t) / world
        dt = time.perf_counter() - t0
        elapsed += dt
        tokens_seen += cfg.batch_size * cfg.seq_len
        done = step + 1
        tps = cfg.batch_size * cfg.seq_len / dt
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum:.3f}", tok_s=f"{tps:,.0f}")
        if done % cfg.log_every == 0 or done == cfg.steps or done == 1:
            log.write(dict(kind="train", step=done, loss=loss_sum, lr=lr, grad_norm=grad_norm, tokens=tokens_seen,
                           tokens_per_s=tps, elapsed=elapsed, wall=time.perf_counter() - wall_t0))
        if done % cfg.eval_every == 0 or done == cfg.steps:
            last_eval = _eval(model, eval_seqs, cfg, rank)
            for r in last_eval:
                log.write(dict(kind="eval", step=done, **r))
            if rank == 0:
                bar.write(f"step {done}: " + ", ".join(f"{r['holdout']}/{r['routes']} {r['ppl']:.1f}" for r in last_eval))
        if done % ckpt_every == 0 and done < cfg.steps:
            if rank == 0:
                save_checkpoint(run_dir, done, model, optimizer, scheduler, ident,
                                dict(tokens_seen=tokens_seen, elapsed=elapsed, wall=time.perf_counter() - wall_t0),
                                cfg.keep_checkpoints)
            _barrier()
    bar.close()

    if last_eval is None:  # resumed after the last step (a kill between the last step and the summary)
        last_eval = _eval(model, eval_seqs, cfg, rank)
    summary = dict(identity_hash=ident_hash, steps=cfg.steps, tokens=tokens_seen, train_seconds=elapsed,
                   wall_seconds=time.perf_counter() - wall_t0,
                   final_eval=last_eval, unigram_ppl=baselines, arch=cfg.arch, stage=cfg.stage,
                   ffn_width=cfg.ffn_width() if cfg.arch == "dense" else None,
                   parameters=sum(p.numel() for p in model.parameters()), world_size=world)
    if rank == 0:
        with _atomic_dir(run_dir / FINAL_DIR) as tmp:
            _save_model(model, tmp)
        _write_json(summary_path, summary)
    _barrier()
    return TrainResult(run_dir, summary)


def _may_leave_modules_unused(model, cfg: TrainConfig) -> bool:
    """Whether a trainable FFN can get no token in a step (DDP then needs find_unused_parameters)."""
    if not is_duo(model):
        return False
    mode = cfg.routes_mode()
    small_unused = mode == "big" or (mode == "random" and cfg.p_big + cfg.p_skip >= 1.0)
    big_unused = mode == "small" or (mode == "random" and cfg.p_big == 0.0)
    return (small_unused and cfg.stage != "big") or (big_unused and cfg.stage != "small") or cfg.p_skip > 0


def _eval(model, seqs, cfg: TrainConfig, rank: int) -> list[dict]:
    """Evaluate on rank 0; every rank gets the records."""
    out = [None]
    if rank == 0:
        device = next(model.parameters()).device
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
            out = [evaluate(model, seqs, cfg.eval_routes, cfg=cfg, seed=cfg.seed, batch_size=cfg.eval_batch_size)]
    if _dist()[1] > 1:
        dist.broadcast_object_list(out, src=0)
    return out[0]


def _load_init(model, final: Path) -> None:
    """Weights of a trained Duo model (stage 'small' starts from the stage 'big' result)."""
    src = load_run(final)
    a, b = ({k: v for k, v in _model_fields(c.config).items() if k != "_name_or_path"} for c in (src, model))
    if not isinstance(src, DuoForCausalLM) or a != b:
        diff = _differences(a, b)
        raise ValueError(f"init_from={str(final)!r} is not a Duo model of this run's size: " + "; ".join(diff))
    model.load_state_dict(src.state_dict())


def _remove_leftovers(run_dir: Path) -> None:
    """Temporary files and folders a killed process left behind (never read: safe to delete)."""
    for folder in (run_dir, run_dir / CKPT_DIR):
        for p in folder.glob(".*") if folder.is_dir() else []:
            if p.name.startswith((".tmp-", ".old-", ".latest.")) or p.name.endswith(".tmp"):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


class _MetricsLog:
    def __init__(self, path: Path, active: bool):
        self.path, self.active = path, active

    def write(self, record: dict) -> None:
        if self.active:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def _write_json_lines(path: Path, records: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


# ----------------------------------------------------------------------------- experiment helpers

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
                    **kwargs) -> tuple[TrainResult, TrainResult]:
    """The paper's ablation: (1) train the big modules alone (all-big routes, small modules frozen and
    unused) into runs_root/ablation-big; (2) freeze them with attention, norms and embeddings and
    train only the small modules (``small_routes``: "random" = the run's p_big, or "small") into
    runs_root/ablation-small, each stage with the full step budget of ``base``."""
    big = train(base.replace(stage="big", arch="duo"), Path(runs_root) / "ablation-big", **kwargs)
    small = train(base.replace(stage="small", arch="duo", init_from=str(big.final_dir),
                               small_stage_routes=small_routes),
                  Path(runs_root) / f"ablation-small-{small_routes}", **kwargs)
    return big, small


# ----------------------------------------------------------------------------- command line

def config_from_args(args) -> TrainConfig:
    """TrainConfig from ``duo train`` arguments (profile, then explicit flags, then --set KEY=VALUE)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in fields and k != "profile" and v is not None}
    for item in getattr(args, "set", None) or []:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE with KEY one of {sorted(fields)}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    if overrides.get("eval_routes") is not None:
        er = overrides["eval_routes"]
        overrides["eval_routes"] = tuple(er.split(",") if isinstance(er, str) else er)
    if getattr(args, "no_progress", False):
        overrides["progress"] = False
    return TrainConfig.from_profile(args.profile, **overrides)


def run_from_args(args) -> int:
    """``duo train``: train (under torchrun: distributed) and print the final evaluation."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
    try:
        cfg = config_from_args(args)
        run_dir = args.run_dir or Path("runs") / cfg.profile
        result = train(cfg, run_dir, resume=not args.no_resume, overwrite=args.overwrite)
        if _dist()[0] == 0:
            what = "already finished (not recomputed)" if result.skipped else "finished"
            print(f"duo train: {run_dir} {what}; {result.summary['tokens']:,} tokens, "
                  f"{result.summary['train_seconds']:.0f} s of training")
            for r in result.summary["final_eval"]:
                print(f"  {r['holdout']:>10} {r['routes']:>10}  loss {r['loss']:.4f}  ppl {r['ppl']:.2f}"
                      f"  (unigram {result.summary['unigram_ppl'][r['holdout']]:.2f})")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m duolib.train ARGS`` = ``duo train ARGS`` (usable under torchrun)."""
    from .cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
