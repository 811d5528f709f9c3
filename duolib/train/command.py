"""``duo train`` (also ``torchrun -m duolib train``): arguments to a TrainConfig, then train and report."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from ..folders import resolve_folder
from .config import TrainConfig
from .distributed import dist_rank_world
from .loop import train


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
    if getattr(args, "quiet", False):  # --no-progress
        overrides["progress"] = False
    if getattr(args, "out", None) is None:  # the book's layout: its Stage-1 run and token caches
        overrides.setdefault("cache_dir", str(default_run_dir(args.profile).parent / "cache"))
    return TrainConfig.from_profile(args.profile, **overrides)


def default_run_dir(profile: str) -> Path:
    """Where ``duo train`` writes without ``--out``: ``runs/<profile>/stage1`` under the project root
    (:func:`duolib.folders.resolve_folder`), the folder in which the book's notebooks (and ``duo data``,
    Binder, papermill) keep the profile's Stage-1 model, so a model trained on the command line is the one
    the chapters read (and is not retrained when its config is the book's)."""
    return resolve_folder(None, Path("runs") / profile / "stage1")


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
        run_dir = resolve_folder(args.out, default_run_dir(cfg.profile))
        result = train(cfg, run_dir, resume=not args.no_resume, overwrite=args.overwrite)
        if dist_rank_world()[0] == 0:
            grown = result.summary.get("extended")
            what = ("already finished (not recomputed)" if result.skipped else
                    f"extended from {grown[-1]['from_steps']} to {result.summary['steps']} steps (continued from "
                    f"its last checkpoint; recorded in its identity, so it is not the fresh run of this "
                    f"length)" if grown else "finished")
            print(f"duo train: {run_dir} {what}; {result.summary['tokens']:,} tokens, "
                  f"{result.summary['train_seconds']:.0f} s of training")
            for r in result.summary["final_eval"]:
                print(f"  {r['holdout']:>10} {r['routes']:>10}  loss {r['loss']:.4f}  ppl {r['ppl']:.2f}"
                      f"  (unigram {result.summary['unigram_ppl'][r['holdout']]:.2f})")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0
