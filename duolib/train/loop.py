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

The run folder's files are described in :mod:`duolib.train.run_folder`; the model and optimiser are
built in :mod:`duolib.train.build`, the data checked in :mod:`duolib.train.inputs`, and the ranks of a
``torchrun`` run handled in :mod:`duolib.train.distributed`.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..data.batches import sample_batch
from ..data.run_data import data_fingerprint, run_data, summary_checksum
from ..routing import BIG, SMALL, training_routes
from ..runfolder import claim, clear, digest, reading, write_manifest, writing
from ..utils import apply_threads, json_hash
from .build import build_model, load_init, make_optimizer, make_scheduler, trainable_parameters
from .config import TrainConfig, hold_steps, lr_factor
from .inputs import check_data, load_data
from .distributed import (barrier, broadcast_from_rank0, dist_rank_world, mean_over_ranks, train_device,
                          wrap_distributed)
from .evaluate import evaluate_route_modes, is_duo, unigram_perplexity
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .run_folder import (CONFIG_FILE, FINAL_DIR, METRICS_FILE, SUMMARY_FILE, TOKENIZER_DIR, MetricsLog, NonFiniteError,
                         atomic_dir, config_differences, final_model_dir, identity, load_run,
                         only_longer, kept_metrics, finished_summary, read_metrics, read_run_json, remove_leftovers,
                         save_complete_checkpoint, save_run_tokenizer, write_json, write_json_lines)


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


def holdout_set(cfg: TrainConfig, data=None) -> dict[str, torch.Tensor]:
    """The evaluation sequences of a run: ``{holdout name: [eval_sequences, seq_len]}`` (prepares the
    corpus unless ``data`` is given), e.g. to evaluate a trained model under other route modes."""
    return check_data(cfg, load_data(cfg, data, 0), 1)


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
    data = load_data(cfg, data, rank)
    eval_seqs = check_data(cfg, data, world)
    ident = identity(cfg, data_fingerprint(data))
    if world == 1 and resume and not overwrite and run_dir.is_dir() and not os.access(run_dir, os.W_OK):
        with reading(run_dir):  # a read-only finished run: nothing needs writing, so no writer's lock either
            if (done := finished_summary(run_dir, ident)) is not None:
                return TrainResult(run_dir, done, skipped=True)
    with claim(run_dir, "duo train") if rank == 0 else contextlib.nullcontext():
        return _fit(cfg, run_dir, data, eval_seqs, ident, resume, overwrite, rank, world)


@dataclass
class _Training:
    """What the steps of one training share: the run, the model and its optimiser, and the counters a
    checkpoint carries (built by :func:`_setup`, moved forward by :func:`_resume`)."""

    cfg: TrainConfig
    run_dir: Path
    data: object
    eval_seqs: dict[str, torch.Tensor]
    ident: dict
    rank: int
    world: int
    device: torch.device
    model: nn.Module
    named: list[tuple[str, nn.Parameter]]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    step: int = 0  # the first step still to run
    tokens_seen: int = 0
    elapsed: float = 0.0  # seconds inside training steps
    wall_t0: float = field(default_factory=time.perf_counter)  # wall time: steps, evaluations and checkpoints

    def wall(self) -> float:
        return time.perf_counter() - self.wall_t0


def _fit(cfg: TrainConfig, run_dir: Path, data, eval_seqs, ident: dict, resume: bool, overwrite: bool, rank: int,
         world: int) -> TrainResult:
    """The training of :func:`train`, with the run folder locked (rank 0) and the data checked."""
    finished, extended = _finished_run(run_dir, ident, json_hash(ident), resume, overwrite, rank)
    if finished is not None:
        return finished
    t = _setup(cfg, run_dir, data, eval_seqs, ident, rank, world)
    ckpt = latest_checkpoint(run_dir) if resume else None
    _resume(t, ckpt, extended)
    # an extended run is not the fresh run of its length: its recorded identity says how it came about
    recorded = {**ident, "extended": extended} if extended else ident
    ident_hash = json_hash(recorded)
    if rank == 0:
        _write_run_files(run_dir, cfg, recorded, ident_hash, data, resumed_at=t.step if ckpt is not None else None,
                         extended=extended)
    barrier()

    baselines = {name: unigram_perplexity(data.train, seqs, t.model.config.vocab_size)
                 for name, seqs in eval_seqs.items()}
    log = MetricsLog(run_dir / METRICS_FILE, rank == 0)
    if ckpt is None:
        log.write(dict(kind="baseline", step=0, unigram_ppl=baselines))
    last_eval = _step_loop(t, log)
    if last_eval is None:  # resumed after the last step (a kill between the last step and the summary)
        last_eval = _eval(t.model, eval_seqs, cfg, rank)
    summary = dict(identity_hash=ident_hash, steps=cfg.steps, tokens=t.tokens_seen, train_seconds=t.elapsed,
                   wall_seconds=t.wall(),
                   final_eval=last_eval, unigram_ppl=baselines, arch=cfg.arch, stage=cfg.stage,
                   ffn_width=cfg.ffn_width() if cfg.arch == "dense" else None,
                   parameters=sum(p.numel() for p in t.model.parameters()), world_size=world,
                   **(dict(extended=extended) if extended else {}))
    if rank == 0:
        _save_final(t, summary)
    barrier()
    return TrainResult(run_dir, summary)


def _setup(cfg: TrainConfig, run_dir: Path, data, eval_seqs, ident: dict, rank: int, world: int) -> _Training:
    """The freshly initialised model on this rank's device (stage 'small': with the stage 'big' weights),
    its trainable parameters, optimiser and learning-rate schedule."""
    device = train_device(cfg)
    model = build_model(cfg)
    if cfg.stage == "small":
        load_init(model, final_model_dir(cfg.init_from))
    model.to(device).train()
    named = trainable_parameters(model, cfg)
    optimizer = make_optimizer(named, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    return _Training(cfg, run_dir, data, eval_seqs, ident, rank, world, device, model, named, optimizer, scheduler)


def _resume(t: _Training, ckpt: Path | None, extended: list[dict]) -> None:
    """Load the newest checkpoint (if any) into ``t``; an extended run continues on the longer schedule."""
    cfg, wall = t.cfg, 0.0
    if ckpt is not None:
        state = load_checkpoint(ckpt, t.model, t.optimizer, t.scheduler, t.ident, other_steps=bool(extended))
        t.step, t.tokens_seen, t.elapsed, wall = state["step"], state["tokens_seen"], state["elapsed"], state["wall"]
    if extended:
        if ckpt is None:
            raise ValueError(f"run folder {t.run_dir} has no checkpoint to continue from; train it afresh with "
                             f"--overwrite, or use another run folder")
        extended[-1].setdefault("at_step", t.step)
        for group, base in zip(t.optimizer.param_groups, t.scheduler.base_lrs):  # the longer schedule from here on
            group["lr"] = base * lr_factor(t.step, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio, hold_steps(cfg))
    t.wall_t0 = time.perf_counter() - wall


def _step_loop(t: _Training, log: MetricsLog) -> list[dict] | None:
    """Steps ``t.step .. cfg.steps - 1`` with their logs, evaluations and checkpoints; the last evaluation
    (None when no step was left to run)."""
    from tqdm.auto import tqdm

    cfg, rank, run_dir = t.cfg, t.rank, t.run_dir
    ddp = wrap_distributed(t.model, cfg, t.device, t.world)
    local_rows = list(range(rank, cfg.batch_size, t.world))
    ckpt_every = cfg.checkpoint_every or cfg.eval_every
    bar = tqdm(total=cfg.steps, initial=t.step, disable=not (cfg.progress and rank == 0),
               desc=f"train {run_dir.name}", dynamic_ncols=True)
    last_eval = None
    for step in range(t.step, cfg.steps):
        t0 = time.perf_counter()
        loss_sum, grad_norm, lr = _train_step(t, ddp, step, local_rows)
        dt = time.perf_counter() - t0
        t.elapsed += dt
        t.tokens_seen += cfg.batch_size * cfg.seq_len
        done = step + 1
        tps = cfg.batch_size * cfg.seq_len / dt
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum:.3f}", tok_s=f"{tps:,.0f}")
        if done % cfg.log_every == 0 or done == cfg.steps or done == 1:
            log.write(dict(kind="train", step=done, loss=loss_sum, lr=lr, grad_norm=grad_norm, tokens=t.tokens_seen,
                           tokens_per_s=tps, elapsed=t.elapsed, wall=t.wall()))
        if done % cfg.eval_every == 0 or done == cfg.steps:
            last_eval = _eval(t.model, t.eval_seqs, cfg, rank)
            for r in last_eval:
                log.write(dict(kind="eval", step=done, **r))
            if rank == 0:
                bar.write(f"step {done}: " + ", ".join(f"{r['holdout']}/{r['routes']} {r['ppl']:.1f}" for r in last_eval))
        if done % ckpt_every == 0 or done == cfg.steps:  # the last one lets a finished run be extended
            if rank == 0:
                save_checkpoint(run_dir, done, t.model, t.optimizer, t.scheduler, t.ident,
                                dict(tokens_seen=t.tokens_seen, elapsed=t.elapsed, wall=t.wall()),
                                cfg.keep_checkpoints)
            barrier()
    bar.close()
    return last_eval


def _train_step(t: _Training, ddp, step: int, local_rows: list[int]) -> tuple[float, float, float]:
    """One optimiser step on this rank's rows of the global batch of ``step``: the loss (mean over ranks),
    the gradient norm before clipping and the learning rate used."""
    cfg, L = t.cfg, t.model.config.num_hidden_layers
    routes_mode = cfg.routes_mode()
    x = sample_batch(t.data.train, step, cfg.batch_size, cfg.seq_len, cfg.seed, t.rank, t.world).to(t.device)
    routes = None
    if is_duo(t.model):
        if routes_mode == "random":
            routes = training_routes(cfg.seed, step, local_rows, cfg.seq_len, L, cfg.p_big, cfg.p_skip).to(t.device)
        else:
            routes = [BIG if routes_mode == "big" else SMALL] * L
    loss_sum = _accumulate_gradients(ddp, x, routes, cfg, len(local_rows) // cfg.grad_accum, t.world)
    grad_norm = float(torch.nn.utils.clip_grad_norm_([p for _, p in t.named], cfg.grad_clip))
    if not (math.isfinite(loss_sum) and math.isfinite(grad_norm)):
        raise NonFiniteError(step + 1, loss_sum, grad_norm, t.run_dir)
    lr = t.optimizer.param_groups[0]["lr"]
    t.optimizer.step()
    t.scheduler.step()
    t.optimizer.zero_grad(set_to_none=True)
    return mean_over_ranks(loss_sum, t.device, t.world), grad_norm, lr


def _save_final(t: _Training, summary: dict) -> None:
    """final/ (checkpoint and manifest) and summary.json (with the finished log's digest), all weights finite."""
    bad = [n for n, p in t.model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise NonFiniteError(t.cfg.steps, math.nan, math.nan, t.run_dir, f"non-finite weights in {bad[:3]}")
    summary["metrics"] = digest(t.run_dir / METRICS_FILE)  # the finished log, checked with the run (verify_run)
    with writing(t.run_dir / FINAL_DIR, "the trained model"), atomic_dir(t.run_dir / FINAL_DIR) as tmp:
        save_complete_checkpoint(t.model, getattr(t.data, "tokenizer", None), tmp, t.cfg.to_dict(), summary)
        write_manifest(tmp)  # every file of final/, checked when the run is loaded or found finished
    summary["checksum"] = summary_checksum(summary)  # in place: the returned result holds it too
    write_json(t.run_dir / SUMMARY_FILE, summary)


def _finished_run(run_dir: Path, ident: dict, ident_hash: str, resume: bool, overwrite: bool,
                  rank: int) -> tuple[TrainResult | None, list[dict]]:
    """``(result, extended)``: the result of a finished run of this identity in ``run_dir`` (None: train; its
    ``final/`` checked) and the lengths the run was extended from.  Clears the folder first when asked to
    (``overwrite`` or not ``resume``; only a duolib folder); ValueError if it belongs to another run.  A
    finished run asked for more steps, nothing else changed, is extended."""
    summary_path = run_dir / SUMMARY_FILE
    if (overwrite or not resume) and rank == 0:
        clear(run_dir, keep=(METRICS_FILE,))  # the old log stays until the new run writes its own
    barrier()
    if (done := finished_summary(run_dir, ident)) is not None:
        return TrainResult(run_dir, done, skipped=True), []
    summary = read_run_json(summary_path, "the run's summary", required=False)
    if not (run_dir / CONFIG_FILE).is_file():
        return None, []
    record = read_run_json(run_dir / CONFIG_FILE, "the run's config")
    existing = {k: v for k, v in record.get("identity", {}).items() if k != "extended"}
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
    write_json_lines(metrics_path, kept_metrics(metrics_path, resumed_at))
    tok = getattr(data, "tokenizer", None)
    if tok is not None and not (run_dir / TOKENIZER_DIR).is_dir():
        save_run_tokenizer(tok, run_dir / TOKENIZER_DIR, cfg.duo_config().max_position_embeddings)


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
                loss = ddp(xi, labels=xi, use_cache=False, **kw).loss
            (loss / cfg.grad_accum).backward()
        loss_sum += float(loss.detach()) / cfg.grad_accum
    return loss_sum


def _eval(model, seqs, cfg: TrainConfig, rank: int) -> list[dict]:
    """Evaluate on rank 0; every rank gets the records."""
    records = None
    if rank == 0:
        device = next(model.parameters()).device
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
            records = evaluate_route_modes(model, seqs, cfg.eval_routes, cfg=cfg, seed=cfg.seed,
                                           batch_size=cfg.eval_batch_size)
    return broadcast_from_rank0(records)
