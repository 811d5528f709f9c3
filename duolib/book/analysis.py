"""The analyses of the book's oracle notebooks (03-06), on top of :mod:`duolib.oracle` and
:mod:`duolib.oracle.reductions`: knob validation, loss matrices cached in the run folder, and the tables
and headline numbers the notebooks plot and save.

Caching: a loss matrix is stored in ``run_dir/oracle/`` under a key made of the model's weights,
the input ids and the engine arguments, so notebook 03 computes the Stage-1 matrices once and
04 / 05 / 06 load them (:func:`book_matrices` reads the slice 03 recorded in ``oracle/book.json``).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from ..moves import moved
from .. import checks
from ..utils import parts_hash
from ..fileio import atomic_write_text
from ..manifests import read_checked, write_checked
from ..oracle.config import OracleConfig
from ..oracle.difficulty import token_difficulty
from ..oracle.patterns import enumerate_patterns, parse_choices
from ..oracle.reductions import LossMatrix
from ..oracle.registry import REDUCTIONS
from ..routing import BIG, ROUTE_NAMES, SKIP
from ..oracle.beam import beam_oracle
from ..oracle.engine import loss_matrix
from ..oracle.brute_force import trie_flops
from ..data.run_data import run_data
from ..data.batches import holdout_sequences
from .evidence import layer_share_intervals
from .kit import book_train_config
from ..train.loop import train

#: Names that moved out of this module in this release (an import of one names its new module).
__getattr__ = moved(__name__, {"check_int": "duolib.checks.whole"})


ORACLE_DIR = "oracle"
MANIFEST = "book.json"
SYNTHETIC_DIR = "synthetic"


# ----------------------------------------------------------------------------- knobs

def oracle_settings(profile: str, **overrides) -> dict:
    """The oracle settings of the book's notebooks: :class:`duolib.oracle.config.OracleConfig` of ``profile``
    with the notebook's non-None ``overrides``, its defaults resolved (:meth:`OracleConfig.resolved`); ValueError
    naming a bad value and the allowed range."""
    return OracleConfig.from_profile(profile, **overrides).resolved()


def paper_budgets(num_layers: int) -> list[int]:
    """The paper's budgets 4 / 6 / 8 of 12, scaled: ``round(L/3), L // 2, round(2L/3)`` (the scorecard's)."""
    return [round(num_layers / 3), num_layers // 2, round(2 * num_layers / 3)]


# ----------------------------------------------------------------------------- caching

def model_fingerprint(model) -> str:
    """Hash of a model's weights (names, shapes and values)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _fingerprint(model) -> str:
    fp = getattr(model, "_duolib_fingerprint", None)
    if fp is None:
        fp = model_fingerprint(model)
        model._duolib_fingerprint = fp  # the notebooks never change the weights
    return fp


def _atomic_save(obj, path: Path) -> None:
    """torch.save atomically, with a ``.sha256`` sidecar checked when the cache is read."""
    write_checked(path, lambda tmp: torch.save(obj, tmp))


def save_matrix(matrix: LossMatrix, path) -> None:
    fields = ("losses", "patterns", "seq", "position", "target", "seq_len", "semantics", "reference",
              "choices", "stats", "exact", "error_bound", "entropy")  # files saved before entropy load as None
    _atomic_save({f: getattr(matrix, f) for f in fields}, Path(path))


def load_matrix(path) -> LossMatrix:
    return LossMatrix(**torch.load(path, weights_only=True))


#: The proxies the book's beam frontiers compare (:func:`beam_table`; ``@64``: top-64 restricted read-out).
BEAM_PROXIES = ("early-exit", "suffix", "early-exit@64", "linear")


def cached_loss_matrix(model, input_ids: torch.Tensor, run_dir, *, choices=("small", "big"), k: int | None = None,
                       semantics: str = "shared", reference: str = "big", progress: bool = False,
                       precision: str = "fp32", entropy: bool = False) -> LossMatrix:
    """:func:`duolib.oracle.engine.loss_matrix` of every pattern over ``choices`` (exactly ``k`` big layers if
    given), loaded from ``run_dir/oracle/`` when the same model, ids and arguments were computed before.

    precision: the engine's (fp32 for the book: a bf16 matrix certifies its minima and its best rows, but
    not the best row of a subset of its sequences, which notebook 03 reads; and it measured only about
    1.1x faster, ``benchmarks/bench_levers.py``); entropy: the engine's (for the label-free oracle)."""
    input_ids = torch.as_tensor(input_ids).long()
    spec = dict(choices=list(parse_choices(choices)), k=k, semantics=semantics,
                reference=reference if semantics == "fixed-context" else None, shape=list(input_ids.shape),
                **({} if precision == "fp32" else {"precision": precision}))  # fp32 keys as before
    fp, raw = _fingerprint(model), input_ids.numpy().tobytes()
    keys = {e: parts_hash(fp, {**spec, "entropy": True} if e else spec, raw) for e in (True, False)}
    paths = {e: Path(run_dir) / ORACLE_DIR / f"matrix-{semantics}-{key}.pt" for e, key in keys.items()}
    for e in (True,) if entropy else (True, False):  # one with entropies (03's) holds the same losses for 04-07
        if (cached := read_checked(paths[e], load_matrix)) is not None:
            return cached
    matrix = loss_matrix(model, input_ids, choices=choices, k=k, semantics=semantics, reference=reference,
                         progress=progress, precision=precision, entropy=entropy)
    save_matrix(matrix, paths[entropy])
    return matrix


def cached_json(run_dir, name: str, key_parts: list, compute):
    """``compute()`` (JSON-ready), stored as ``run_dir/oracle/<name>-<key>.json``."""
    path = Path(run_dir) / ORACLE_DIR / f"{name}-{parts_hash(*key_parts)}.json"
    cached = read_checked(path, lambda p: json.loads(p.read_text()))
    if cached is not None:
        return cached
    value = compute()
    write_checked(path, lambda tmp: tmp.write_text(json.dumps(value, default=float)))
    return value


# ----------------------------------------------------------------------------- the book's matrices

def holdout_ids(data, n_sequences: int, seq_len: int) -> dict[str, torch.Tensor]:
    """``n_sequences`` windows of ``seq_len`` tokens of every holdout of ``data``, drawn at random (fixed
    seed) over the whole holdout (:func:`duolib.data.batches.holdout_sequences`), the same in every notebook."""
    return {name: holdout_sequences(stream, n_sequences, seq_len) for name, stream in data.holdout.items()}


def write_manifest(run_dir, settings: dict) -> None:
    """Record the slice notebook 03 used (read by :func:`book_matrices`)."""
    path = Path(run_dir) / ORACLE_DIR / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(settings, indent=1, default=list))


def read_manifest(run_dir) -> dict:
    path = Path(run_dir) / ORACLE_DIR / MANIFEST
    if not path.is_file():
        raise ValueError(f"no oracle results in {str(path.parent)!r}; run notebooks/03_oracle.ipynb first")
    return json.loads(path.read_text())


def book_matrices(model, data, run_dir) -> tuple[dict[str, LossMatrix], dict[str, torch.Tensor], dict]:
    """The shared {small, big} matrices of notebook 03 (per holdout), their input ids and 03's settings."""
    settings = read_manifest(run_dir)
    ids = holdout_ids(data, settings["n_sequences"], settings["seq_len"])
    return {h: cached_loss_matrix(model, x, run_dir) for h, x in ids.items()}, ids, settings


def subset_sequences(matrix: LossMatrix, n: int) -> LossMatrix:
    """The columns of the first ``n`` sequences (tokens are sequence-major)."""
    return matrix.columns((matrix.seq < n).nonzero().flatten())


# ----------------------------------------------------------------------------- 03: oracle vs baselines

def methods(n_random: int | None = None) -> dict[str, str]:
    """``{name: label}`` of the registered reductions (:data:`duolib.oracle.registry.REDUCTIONS`), in order;
    labels say N (or ``n_random``) for the best-of-N count."""
    return {r.name: r.text(n_random) for r in REDUCTIONS.values()}


def oracle_results(summary: dict, n_random: int) -> dict:
    """The 03_oracle result keys of one holdout from :meth:`LossMatrix.summary`: all-big, all-small and,
    per registered reduction, its perplexity per budget."""
    per_k = summary["per_k"]
    return {"all_big": summary["uniform"]["all_big"], "all_small": summary["uniform"]["all_small"],
            **{r.name: {k: v[r.key(n_random)] for k, v in per_k.items()} for r in REDUCTIONS.values()}}


def curves_frame(results: dict[str, dict], n_random: int | None = None, **extra) -> pd.DataFrame:
    """Tidy (holdout, method, k, perplexity) rows of :func:`oracle_results` per holdout."""
    labels = methods(n_random)
    rows = [dict(holdout=h, method=labels[m], k=int(k), perplexity=v, **extra)
            for h, r in results.items() for m in labels for k, v in r[m].items()]
    return pd.DataFrame(rows)


def trie_counts(patterns: torch.Tensor) -> dict:
    """Node counts of the exhaustive trie over ``patterns`` (the ``stats`` format of
    :func:`duolib.oracle.engine.loss_matrix`, for :func:`duolib.oracle.brute_force.trie_flops`)."""
    p = np.unique(np.asarray(patterns, dtype=np.int8), axis=0)
    L = p.shape[1]
    edges = {name: 0 for name in ROUTE_NAMES}
    internal = 0
    for i in range(L):
        internal += len(np.unique(p[:, :i], axis=0)) if i else 1
        children = np.unique(p[:, :i + 1], axis=0)
        for code, n in zip(*np.unique(children[:, i], return_counts=True)):
            edges[ROUTE_NAMES[int(code)]] += int(n)
    return {"internal_nodes": int(internal), "edges": edges, "leaves": int(len(p))}


def beam_table(model, input_ids: torch.Tensor, exact: LossMatrix, k: int | None, widths: Sequence[int],
               proxies: Sequence[str] = BEAM_PROXIES, run_dir=None) -> pd.DataFrame:
    """Beam-search approximation of the per-token oracle at exactly ``k`` big layers (None: over every
    pattern of ``exact.choices``) vs the exhaustive oracle of ``exact`` (same ids, same semantics, same
    choices): the exhaustive oracle's perplexity (``exact``), each beam's gap to it and compute relative to the
    exhaustive trie over the same patterns (:func:`duolib.oracle.brute_force.trie_flops`).

    proxies: names of :data:`duolib.oracle.beam.PROXIES`, ``@M`` for the top-M restricted vocabulary
    (``early-exit@64``: within 1% of the oracle at about 6% of its compute at width 16 on the
    benchmark model, ``benchmarks/bench_oracle.py``); ``linear`` needs fixed-context semantics."""
    L = exact.num_layers
    k = None if k is None else checks.budget("k", k, L)
    B, T = input_ids.shape
    exhaustive = exact.oracle(k).perplexity
    full = trie_flops(model.config, trie_counts(enumerate_patterns(L, exact.choices, k)), B, T)

    def compute():
        rows = []
        for spec in proxies:
            proxy, _, vocab = spec.partition("@")
            for w in widths:
                res = beam_oracle(model, input_ids, int(w), choices=exact.choices, k=k, semantics=exact.semantics,
                                  proxy=proxy, proxy_vocab=int(vocab) if vocab else None)
                rows.append(dict(proxy=spec, width=int(w), perplexity=res.perplexity,
                                 flops=res.cost["flops"], seconds=res.cost["seconds"]))
        return rows

    key = [_fingerprint(model), input_ids.numpy().tobytes(), exact.semantics, list(exact.choices), k,
           list(map(int, widths)), list(proxies)]
    rows = cached_json(run_dir, "beam", key, compute) if run_dir is not None else compute()
    df = pd.DataFrame(rows)
    df["exact"] = exhaustive
    df["gap"] = df["perplexity"] / exhaustive - 1
    df["relative_compute"] = df["flops"] / full
    return df


def skip_beam_frontier(model, input_ids: dict[str, torch.Tensor], run_dir, *, k: int, widths: Sequence[int],
                       three_way_positions: int, three_way_widths: Sequence[int],
                       proxies: Sequence[str] = BEAM_PROXIES) -> pd.DataFrame:
    """[ours] The beam-vs-exact frontier where routes may skip (issue: the beam must handle skip), for
    ``model`` (the book's: trained with skip) under fixed-context semantics on each holdout's ``input_ids``:

    - ``{skip, big}`` with exactly ``k`` big layers, and over all 2^L patterns, on the whole windows;
    - ``{skip, small, big}`` over all 3^L patterns, on the first ``three_way_positions`` scored tokens of the
      windows (the exhaustive search costs 3^L leaves per token).

    Columns: :func:`beam_table`'s, then holdout, search (a label), routes, k and tokens.  The exhaustive matrices and the beams are cached in ``run_dir/oracle/``."""
    searches = [(("skip", "big"), k, None, widths), (("skip", "big"), None, None, widths),
                (("skip", "small", "big"), None, int(three_way_positions) + 1, three_way_widths)]
    frames = []
    for h, x in input_ids.items():
        for choices, budget, length, ws in searches:
            xs = x if length is None else x[:, :length]
            exact = cached_loss_matrix(model, xs, run_dir, choices=choices, k=budget, semantics="fixed-context")
            label = "{" + ", ".join(choices) + "}" + ("" if budget is None else f", k = {budget}")
            frames.append(beam_table(model, xs, exact, budget, ws, proxies, run_dir=run_dir)
                          .assign(holdout=h, search=label, routes=",".join(choices), k=budget,
                                  tokens=exact.num_tokens))
    return pd.concat(frames, ignore_index=True)


def beam_summary(frame: pd.DataFrame, target: float = 0.01) -> dict:
    """The reading of a beam frontier (rows of :func:`beam_table`, one or more holdouts): per (proxy,
    width), the worse holdout's gap and compute; ``best``: the setting of smallest gap; ``cheapest``: the
    cheapest setting whose gap is within ``target`` (None if none is)."""
    worst = frame.groupby(["proxy", "width"], as_index=False).agg(gap=("gap", "max"),
                                                                  relative_compute=("relative_compute", "max"))
    best = worst.sort_values(["gap", "relative_compute"]).iloc[0]
    within = worst[worst["gap"] <= target].sort_values("relative_compute")

    def as_dict(r):
        return dict(proxy=r["proxy"], width=int(r["width"]), gap=float(r["gap"]),
                    relative_compute=float(r["relative_compute"]))

    return dict(best=as_dict(best), cheapest=as_dict(within.iloc[0]) if len(within) else None, target=target)


# ----------------------------------------------------------------------------- 04: budget schedules

def loss_by_position(matrix: LossMatrix, reductions: dict, bins: int) -> pd.DataFrame:
    """Mean token loss of each reduction (name -> :class:`~duolib.oracle.reductions.Reduction`) in ``bins``
    equal position bins: columns name, bin, position (bin centre), loss."""
    T1 = matrix.seq_len - 1
    bins = max(1, min(int(bins), T1))
    edges = np.linspace(0, T1, bins + 1)
    which = np.clip(np.searchsorted(edges, matrix.position.numpy(), side="right") - 1, 0, bins - 1)
    rows = []
    for name, red in reductions.items():
        losses = red.token_losses.double().numpy()
        for b in range(bins):
            sel = which == b
            if sel.any():
                rows.append(dict(name=name, bin=b, position=(edges[b] + edges[b + 1]) / 2,
                                 loss=float(losses[sel].mean())))
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- 05: where the oracle routes

def big_centre(matrix: LossMatrix, k: int) -> float:
    """Mean relative depth (0 = first layer, 1 = last) of the big layers of the per-token oracle's
    winning patterns at exactly ``k`` big layers (0.5 = spread evenly)."""
    k = checks.budget("k", k, matrix.num_layers)
    if k == 0:
        raise ValueError("k=0: no big layers to locate")
    L = matrix.num_layers
    big = (matrix.patterns[matrix.oracle(k).winners] == BIG).double()  # [N, L]
    depth = torch.arange(L, dtype=torch.float64) / max(1, L - 1)
    return float((big @ depth / k).mean())


def layer_rate(matrix: LossMatrix, k: int, code: int = BIG) -> np.ndarray:
    """Per layer, the share of tokens whose oracle pattern at ``k`` takes route ``code`` there ``[L]``."""
    red = matrix.oracle(k)
    return (matrix.patterns[red.winners] == code).double().mean(0).numpy()


def skip_matrix(model, input_ids, run_dir, n_skip: int) -> LossMatrix:
    """The {big, skip} study: every pattern with exactly ``n_skip`` skipped layers (the rest big)."""
    L = model.config.num_hidden_layers
    n_skip = checks.budget("n_skip", n_skip, L)
    return cached_loss_matrix(model, input_ids, run_dir, choices=("skip", "big"), k=L - n_skip)


def skip_study(model, ids: dict[str, torch.Tensor], run_dir, n_skip: int, seed: int = 0) -> tuple[dict, dict]:
    """The {big, skip} study of one model on each holdout's windows ``ids``: ``(results, matrices)``.

    results[h]: ``skip_fraction`` (per layer, the share of tokens whose oracle pattern skips it) with
    ``skip_fraction_ci`` (95% window-bootstrap intervals), the perplexities ``oracle``, ``fixed`` (best
    single pattern, ``fixed_pattern``), ``early_exit`` (skip the last ``n_skip`` layers) and ``all_big``
    (no layer skipped; shared semantics like the rest).  matrices[h]: the {big, skip} loss matrix."""
    L = model.config.num_hidden_layers
    k_big = L - n_skip
    results, matrices = {}, {}
    for h, x in ids.items():
        m = matrices[h] = skip_matrix(model, x, run_dir, n_skip)
        all_big = cached_loss_matrix(model, x, run_dir, choices=("skip", "big"), k=L)  # the one all-big pattern
        fixed = m.fixed(k_big)
        results[h] = {"skip_fraction": [float(v) for v in layer_rate(m, k_big, SKIP)],
                      "skip_fraction_ci": layer_share_intervals(m, k_big, SKIP, seed=seed),
                      "oracle": m.oracle(k_big).perplexity, "fixed": fixed.perplexity,
                      "fixed_pattern": fixed.info["pattern"],
                      "early_exit": m.perplexity_of(m.early_exit_pattern(n_skip)),
                      "all_big": all_big.perplexity_of([BIG] * L)}
    return results, matrices


# ----------------------------------------------------------------------------- 06: difficulty

def spearman(x, y) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    x, y = pd.Series(np.asarray(x, float)).rank(), pd.Series(np.asarray(y, float)).rank()
    return float(np.corrcoef(x, y)[0, 1])


def high_loss_low_gain_fraction(loss, gain, q: float = 0.25) -> float:
    """Among the tokens in the top ``q`` quantile of ``loss``, the share in the bottom ``q`` quantile of ``gain``."""
    loss, gain = np.asarray(loss, float), np.asarray(gain, float)
    high = loss >= np.quantile(loss, 1 - q)
    return float((gain[high] <= np.quantile(gain, q)).mean())


def token_contexts(ids: torch.Tensor, seq, position, tokenizer, width: int = 6) -> list[str]:
    """The text of the ``width`` tokens up to and including ``position`` (what precedes each target)."""
    out = []
    for s, t in zip(np.asarray(seq), np.asarray(position)):
        out.append(tokenizer.decode(ids[int(s), max(0, int(t) - width + 1):int(t) + 1].tolist()))
    return out


def difficulty_frame(matrix: LossMatrix, k: int, ids: torch.Tensor, tokenizer, labels=None,
                     label_names=None) -> pd.DataFrame:
    """:func:`duolib.oracle.difficulty.token_difficulty` plus ``loss`` (= all-big loss, the full model [ours])
    and ``context`` (the text before the predicted token)."""
    df = token_difficulty(matrix, k, tokenizer=tokenizer, labels=labels, label_names=label_names)
    df.insert(df.columns.get_loc("loss_small"), "loss", df["loss_big"])
    df["context"] = token_contexts(ids, df["seq"], df["position"], tokenizer)
    return df


def passage(df: pd.DataFrame, ids: torch.Tensor, seq: int, tokenizer, column: str) -> tuple[list[str], list[float]]:
    """Tokens of sequence ``seq`` and their ``column`` values (NaN for the first token: it is not predicted)."""
    rows = df[df["seq"] == seq].sort_values("position")
    tokens = [tokenizer.decode([int(ids[seq, 0])])] + rows["token"].tolist()
    return tokens, [math.nan] + rows[column].tolist()


def synthetic_run(profile: str, run_dir, steps: int, layers: int | None = None, lr: float | None = None,
                  seed: int = 0):
    """Train (or load: train's own skip logic) a Duo model on the synthetic corpus in ``run_dir/synthetic``;
    returns ``(model, data)``.  ``layers`` / ``lr`` replace the profile's layer count and learning rate;
    ``seed`` is the training seed (each replica of the book trains its own synthetic model)."""
    model = {} if layers is None else {"num_hidden_layers": checks.whole("synthetic_layers", layers, 1)}
    if lr is not None and not (isinstance(lr, (int, float)) and 0 < lr < 1):
        raise ValueError(f"synthetic_lr={lr!r} is outside the allowed range (0, 1)")
    cfg = book_train_config(profile, run_dir, corpus="synthetic", steps=checks.whole("synthetic_steps", steps, 1),
                            model=model, lr=lr, seed=checks.whole("seed", seed, 0))
    result = train(cfg, Path(run_dir) / SYNTHETIC_DIR)
    return result.load_model().eval(), run_data(result.run_dir)


def label_means(df: pd.DataFrame, names: Iterable[str] = ("easy", "compute", "noise"),
                column: str = "difficulty") -> dict[str, float]:
    """Mean ``column`` per label name (NaN for a label with no token)."""
    means = df.groupby("label_name")[column].mean()
    return {n: float(means.get(n, math.nan)) for n in names}
