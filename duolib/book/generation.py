"""Generation speed: greedy ``generate`` with a KV cache under each routing, and self-speculative decoding
(:func:`duolib.speculative.speculative_generate`), shared by ``benchmarks/bench_generate.py`` and the book's
performance notebook.

Every timed call produces the same number of new tokens from the same prompt.  One round times every
variant once (the order reversed on odd rounds, so a slow drift of a shared machine does not favour one
side); a variant's speed-up is the median over rounds of ``t_all_big / t_variant`` with the all-big call
of the same round, and its interval is the percentile bootstrap of that median over rounds
(:func:`duolib.stats.percentile_interval`).  The FLOP-predicted speed-up is the ratio of the forward FLOPs of
the whole call (:func:`duolib.flops.routes_flops`): every token row a forward processes (prompt included) is
counted once at the routes its policy takes on the generated text; for speculative decoding these are the
verifier's rows (all-big) plus the draft's rows, as :class:`~duolib.speculative.SpeculativeStats` counts them.
The head is counted only on the rows where it runs: for ``generate`` on the prompt's last row and each
new token's row, for the speculative draft once per draft call, for its verifier on the prompt's last row
and every proposal row.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..data.batches import holdout_sequences
from ..flops import head_flops, routes_flops
from ..routing import BIG
from ..speculative import speculative_generate
from ..stats import N_BOOT, percentile_interval
from .phrasing import interval_reading, times_as
from .bench import CLOCKS


def clock_fn(clock):
    if callable(clock):
        return clock
    if clock not in CLOCKS:
        raise ValueError(f"clock={clock!r}; allowed: {', '.join(CLOCKS)}")
    return CLOCKS[clock]


def fixed_patterns(num_layers: int, ks) -> dict[str, str]:
    """``all-big``, ``all-small`` and, per k in ``ks``, the pattern with the first k layers big, the rest small."""
    out = {"all-big": "B" * num_layers, "all-small": "S" * num_layers}
    for k in ks:
        if not 0 < k < num_layers:
            raise ValueError(f"k={k} big layers: give 0 < k < {num_layers} (all-big and all-small are always timed)")
        out[f"big{k}"] = "B" * k + "S" * (num_layers - k)
    return out


def holdout_prompts(holdout: dict, n: int, prompt_len: int, seed: int = 0) -> torch.Tensor:
    """``[n, prompt_len]`` prompts alternating between the holdout streams (name -> stream, as
    ``Prepared.holdout``): windows of :func:`duolib.data.batches.holdout_sequences`."""
    if not holdout or n < 1:
        raise ValueError(f"need at least one holdout stream and one prompt; got {len(holdout)} streams, n={n}")
    per = -(-n // len(holdout))
    windows = [torch.as_tensor(holdout_sequences(s, per, prompt_len, seed=seed)) for s in holdout.values()]
    if min(len(w) for w in windows) < per:
        raise ValueError(f"a holdout holds fewer than {per} windows of {prompt_len} tokens; ask for fewer prompts")
    return torch.stack([w[i] for i in range(per) for w in windows])[:n].long()


@torch.no_grad()
def same_as_greedy(model, prompts: torch.Tensor, new_tokens: int, draft_len: int = 4) -> int:
    """How many of ``prompts`` ``[n, T]`` get the same tokens from self-speculative decoding (all-small draft)
    as from all-big greedy ``generate``."""
    draft = "S" * model.config.num_hidden_layers
    return sum(int(torch.equal(speculative_generate(model, p[None], new_tokens, draft, draft_len)[0],
                               generate_call(model, p[None], new_tokens, None)())) for p in prompts)


def median_interval(values, seed: int = 0) -> dict:
    """Median of ``values`` and the 95% percentile-bootstrap interval of the median over resampled values."""
    values = np.asarray(values, dtype=np.float64)
    idx = np.random.default_rng([seed, len(values)]).integers(0, len(values), size=(N_BOOT, len(values)))
    return percentile_interval(float(np.median(values)), np.median(values[idx], axis=1)).as_dict()


FASTER = ("faster", "slower", "as fast")


def speedup_words(row: dict) -> str:
    """A row's speed-up over all-big in words, with its interval read against 1: "1.05 times as fast as
    all-big, i.e. faster (95% interval 1.02x to 1.10x, wholly faster)"."""
    ci = row["speedup_ci"]
    reading = interval_reading(ci, "wholly faster", "not faster", "so not surely different", bound=1.0)
    return (f"{times_as(row['speedup'], 'all-big', words=FASTER)} (95% interval {ci['low']:.2f}x to "
            f"{ci['high']:.2f}x, {reading})")


def table(rows: list[dict]) -> pd.DataFrame:
    """The rows as a pandas table, the interval as one column."""
    frame = pd.DataFrame(rows)
    frame["speed-up 95% interval"] = [f"{r['speedup_ci']['low']:.2f} to {r['speedup_ci']['high']:.2f}" for r in rows]
    return frame.drop(columns=["speedup_ci"]).round(3)


@torch.no_grad()
def row_flops(model, sequence: torch.Tensor, routes) -> tuple[float, float]:
    """(mean forward FLOPs of one token row of ``sequence`` ``[1, S]`` under ``routes``, mean big layers per
    row): the routes are those the policy takes on the finished sequence, each row at its own context."""
    taken = model(sequence[:, :-1], routes=routes, return_routes=True, use_cache=False).routing.routes
    rows = taken.shape[0] * taken.shape[1]
    return routes_flops(model.config, taken) / rows, float((taken == BIG).sum(-1).float().mean())


def generate_call(model, prompt: torch.Tensor, new_tokens: int, routes):
    def call():
        out = model.generate(prompt, routes=routes, do_sample=False, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, eos_token_id=None, pad_token_id=0)
        if out.shape[1] != prompt.shape[1] + new_tokens:
            raise RuntimeError(f"generate returned {out.shape[1] - prompt.shape[1]} new tokens, not {new_tokens}")
        return out
    return call


def speculative_call(model, prompt, new_tokens, draft_routes, draft_len):
    return lambda: speculative_generate(model, prompt, new_tokens, draft_routes, draft_len)


@dataclass
class CallCounts:
    """What one variant's calls did, summed over one pass over the prompts (deterministic per prompt)."""

    flops: float = 0.0
    big_layers: list = field(default_factory=list)
    accepted: int = 0
    drafted: int = 0
    tokens_per_verify: list = field(default_factory=list)

    def add(self, model, kind: str, routes, out, prompt_len: int) -> None:
        head = head_flops(model.config)
        if kind == "generate":  # the prompt's rows, then one row per new token but the last
            f, b = row_flops(model, out, routes)
            self.flops += f * (out.shape[1] - 1) - head * (prompt_len - 1)
            self.big_layers.append(b)
            return
        seq, stats = out
        f_draft, _ = row_flops(model, seq, routes)
        f_target, _ = row_flops(model, seq, None)
        self.flops += (stats.draft_tokens * f_draft - (stats.draft_tokens - stats.draft_calls) * head
                       + stats.target_tokens * f_target - (prompt_len - 1) * head)
        self.accepted += stats.accepted
        self.drafted += stats.drafted
        self.tokens_per_verify.append(stats.tokens_per_verify)


def timed_rounds(model, prompts, new_tokens: int, variants: dict, rounds: int, warmup: int, clk):
    """Times ``[rounds]`` and :class:`CallCounts` per variant ``(kind, name, draft_len) -> routes``; round r
    uses prompt ``r % n`` and runs every variant once, in reversed order on odd rounds."""
    times = {v: [] for v in variants}
    counts = {v: CallCounts() for v in variants}
    for r in range(warmup + rounds):
        prompt = prompts[r % len(prompts)][None]
        for v in list(variants) if r % 2 == 0 else list(reversed(variants)):
            kind, _, k = v
            call = generate_call(model, prompt, new_tokens, variants[v]) if kind == "generate" else \
                speculative_call(model, prompt, new_tokens, variants[v], k)
            t0 = clk()
            out = call()
            dt = clk() - t0
            if r >= warmup:
                times[v].append(dt)
                if r - warmup < len(prompts):
                    counts[v].add(model, kind, variants[v], out, prompts.shape[1])
    return times, counts


@torch.no_grad()
def generation_speed(model, prompts: torch.Tensor, new_tokens: int, repeats: int, *, patterns: dict | None = None,
                     drafts: dict | None = None, draft_lens=(2, 4), warmup: int = 1, clock="cpu") -> dict:
    """Tokens per second of greedy decoding of ``model`` (eval mode) under each routing, and self-speculative
    decoding (all-big target) per draft routing and draft length, on ``prompts`` ``[n, T]`` (round r uses
    prompt ``r % n``).  ``patterns``: name -> routes (default :func:`fixed_patterns` with k = L/3, 2L/3);
    it must hold ``all-big``, the baseline.  ``drafts``: name -> draft routes (default all-small and the
    L/3-big pattern).  Returns ``{"generate": [rows], "speculative": [rows]}``; each row has ``tok_s``
    (median), ``speedup`` (median paired ratio, with ``speedup_ci``) and ``predicted`` (FLOP ratio); the
    speculative rows add ``acceptance`` (accepted / drafted over every prompt) and ``tokens_per_verify``."""
    if model.training:
        raise ValueError("the model is in training mode; call model.eval() before timing generation")
    if prompts.dim() != 2 or not len(prompts):
        raise ValueError(f"prompts must be [n, T] with n >= 1; got shape {tuple(prompts.shape)}")
    if repeats < 2:
        raise ValueError(f"repeats={repeats}: an interval over repeats needs at least 2")
    L = model.config.num_hidden_layers
    low = max(1, round(L / 3))
    patterns = fixed_patterns(L, sorted({low, max(1, round(2 * L / 3))} - {L})) if patterns is None else patterns
    if "all-big" not in patterns:
        raise ValueError(f"patterns {sorted(patterns)} lack the baseline 'all-big'")
    if drafts is None:
        drafts = {name: routes for name, routes in fixed_patterns(L, [low]).items() if name != "all-big"}
    variants = {("generate", name, 0): routes for name, routes in patterns.items()}
    variants.update({("speculative", name, k): routes for name, routes in drafts.items() for k in draft_lens})
    times, counts = timed_rounds(model, prompts, new_tokens, variants, repeats, warmup, clock_fn(clock))
    base = ("generate", "all-big", 0)
    rows = {"generate": [], "speculative": []}
    for v, ts in times.items():
        kind, name, k = v
        ratios = [b / t for b, t in zip(times[base], ts)]
        c = counts[v]
        row = dict(variant=name, tok_s=new_tokens / statistics.median(ts), speedup=statistics.median(ratios),
                   speedup_ci=median_interval(ratios), predicted=counts[base].flops / c.flops)
        if kind == "generate":
            row["big_layers"] = statistics.mean(c.big_layers)
        else:
            row.update(draft_len=k, acceptance=c.accepted / c.drafted if c.drafted else float("nan"),
                       tokens_per_verify=statistics.mean(c.tokens_per_verify))
        rows[kind].append(row)
    return rows
