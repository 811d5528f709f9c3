"""Stage 1 of Duo-LLM: the random-routing training loop.

Public API (the ``duolib.train`` subpackage)
--------------------------------------------
``config.TrainConfig``          every knob of a run (a profile's ``train`` section plus overrides).
``loop.train(config, run_dir)`` train (or resume, or skip a finished run) and return a :class:`TrainResult`.
``baselines.dense_baselines``   dense Llama models of FLOP-matched width for p(big) in {0, .25, .5, .75, 1}.
``baselines.freeze_ablation``   the paper's ablation: big modules alone, then frozen, then the small ones.
``evaluate.evaluate_route_modes`` holdout perplexity of a model under route modes ("small", "big", "random[:P]").
``loop.holdout_set``            the evaluation sequences of a run, per holdout.
``evaluate.unigram_perplexity`` the unigram baseline a language model has to beat.
``config.lr_at``                the learning-rate schedule (linear warmup, cosine decay to ``min_lr_ratio * lr``).
``duolib.routing.training_routes`` the random routes of one training step (a pure function of seed, step and rows).
``run_folder.load_run``         the trained model of a finished run folder.

Command line: ``duo train --profile default --out runs/default`` (``python -m duolib train`` takes
the same arguments); ``torchrun --nproc_per_node N -m duolib train ...`` trains with
DistributedDataParallel (gloo on CPU, nccl on GPU), each rank reading its own rows of the global batch.

Choices the paper does not give [ours]
--------------------------------------
AdamW (betas 0.9 / 0.95, eps 1e-8, weight decay 0.1 on matrices and embeddings, none on norms),
linear warmup then cosine decay to 10% of the peak learning rate, gradient clipping at norm 1.0,
uniformly random training windows (``duolib.data.corpus.sample_batch``), batch / length / steps from the
profile.  Random routing draws, for every token and layer, big with probability ``p_big``, skip with
``p_skip``, small otherwise; the draws of global batch row ``r`` at step ``s`` come from a generator
seeded by ``(seed, s, r)``, so they do not depend on the number of processes and a resumed run sees
exactly the routes of an uninterrupted one.  The freeze ablation's second stage trains the small
modules under the *same random routing* as joint training (``p_big`` big, rest small), with the big
modules, attention, norms and embeddings frozen; ``small_stage_routes="small"`` trains them all-small
instead.  Dense baselines use ``dense_equivalent_width`` (FLOPs of ``p * big + (1 - p) * small``).

The run folder's files are described in :mod:`duolib.train.run_folder`.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist
from torch import nn

from ..convert import llama_config
from ..data.corpus import prepare
from ..data.batches import holdout_sequences, sample_batch
from ..data.run_data import run_data
from ..model import DuoForCausalLM
from ..routing import BIG, SMALL, training_routes
from ..runfolder import claim, clear, write_manifest
from ..utils import apply_threads, json_hash, token_array
from .config import TrainConfig, lr_factor
from .evaluate import evaluate_route_modes, is_duo, unigram_perplexity
from .run_folder import (CONFIG_FILE, FINAL_DIR, METRICS_FILE, SUMMARY_FILE, TOKENIZER_DIR, MetricsLog, NonFiniteError,
                         atomic_dir, config_differences, data_fingerprint, final_model_dir, identity,
                         latest_checkpoint, load_checkpoint, load_run, model_fields, only_longer, read_metric_records,
                         read_metrics, read_run_json, remove_leftovers, save_checkpoint, save_complete_checkpoint,
                         verify_final, write_json, write_json_lines)


# ----------------------------------------------------------------------------- models

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
        optimizer, lambda s: lr_factor(s, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio))


# ----------------------------------------------------------------------------- evaluation

# ----------------------------------------------------------------------------- files

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

    def data(self):
        """The run's corpus tokenised with its own tokenizer (:func:`duolib.data.run_data.run_data`)."""
        return run_data(self.run_dir)

    def final_eval(self, holdout: str, routes: str) -> dict:
        for r in self.summary["final_eval"]:
            if r["holdout"] == holdout and r["routes"] == routes:
                return r
        raise KeyError(f"no final evaluation for holdout {holdout!r} under routes {routes!r}")


def dist_rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist_rank_world()[1] > 1:
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
    n = len(token_array(data.train))
    if n == 0:
        raise ValueError(f"corpus {cfg.corpus!r} gave an empty training stream")
    tok = getattr(data, "tokenizer", None)
    vocab = cfg.duo_config().vocab_size
    if tok is not None and len(tok) > vocab:
        raise ValueError(f"the tokenizer has {len(tok)} tokens but the model's vocab_size is {vocab}")
    top = int(token_array(data.train).max())
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
            apply_threads(cfg.threads)
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
    ``data`` (optional): a ``duolib.data.corpus.Prepared`` (or any object with ``.train`` and ``.holdout``
    streams); by default the config's corpus is prepared.  A finished run with the same identity is
    returned without training (``skipped=True``); an unfinished one resumes from its newest checkpoint
    (``resume=False`` or ``overwrite=True``: delete the folder and start afresh).  Resuming a
    folder written by a different config raises ValueError.  Under ``torchrun`` the model is
    wrapped in DistributedDataParallel and each rank trains on its rows of the global batch.
    """
    cfg = config if config is not None else TrainConfig.from_profile(overrides.pop("profile", "default"))
    if overrides:
        cfg = cfg.replace(**overrides)
    rank, world = dist_rank_world()
    cfg.validate(world)
    run_dir = Path(run_dir) if run_dir is not None else Path("runs") / cfg.profile
    with _torch_settings(cfg):
        return _train(cfg, run_dir, data, resume, overwrite, rank, world)


def _train(cfg: TrainConfig, run_dir: Path, data, resume: bool, overwrite: bool, rank: int, world: int) -> TrainResult:
    if cfg.stage == "small":
        init = final_model_dir(cfg.init_from)
        if not (init / "config.json").is_file():
            raise ValueError(f"init_from={cfg.init_from!r} holds no trained model; train the stage='big' run first")
    data = _load_data(cfg, data, rank)
    eval_seqs = _check_data(cfg, data, world)
    ident = identity(cfg, data_fingerprint(data))
    with claim(run_dir, "duo train") if rank == 0 else contextlib.nullcontext():
        return _fit(cfg, run_dir, data, eval_seqs, ident, resume, overwrite, rank, world)


def _fit(cfg: TrainConfig, run_dir: Path, data, eval_seqs, ident: dict, resume: bool, overwrite: bool, rank: int,
         world: int) -> TrainResult:
    """The training of :func:`train`, with the run folder locked (rank 0) and the data checked."""
    from tqdm.auto import tqdm

    ident_hash = json_hash(ident)
    finished, extended = _finished_run(run_dir, ident, ident_hash, resume, overwrite, rank)
    if finished is not None:
        return finished

    device = _device(cfg)
    model = build_model(cfg)
    if cfg.stage == "small":
        _load_init(model, final_model_dir(cfg.init_from))
    model.to(device).train()
    named = trainable_parameters(model, cfg)
    optimizer = make_optimizer(named, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    L = model.config.num_hidden_layers

    start, tokens_seen, elapsed, wall = 0, 0, 0.0, 0.0
    ckpt = latest_checkpoint(run_dir) if resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, optimizer, scheduler, ident, other_steps=bool(extended))
        start, tokens_seen, elapsed, wall = state["step"], state["tokens_seen"], state["elapsed"], state["wall"]
    if extended:
        if ckpt is None:
            raise ValueError(f"run folder {run_dir} has no checkpoint to continue from; train it afresh with "
                             f"--overwrite, or use another run folder")
        extended[-1].setdefault("at_step", start)
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs):  # the longer schedule from here on
            group["lr"] = base * lr_factor(start, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio)
    wall_t0 = time.perf_counter() - wall  # wall time: steps, evaluations and checkpoints

    metrics_path = run_dir / METRICS_FILE
    if rank == 0:
        _write_run_files(run_dir, cfg, ident, ident_hash, data, resumed_at=start if ckpt is not None else None,
                         extended=extended)
    _barrier()

    baselines = {name: unigram_perplexity(data.train, seqs, model.config.vocab_size) for name, seqs in eval_seqs.items()}
    log = MetricsLog(metrics_path, rank == 0)
    if ckpt is None:
        log.write(dict(kind="baseline", step=0, unigram_ppl=baselines))

    ddp = _distributed(model, cfg, device, world)
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
        loss_sum = _accumulate_gradients(ddp, x, routes, cfg, micro, world)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        if not (math.isfinite(loss_sum) and math.isfinite(grad_norm)):
            raise NonFiniteError(step + 1, loss_sum, grad_norm, run_dir)
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
        if done % ckpt_every == 0 or done == cfg.steps:  # the last one lets a finished run be extended
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
                   parameters=sum(p.numel() for p in model.parameters()), world_size=world,
                   **(dict(extended=extended) if extended else {}))
    if rank == 0:
        bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise NonFiniteError(cfg.steps, math.nan, math.nan, run_dir, f"non-finite weights in {bad[:3]}")
        with atomic_dir(run_dir / FINAL_DIR) as tmp:
            save_complete_checkpoint(model, getattr(data, "tokenizer", None), tmp)
            write_manifest(tmp)  # every file of final/, checked when the run is loaded or found finished
        write_json(run_dir / SUMMARY_FILE, summary)
    _barrier()
    return TrainResult(run_dir, summary)


def _finished_run(run_dir: Path, ident: dict, ident_hash: str, resume: bool, overwrite: bool,
                  rank: int) -> tuple[TrainResult | None, list[dict]]:
    """``(result, extended)``: the result of a finished run of this identity in ``run_dir`` (None: train; its
    ``final/`` checked) and the lengths the run was extended from.  Clears the folder first when asked to
    (``overwrite`` or not ``resume``; only a duolib folder); ValueError if it belongs to another run.  A
    finished run asked for more steps, nothing else changed, is extended."""
    summary_path = run_dir / SUMMARY_FILE
    if (overwrite or not resume) and rank == 0:
        clear(run_dir)
    _barrier()
    summary = read_run_json(summary_path, "the run's summary", required=False)
    if summary is not None and summary.get("identity_hash") == ident_hash:
        verify_final(run_dir)
        return TrainResult(run_dir, summary, skipped=True), []
    if not (run_dir / CONFIG_FILE).is_file():
        return None, []
    record = read_run_json(run_dir / CONFIG_FILE, "the run's config")
    existing = record.get("identity", {})
    diff = config_differences(existing, ident)
    if not diff:
        return None, record.get("extended", [])  # an extension (if any) interrupted: it resumes
    if resume and summary is not None and only_longer(existing, ident):
        return None, record.get("extended", []) + [dict(from_steps=existing["train"]["steps"])]
    if resume:
        raise ValueError(f"run folder {run_dir} belongs to a run with a different config:\n  " + "\n  ".join(diff)
                         + "\nuse another run folder, or overwrite=True / --overwrite to replace it")
    return None, []


def _write_run_files(run_dir: Path, cfg: TrainConfig, ident: dict, ident_hash: str, data,
                     resumed_at: int | None, extended: list[dict]) -> None:
    """config.json, metrics.jsonl (a resumed run keeps the lines up to its checkpoint step) and tokenizer/;
    a summary left by a shorter run (being extended) is removed: it no longer describes the folder."""
    metrics_path = run_dir / METRICS_FILE
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_leftovers(run_dir)
    write_json(run_dir / CONFIG_FILE, dict(identity=ident, identity_hash=ident_hash, config=cfg.to_dict(),
                                           **(dict(extended=extended) if extended else {})))
    (run_dir / SUMMARY_FILE).unlink(missing_ok=True)
    # a resumed run drops what the killed one logged after its checkpoint; a fresh one starts empty
    start = resumed_at
    keep = [r for r in read_metric_records(metrics_path) if r.get("step", 0) <= start] if start is not None else []
    write_json_lines(metrics_path, keep)
    tok = getattr(data, "tokenizer", None)
    if tok is not None and not (run_dir / TOKENIZER_DIR).is_dir():
        with atomic_dir(run_dir / TOKENIZER_DIR) as tmp:
            tok.save_pretrained(str(tmp))


def _distributed(model, cfg: TrainConfig, device: torch.device, world: int):
    """``model`` wrapped in DistributedDataParallel when there are several processes."""
    if world == 1:
        return model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=_may_leave_modules_unused(model, cfg))


def _accumulate_gradients(ddp, x: torch.Tensor, routes, cfg: TrainConfig, micro: int, world: int) -> float:
    """Forward and backward of one step's local rows in ``cfg.grad_accum`` micro-batches; the mean loss."""
    device = x.device
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
    return loss_sum


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
            out = [evaluate_route_modes(model, seqs, cfg.eval_routes, cfg=cfg, seed=cfg.seed, batch_size=cfg.eval_batch_size)]
    if dist_rank_world()[1] > 1:
        dist.broadcast_object_list(out, src=0)
    return out[0]


def _load_init(model, final: Path) -> None:
    """Weights of a trained Duo model (stage 'small' starts from the stage 'big' result)."""
    src = load_run(final)
    # a saved final/ also holds its code map and the tokenizer's token ids: neither defines the model
    ignore = ("_name_or_path", "auto_map", "bos_token_id", "eos_token_id", "pad_token_id")
    a, b = ({k: v for k, v in model_fields(c.config).items() if k not in ignore} for c in (src, model))
    if not isinstance(src, DuoForCausalLM) or a != b:
        diff = config_differences(a, b)
        raise ValueError(f"init_from={str(final)!r} is not a Duo model of this run's size: " + "; ".join(diff))
    model.load_state_dict(src.state_dict())
