"""Run folders of ``duo oracle``: tables and summaries of loss matrices."""

from __future__ import annotations

import numpy as np
import torch

from .engine import loss_matrix
from .difficulty import token_difficulty
from .reductions import SEMANTICS, LossMatrix
from .sampling import check_budget
from ..routing import BIG, ROUTE_NAMES, SKIP, SMALL, pattern_to_str
from ..config import DuoConfig
from ..model import DuoForCausalLM
from ..profiles import get_profile
from ..data.corpus import prepare
from ..data.synthetic import LABEL_NAMES
from ..data.batches import holdout_sequences
from ..data.run_data import data_for_model, model_folder, reading_model
from ..fileio import atomic_write_text
from ..runfolder import check_usable, claim, clear, verify_manifest, write_manifest


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


def _positive(name: str, value, default: int) -> int:
    value = default if value is None else value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} {value!r} must be a positive integer")
    return value


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


def _sequences(args, vocab_size: int, n: int, seq_len: int):
    """``({holdout: (ids, labels)}, tokenizer, corpus, label names)`` of ``duo oracle``: random ids, or a
    corpus tokenised with the model's own tokenizer (a run's: :func:`duolib.data.run_data.data_for_model`)."""
    corpus = args.corpus or ("random" if args.random_init else None)
    if corpus == "random":
        g = torch.Generator().manual_seed(args.seed)
        return {"random": (torch.randint(0, vocab_size, (n, seq_len), generator=g), None)}, None, corpus, None
    if args.random_init:  # no trained tokenizer to keep: the corpus's own
        prep = prepare(corpus, vocab_size=vocab_size, progress=False)
    else:
        prep = data_for_model(args.model, corpus, vocab_size)
    sequences = {}
    for name, stream in prep.holdout.items():
        labelled = getattr(stream, "labels", None) is not None
        got = holdout_sequences(stream, n, seq_len, with_labels=labelled)
        sequences[name] = got if labelled else (got, None)
    return sequences, prep.tokenizer, prep.corpus, LABEL_NAMES


def cli_main(args) -> int:
    """``duo oracle``: load a model (or random-init one), take holdout slices, write the tables.

    The output folder is locked while it is written; its previous results are removed first and
    ``summary.json`` (``"complete": true``) is written last, so a killed run leaves no summary
    (:func:`read_summary` refuses such a folder) and never a mix of two runs."""
    import json
    from pathlib import Path

    section = get_profile(args.profile).get("oracle", {})
    if bool(args.model) == bool(args.random_init):
        raise ValueError("give exactly one of --model DIR and --random-init")
    n = _positive("--n-seqs", args.n_seqs, section.get("n_sequences", 2))
    seq_len = _positive("--seq-len", args.seq_len, section.get("seq_len", 16))
    out = check_usable(args.out)
    torch.manual_seed(args.seed)
    with reading_model(args.model):  # the model, tokenizer and config of one run: no writer in between
        if args.model:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(model_folder(args.model)).eval()
        else:
            model = DuoForCausalLM(DuoConfig.preset(args.profile)).eval()
        cfg = model.config
        sequences, tokenizer, corpus, label_names = _sequences(args, cfg.vocab_size, n, seq_len)
    used = max(int(ids.shape[0]) for ids, _ in sequences.values())
    if used < n:
        print(f"duo oracle: --n-seqs {n} asked, but the holdout holds {used} windows of {seq_len} tokens: "
              f"using {used} (recorded as n_sequences)")
    choices = args.choices or section.get("choices", "small,big")
    semantics = SEMANTICS if args.semantics == "both" else (args.semantics or section.get("semantics", "shared"),)
    k = args.k if args.k is not None else section.get("difficulty_k", cfg.num_hidden_layers // 2)
    k = check_budget(k, cfg.num_hidden_layers)
    overall = {"model": str(args.model) if args.model else f"random-init:{args.profile}", "corpus": corpus,
               "n_sequences": used, "seq_len": seq_len, "choices": choices, "seed": args.seed, "results": {}}
    with claim(out, "duo oracle"):
        clear(out)
        for name, (ids, labels) in sequences.items():
            for sem in semantics:
                m = loss_matrix(model, ids, choices=choices, semantics=sem, progress=not args.quiet)
                s = write_oracle_tables(m, out / name / sem, k=k, n_random=section.get("n_random", 100),
                                        seed=args.seed, tokenizer=tokenizer, labels=labels, label_names=label_names,
                                        save_matrix=args.save_matrix)
                per_k = {kk: v["oracle"] for kk, v in s["per_k"].items()}
                overall["results"][f"{name}/{sem}"] = {"oracle": s["oracle"]["perplexity"], **s["uniform"],
                                                       "oracle_per_k": per_k}
                print(f"duo oracle: {name}/{sem}: {m.num_patterns} patterns x {m.num_tokens} tokens in "
                      f"{m.stats['seconds']:.1f} s; oracle ppl {s['oracle']['perplexity']:.2f} -> {out / name / sem}")
        atomic_write_text(out / "summary.json", json.dumps({**overall, "complete": True}, indent=2, default=float))
        write_manifest(out)  # sizes and sha256 of every table, checked by read_summary
    return 0
