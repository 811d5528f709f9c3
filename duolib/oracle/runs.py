"""Run folders of ``duo oracle``: tables and summaries of loss matrices."""

from __future__ import annotations

import numpy as np
import torch

from .. import checks
from .config import OracleConfig
from .engine import loss_matrix
from .difficulty import token_difficulty
from .reductions import SEMANTICS, LossMatrix
from ..routing import BIG, ROUTE_NAMES, SKIP, SMALL, pattern_to_str
from ..config import DuoConfig
from ..model import DuoForCausalLM
from ..data.corpus import prepare
from ..data.synthetic import LABEL_NAMES
from ..data.batches import holdout_sequences
from ..data.run_data import data_for_model, model_folder, reading_model
from ..fileio import atomic_write_text
from ..folders import check_usable, claim, clear, resolve_folder
from ..manifests import verify_manifest, write_manifest


def write_oracle_tables(matrix: LossMatrix, folder, *, k: int | None = None, n_random: int = 100, seed: int = 0,
                        tokenizer=None, labels=None, label_names=None, save_matrix: bool = False) -> dict:
    """Write one matrix's tables into ``folder`` and return its summary:

    ``summary.json`` (:meth:`LossMatrix.summary` + engine stats), ``per_k.csv`` (perplexity of each
    reduction per budget), ``patterns.csv`` (mean loss / perplexity per pattern), ``usage.csv``
    (fraction of tokens at each layer x position whose oracle pattern at each budget uses big, and
    skip when skip is a choice), ``difficulty.parquet`` (:func:`~duolib.oracle.difficulty.token_difficulty`
    at budget ``k``, when all-small and all-big are in the matrix) and, with ``save_matrix``,
    ``losses.npy`` ``[P, N]`` + ``patterns.npy`` ``[P, L]``."""
    import json
    from pathlib import Path

    import pandas as pd

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    summary = matrix.summary(n_random=n_random, seed=seed)
    summary["stats"] = matrix.stats
    rows = [{"k": int(kk), **{key: v for key, v in d.items()}} for kk, d in summary["per_k"].items()]
    pd.DataFrame(rows).to_csv(folder / "per_k.csv", index=False)
    mean = matrix.losses.double().mean(1)
    per_pattern = {"pattern": [pattern_to_str(p) for p in matrix.patterns], "n_big": matrix.n_big.numpy(),
                   "mean_loss": mean.numpy(), "perplexity": mean.exp().numpy()}
    pd.DataFrame(per_pattern).to_csv(folder / "patterns.csv", index=False)
    usage = []
    codes = [BIG] + ([SKIP] if SKIP in matrix.choices else [])
    for kk in sorted(set(matrix.n_big.tolist())):
        for code in codes:
            u = matrix.winner_usage(kk, code)  # [L, T-1]
            for layer in range(u.shape[0]):
                usage += [{"k": kk, "route": ROUTE_NAMES[code], "layer": layer, "position": t, "fraction": float(f)}
                          for t, f in enumerate(u[layer].tolist())]
    pd.DataFrame(usage).to_csv(folder / "usage.csv", index=False)
    if k is not None and SMALL in matrix.choices and BIG in matrix.choices:
        table = token_difficulty(matrix, k, tokenizer=tokenizer, labels=labels, label_names=label_names)
        table.to_parquet(folder / "difficulty.parquet", index=False)
        summary["difficulty_k"] = k
    if save_matrix:
        np.save(folder / "losses.npy", matrix.losses.numpy())
        np.save(folder / "patterns.npy", matrix.patterns.numpy())
    atomic_write_text(folder / "summary.json", json.dumps(summary, indent=2, default=float))
    return summary


def read_summary(out) -> dict:
    """The ``summary.json`` of a finished ``duo oracle`` folder; ValueError when the run is incomplete
    (written last, so a run killed before the end leaves none) or unreadable."""
    import json
    from pathlib import Path

    path = Path(out) / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        summary = None
    if not isinstance(summary, dict) or not summary.get("complete"):
        raise ValueError(f"{path} is missing or unreadable: the `duo oracle` run into {out} did not finish; rerun it")
    verify_manifest(out, f"the `duo oracle` results in {out} were changed after they were written: rerun it")
    return summary


def oracle_sequences(model_spec: str | None, random_init: bool, corpus: str | None, seed: int, vocab_size: int,
                     n: int, seq_len: int):
    """``({holdout: (ids, labels)}, tokenizer, corpus, label names)`` of ``duo oracle``: random ids, or a
    corpus tokenised with the model's own tokenizer (a run's: :func:`duolib.data.run_data.data_for_model`)."""
    corpus = corpus or ("random" if random_init else None)
    if corpus == "random":
        g = torch.Generator().manual_seed(seed)
        return {"random": (torch.randint(0, vocab_size, (n, seq_len), generator=g), None)}, None, corpus, None
    if random_init:  # no trained tokenizer to keep: the corpus's own
        prep = prepare(corpus, vocab_size=vocab_size, progress=False)
    else:
        prep = data_for_model(model_spec, corpus, vocab_size)
    sequences = {}
    for name, stream in prep.holdout.items():
        labelled = getattr(stream, "labels", None) is not None
        got = holdout_sequences(stream, n, seq_len, with_labels=labelled)
        sequences[name] = got if labelled else (got, None)
    return sequences, prep.tokenizer, prep.corpus, LABEL_NAMES


def cli_main(args) -> int:
    """``duo oracle``: its flags to an :class:`OracleConfig` and the run's inputs, then :func:`run_oracle`."""
    both = args.semantics == "both"
    cfg = OracleConfig.from_profile(args.profile, n_sequences=args.n_sequences, seq_len=args.seq_len,
                                    choices=args.choices, semantics=None if both else args.semantics,
                                    difficulty_k=args.budget)
    return run_oracle(cfg, args.out, model=args.model, random_init=args.random_init, corpus=args.corpus,
                      seed=args.seed, both_semantics=both, save_matrix=args.save_matrix, progress=not args.quiet)


def run_oracle(cfg: OracleConfig, out, *, model: str | None = None, random_init: bool = False,
               corpus: str | None = None, seed: int = 0, both_semantics: bool = False, save_matrix: bool = False,
               progress: bool = True) -> int:
    """Load ``model`` (a model or `duo train` run folder; or a random one of ``cfg.profile``'s size), take
    ``cfg.n_sequences`` holdout windows of ``cfg.seq_len`` tokens, and write the tables of every holdout and
    semantics (``cfg.semantics``, or both) into ``out``.

    The output folder is locked while it is written; its previous results are removed first and
    ``summary.json`` (``"complete": true``) is written last, so a killed run leaves no summary
    (:func:`read_summary` refuses such a folder) and never a mix of two runs."""
    import json

    if bool(model) == bool(random_init):
        raise ValueError("give exactly one of --model DIR and --random-init")
    n, seq_len = cfg.n_sequences, cfg.seq_len
    out = check_usable(resolve_folder(out, out))
    torch.manual_seed(seed)
    with reading_model(model):  # the model, tokenizer and config of one run: no writer in between
        if model:
            from transformers import AutoModelForCausalLM

            net = AutoModelForCausalLM.from_pretrained(model_folder(model)).eval()
        else:
            net = DuoForCausalLM(DuoConfig.preset(cfg.profile)).eval()
        mc = net.config
        sequences, tokenizer, corpus, label_names = oracle_sequences(model, random_init, corpus, seed,
                                                                     mc.vocab_size, n, seq_len)
    used = max(int(ids.shape[0]) for ids, _ in sequences.values())
    if used < n:
        print(f"duo oracle: --n-sequences {n} asked, but the holdout holds {used} windows of {seq_len} tokens: "
              f"using {used} (recorded as n_sequences)")
    semantics = SEMANTICS if both_semantics else (cfg.semantics,)
    k = checks.budget("budget", mc.num_hidden_layers // 2 if cfg.difficulty_k is None else cfg.difficulty_k,
                      mc.num_hidden_layers)
    overall = {"model": str(model) if model else f"random-init:{cfg.profile}", "corpus": corpus,
               "n_sequences": used, "seq_len": seq_len, "choices": cfg.choices, "seed": seed, "results": {}}
    with claim(out, "duo oracle"):
        clear(out)
        for name, (ids, labels) in sequences.items():
            for sem in semantics:
                m = loss_matrix(net, ids, choices=cfg.choices, semantics=sem, progress=progress)
                s = write_oracle_tables(m, out / name / sem, k=k, n_random=cfg.n_random, seed=seed,
                                        tokenizer=tokenizer, labels=labels, label_names=label_names,
                                        save_matrix=save_matrix)
                per_k = {kk: v["oracle"] for kk, v in s["per_k"].items()}
                overall["results"][f"{name}/{sem}"] = {"oracle": s["oracle"]["perplexity"], **s["uniform"],
                                                       "oracle_per_k": per_k}
                print(f"duo oracle: {name}/{sem}: {m.num_patterns} patterns x {m.num_tokens} tokens in "
                      f"{m.stats['seconds']:.1f} s; oracle ppl {s['oracle']['perplexity']:.2f} -> {out / name / sem}")
        atomic_write_text(out / "summary.json", json.dumps({**overall, "complete": True}, indent=2, default=float))
        write_manifest(out)  # sizes and sha256 of every table, checked by read_summary
    return 0
