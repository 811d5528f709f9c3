"""Stage 1 of Duo-LLM: the random-routing training loop, :func:`train`.

Command line: ``duo train --profile default --out runs/default/stage1`` (``python -m duolib train`` takes
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

The run folder (its files, lock, checkpoints and log) is a :class:`duolib.train.run_folder.RunFolder`; the
model and optimiser are built in :mod:`duolib.train.build`, the data checked in :mod:`duolib.train.inputs`,
and the ranks of a ``torchrun`` run handled in :mod:`duolib.train.distributed`.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..data.batches import sample_batch
from ..data.run_data import data_fingerprint, run_data
from ..routing import BIG, SMALL, training_routes
from ..utils import apply_threads
from .build import build_model, load_init, make_optimizer, make_scheduler, trainable_parameters
from .config import TrainConfig, hold_steps, lr_factor
from .distributed import broadcast_from_rank0, dist_rank_world, mean_over_ranks, train_device, wrap_distributed
from .evaluate import evaluate_route_modes, is_duo, unigram_perplexity
from .inputs import check_data, load_data
from .run_folder import FINAL_DIR, NonFiniteError, RunFolder, final_model_dir, identity, load_run, read_metrics


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
def torch_settings(cfg: TrainConfig):
    """The config's thread count and deterministic algorithms inside; the caller's settings after."""
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
    if cfg.stage == "small" and not (final_model_dir(cfg.init_from) / "config.json").is_file():
        raise ValueError(f"init_from={cfg.init_from!r} holds no trained model; train the stage='big' run first")
    with torch_settings(cfg):
        data = load_data(cfg, data, rank)
        eval_seqs = check_data(cfg, data, world)
        folder = RunFolder(run_dir if run_dir is not None else Path("runs") / cfg.profile,
                           identity(cfg, data_fingerprint(data)), rank, world)
        with folder.open(resume=resume, overwrite=overwrite) as start:
            if start.finished is not None:
                return TrainResult(folder.path, start.finished, skipped=True)
            return fit(cfg, folder, start, data, eval_seqs)


def fit(cfg: TrainConfig, folder: RunFolder, start, data, eval_seqs: dict[str, torch.Tensor]) -> TrainResult:
    """Build the model and optimiser, resume from ``start`` (:meth:`RunFolder.open`), run the remaining steps
    with their logs, evaluations and checkpoints, and finish the folder."""
    from tqdm.auto import tqdm

    rank, world, device = folder.rank, folder.world, train_device(cfg)
    model = build_model(cfg)
    if cfg.stage == "small":
        load_init(model, final_model_dir(cfg.init_from))
    model.to(device).train()
    named = trainable_parameters(model, cfg)
    optimizer = make_optimizer(named, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    state = folder.load(start, model, optimizer, scheduler)
    first, tokens_seen, elapsed = state["step"], state["tokens_seen"], state["elapsed"]
    wall_t0 = time.perf_counter() - state["wall"]
    if start.extended:  # the longer schedule from the checkpoint on
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base * lr_factor(first, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio, hold_steps(cfg))
    folder.begin(cfg, getattr(data, "tokenizer", None), resumed_at=first if start.checkpoint is not None else None)

    baselines = {h: unigram_perplexity(data.train, seqs, model.config.vocab_size) for h, seqs in eval_seqs.items()}
    if start.checkpoint is None:
        folder.log(dict(kind="baseline", step=0, unigram_ppl=baselines))
    ddp = wrap_distributed(model, cfg, device, world)
    local_rows = list(range(rank, cfg.batch_size, world))
    bar = tqdm(total=cfg.steps, initial=first, disable=not (cfg.progress and rank == 0),
               desc=f"train {folder.path.name}", dynamic_ncols=True)
    last_eval = None
    for step in range(first, cfg.steps):
        t0 = time.perf_counter()
        x, routes = step_inputs(cfg, data, model, step, local_rows, rank, world, device)
        loss = accumulate_gradients(ddp, x, routes, cfg, len(local_rows) // cfg.grad_accum, world)
        grad_norm = float(torch.nn.utils.clip_grad_norm_([p for _, p in named], cfg.grad_clip))
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):  # stop before the optimiser applies it
            raise NonFiniteError(step + 1, loss, grad_norm, folder.path)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss = mean_over_ranks(loss, device, world)
        dt = time.perf_counter() - t0
        elapsed += dt
        tokens_seen += cfg.batch_size * cfg.seq_len
        done, tps = step + 1, cfg.batch_size * cfg.seq_len / dt
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}")
        if done % cfg.log_every == 0 or done == cfg.steps or done == 1:
            folder.log(dict(kind="train", step=done, loss=loss, lr=lr, grad_norm=grad_norm, tokens=tokens_seen,
                            tokens_per_s=tps, elapsed=elapsed, wall=time.perf_counter() - wall_t0))
        if done % cfg.eval_every == 0 or done == cfg.steps:
            last_eval = evaluate(model, eval_seqs, cfg, rank)
            for r in last_eval:
                folder.log(dict(kind="eval", step=done, **r))
            if rank == 0:
                bar.write(f"step {done}: " + ", ".join(f"{r['holdout']}/{r['routes']} {r['ppl']:.1f}" for r in last_eval))
        if done % (cfg.checkpoint_every or cfg.eval_every) == 0 or done == cfg.steps:  # the last: extendable
            folder.save_checkpoint(done, model, optimizer, scheduler,
                                   dict(tokens_seen=tokens_seen, elapsed=elapsed, wall=time.perf_counter() - wall_t0),
                                   cfg.keep_checkpoints)
    bar.close()
    if last_eval is None:  # resumed after the last step (a kill between the last step and the summary)
        last_eval = evaluate(model, eval_seqs, cfg, rank)
    summary = dict(identity_hash=folder.identity_hash, steps=cfg.steps, tokens=tokens_seen, train_seconds=elapsed,
                   wall_seconds=time.perf_counter() - wall_t0, final_eval=last_eval, unigram_ppl=baselines,
                   arch=cfg.arch, stage=cfg.stage, ffn_width=cfg.ffn_width() if cfg.arch == "dense" else None,
                   parameters=sum(p.numel() for p in model.parameters()), world_size=world,
                   **(dict(extended=folder.extended) if folder.extended else {}))
    folder.finish(model, getattr(data, "tokenizer", None), cfg, summary)
    return TrainResult(folder.path, summary)


def step_inputs(cfg: TrainConfig, data, model, step: int, local_rows: list[int], rank: int, world: int, device):
    """This rank's rows of the global batch of ``step`` and their routes (random routing: drawn from
    ``(seed, step, row)``; all-big / all-small stages: one route for every token; a dense model: None)."""
    x = sample_batch(data.train, step, cfg.batch_size, cfg.seq_len, cfg.seed, rank, world).to(device)
    if not is_duo(model):
        return x, None
    L, mode = model.config.num_hidden_layers, cfg.routes_mode()
    if mode == "random":
        return x, training_routes(cfg.seed, step, local_rows, cfg.seq_len, L, cfg.p_big, cfg.p_skip).to(device)
    return x, [BIG if mode == "big" else SMALL] * L


def accumulate_gradients(ddp, x: torch.Tensor, routes, cfg: TrainConfig, micro: int, world: int) -> float:
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


def evaluate(model, seqs, cfg: TrainConfig, rank: int) -> list[dict]:
    """The holdout evaluation under ``cfg.eval_routes``, computed on rank 0; every rank gets the records."""
    records = None
    if rank == 0:
        device = next(model.parameters()).device
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
            records = evaluate_route_modes(model, seqs, cfg.eval_routes, cfg=cfg, seed=cfg.seed,
                                           batch_size=cfg.eval_batch_size)
    return broadcast_from_rank0(records)
