"""The ``duo route`` command: train a router on a model (or a random tiny one), evaluate it, save it."""

from __future__ import annotations

import torch

from ..config import DuoConfig, check_context
from ..data.batches import holdout_sequences, sample_batch
from ..data.corpus import prepare
from ..data.run_data import data_for_model, model_folder, reading_model
from ..fileio import atomic_write
from ..model import DuoForCausalLM
from ..routing import BIG, SMALL, FixedRoutes
from ..folders import check_usable, claim, resolve_folder
from .budgets import parse_options, setting_fractions
from .config import RouterConfig
from .evaluate import evaluate_routers, history_frame
from .policy import RouterPolicy, is_duo_model
from .train import train_router


def load_base(spec: str):
    """A model folder, or a `duo train` run folder (its ``final/``, checked against its manifest)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_folder(spec)).eval()


def cli_main(args) -> int:
    """``duo route``: its flags to a :class:`RouterConfig` and the run's inputs, then :func:`run_route`."""
    knobs = {k: getattr(args, k, None) for k in ("steps", "batch_size", "seq_len", "lr", "alpha", "eval_sequences")}
    return run_route(RouterConfig.from_profile(args.profile, **knobs), args.out, model=args.model,
                     random_init=args.random_init, corpus=args.corpus, budget=args.budget, setting=args.setting,
                     choices=args.choices, seed=args.seed, overwrite=args.overwrite, progress=not args.quiet)


def run_route(cfg: RouterConfig, out, *, model: str | None = None, random_init: bool = False,
              corpus: str | None = None, budget: float | None = None, setting: str | None = None,
              choices: str | None = None, seed: int = 0, overwrite: bool = False, progress: bool = True) -> int:
    """Train a router on ``model`` (a model or `duo train` run folder; or a random one of ``cfg.profile``'s
    size), evaluate it against all-big and all-small, save it with its history to ``out``.  ``budget`` (big
    layers per token, default the profile's first) with ``choices``, or a skip ``setting``."""
    out = check_usable(resolve_folder(out, out))
    if (out / "router").exists() and not overwrite:  # checked before any training
        raise ValueError(f"{out / 'router'} already holds a router; give --overwrite to replace it, or another --out")
    options, budget, option_budget = route_budget(cfg, budget, setting, choices)
    with reading_model(None if random_init else model):  # the run's model and data, no writer between
        base = route_base_model(cfg.profile, model, random_init, seed)
        check_context(base.config, cfg.seq_len, "--seq-len")
        batches, holdout = route_data(base, cfg, model, random_init, corpus, seed, progress)
    router = RouterPolicy.for_model(base, options, seed=seed)
    history = train_router(base, router, batches, cfg.steps, budget=budget, option_budget=option_budget,
                           alpha=cfg.alpha, lr=cfg.lr, tau0=cfg.tau0, tau_min=cfg.tau_min, seed=seed,
                           progress=progress)
    L = int(base.config.num_hidden_layers)
    policies = {"router": router}
    if is_duo_model(base):
        policies.update({"all big": FixedRoutes([BIG] * L), "all small": FixedRoutes([SMALL] * L)})
    table = evaluate_routers(base, policies, holdout)
    with claim(out, "duo route"):
        for name in ("eval.csv", "history.csv"):  # written last: present only for a finished run
            (out / name).unlink(missing_ok=True)
        router.save(out / "router", base)
        atomic_write(out / "history.csv", lambda tmp: history_frame(history).to_csv(tmp, index=False))
        atomic_write(out / "eval.csv", lambda tmp: table.to_csv(tmp, index=False))
    cols = ["method", "mean_big_layers", "frac_skip", "frac_small", "frac_big", "ppl", "flops_per_token"]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"router saved to {out / 'router'}; history.csv and eval.csv in {out}")
    return 0


def route_base_model(profile: str, model: str | None, random_init: bool, seed: int):
    """The model ``duo route`` trains a router on: ``model``, or a random one of ``profile``'s size."""
    if random_init:
        torch.manual_seed(seed)
        return DuoForCausalLM(DuoConfig.preset(profile)).eval()
    if model:
        return load_base(model)
    raise ValueError("give --model (a model or `duo train` run folder) or --random-init")


def route_data(base, cfg: RouterConfig, model: str | None, random_init: bool, corpus: str | None, seed: int,
               progress: bool):
    """(training batches ``step -> [batch_size, seq_len]``, holdout ``[eval_sequences, seq_len]``) of ``corpus``:
    random tokens for ``random`` (the default with ``random_init``), else the corpus with the model's tokenizer."""
    vocab, batch_size, seq_len, n_eval = int(base.config.vocab_size), cfg.batch_size, cfg.seq_len, cfg.eval_sequences
    corpus = corpus or ("random" if random_init else None)
    if corpus == "random":
        def batches(step):
            return torch.randint(0, vocab, (batch_size, seq_len), generator=torch.Generator().manual_seed(
                seed * 1_000_003 + step))
        holdout = torch.randint(0, vocab, (n_eval, seq_len), generator=torch.Generator().manual_seed(987_654 + seed))
        return batches, holdout
    if random_init:  # no trained tokenizer to keep: the corpus's own
        prepared = prepare(corpus, vocab_size=vocab, progress=progress)
    else:
        prepared = data_for_model(model, corpus, vocab, progress=progress)

    def batches(step):
        return sample_batch(prepared.train, step, batch_size, seq_len, seed=seed)
    return batches, holdout_sequences(next(iter(prepared.holdout.values())), n_eval, seq_len)


def route_budget(cfg: RouterConfig, budget: float | None, setting: str | None,
                 choices: str | None) -> tuple[tuple[int, ...], float | None, str | None]:
    """(router options, budget in big layers, setting name) from ``setting`` or ``budget`` / ``choices`` (the
    profile's first budget when neither is given)."""
    if setting and budget is not None:
        raise ValueError("give --budget or --setting, not both")
    if setting:  # its options make the router before train_router's budget_targets checks the name
        if choices:
            raise ValueError("--choices goes with --budget; a --setting names its own options")
        return tuple(setting_fractions(setting)), None, setting
    return parse_options(choices or "small,big"), cfg.budgets[0] if budget is None else budget, None
