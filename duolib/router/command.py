"""The ``duo route`` command: train a router on a model (or a random tiny one), evaluate it, save it."""

from __future__ import annotations

import torch

from ..config import DuoConfig, check_context
from ..data.batches import holdout_sequences, sample_batch
from ..data.corpus import prepare
from ..data.run_data import data_for_model, model_folder, reading_model
from ..fileio import atomic_write
from ..model import DuoForCausalLM
from ..profiles import get_profile
from ..routing import BIG, SMALL, FixedRoutes
from ..runfolder import check_usable, claim
from .budgets import DEFAULT_TAU0, DEFAULT_TAU_MIN, parse_options, setting_fractions
from .evaluate import evaluate_routers, history_frame
from .policy import RouterPolicy, is_duo_model
from .train import check_finite, train_router


def load_base(spec: str):
    """A model folder, or a `duo train` run folder (its ``final/``, checked against its manifest)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_folder(spec)).eval()


def cli_main(args) -> int:
    """``duo route``: train a router on a model (or a random tiny one), evaluate it, save it to ``--out``."""
    knobs = get_profile(args.profile).get("router", {})
    knob = lambda name: getattr(args, name) if getattr(args, name, None) is not None else knobs[name]  # noqa: E731
    steps, batch_size, seq_len, n_eval = knob("steps"), knob("batch_size"), knob("seq_len"), knob("eval_sequences")
    for name, v in dict(steps=steps, batch_size=batch_size, seq_len=seq_len, eval_sequences=n_eval).items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"--{name.replace('_', '-')} {v!r} must be a positive integer")
    check_finite(lr=knob("lr"), alpha=knob("alpha"))
    out = check_usable(args.out)
    if (out / "router").exists() and not getattr(args, "overwrite", False):  # checked before any training
        raise ValueError(f"{out / 'router'} already holds a router; give --overwrite to replace it, or another --out")
    with reading_model(None if args.random_init else args.model):  # the run's model and data, no writer between
        model = route_base_model(args)
        check_context(model.config, seq_len, "--seq-len")
        batches, holdout = route_data(args, int(model.config.vocab_size), batch_size, seq_len, n_eval)
    options, budget, option_budget = route_budget(args, knobs)
    router = RouterPolicy.for_model(model, options, seed=args.seed)
    history = train_router(model, router, batches, steps, budget=budget, option_budget=option_budget,
                           alpha=knob("alpha"), lr=knob("lr"), tau0=knobs.get("tau0", DEFAULT_TAU0),
                           tau_min=knobs.get("tau_min", DEFAULT_TAU_MIN), seed=args.seed, progress=not args.quiet)
    L = int(model.config.num_hidden_layers)
    policies = {"router": router, "all big": FixedRoutes([BIG] * L), "all small": FixedRoutes([SMALL] * L)}
    if is_duo_model(model):
        table = evaluate_routers(model, policies, holdout)
    else:
        table = evaluate_routers(model, {"router": router}, holdout)
    with claim(out, "duo route"):
        for name in ("eval.csv", "history.csv"):  # written last: present only for a finished run
            (out / name).unlink(missing_ok=True)
        router.save(out / "router", model)
        atomic_write(out / "history.csv", lambda tmp: history_frame(history).to_csv(tmp, index=False))
        atomic_write(out / "eval.csv", lambda tmp: table.to_csv(tmp, index=False))
    cols = ["method", "mean_big_layers", "frac_skip", "frac_small", "frac_big", "ppl", "flops_per_token"]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"router saved to {out / 'router'}; history.csv and eval.csv in {out}")
    return 0


def route_base_model(args):
    """The model ``duo route`` trains a router on: ``--model``, or a random one of ``--profile``'s size."""
    if args.random_init:
        torch.manual_seed(args.seed)
        return DuoForCausalLM(DuoConfig.preset(args.profile)).eval()
    if args.model:
        return load_base(args.model)
    raise ValueError("give --model (a model or `duo train` run folder) or --random-init")


def route_data(args, vocab: int, batch_size: int, seq_len: int, n_eval: int):
    """(training batches ``step -> [batch_size, seq_len]``, holdout ``[n_eval, seq_len]``) of ``--corpus``:
    random tokens for ``random`` (the default with ``--random-init``), else the corpus with the model's tokenizer."""
    corpus = args.corpus or ("random" if args.random_init else None)
    if corpus == "random":
        def batches(step):
            return torch.randint(0, vocab, (batch_size, seq_len), generator=torch.Generator().manual_seed(
                args.seed * 1_000_003 + step))
        holdout = torch.randint(0, vocab, (n_eval, seq_len),
                                generator=torch.Generator().manual_seed(987_654 + args.seed))
        return batches, holdout
    if args.random_init:  # no trained tokenizer to keep: the corpus's own
        prepared = prepare(corpus, vocab_size=vocab, progress=not args.quiet)
    else:
        prepared = data_for_model(args.model, corpus, vocab, progress=not args.quiet)

    def batches(step):
        return sample_batch(prepared.train, step, batch_size, seq_len, seed=args.seed)
    return batches, holdout_sequences(next(iter(prepared.holdout.values())), n_eval, seq_len)


def route_budget(args, knobs: dict) -> tuple[tuple[int, ...], float | None, str | None]:
    """(router options, budget in big layers, setting name) from ``--setting`` or ``--budget`` / ``--options``
    (the profile's first budget when neither is given)."""
    if args.setting and args.budget is not None:
        raise ValueError("give --budget or --setting, not both")
    if args.setting:  # its options make the router before train_router's budget_targets checks the name
        return tuple(setting_fractions(args.setting)), None, args.setting
    budget = args.budget if args.budget is not None else knobs["budgets"][0]
    return parse_options(args.options or "small,big"), budget, None
