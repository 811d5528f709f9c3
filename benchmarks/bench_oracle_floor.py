"""The arithmetic floor of the exact oracle on this CPU: could any engine score all 2^L patterns in a minute?

The exhaustive {small, big} oracle of the trie engine does a fixed amount of arithmetic: one attention
block per internal node of the trie, one FFN per edge, one head product and one ``exp`` per vocabulary
entry per leaf, each over every scored token.  This script counts those multiply-adds for ``--tokens``
scored tokens (default 4,096: the 1-minute target of issue #12), measures how fast this machine runs each
kind at the engine's shapes (matrix products of ``--rows`` token rows; the causal attention of one
window; ``exp`` over a logits chunk), in fp32 and bf16, at each ``--threads`` count, and prints the
time that arithmetic alone needs.  Everything the engine adds (norms, SwiGLU's elementwise work,
rotary embedding, gathers, concatenations, the loss bookkeeping) is left out, so this is a lower bound
for any engine that computes the layers in fp32, as the exact oracle must.

With ``--model DIR`` (a trained run folder) or without (the profile's preset: the shapes are what count),
``--engine-windows W`` also times ``loss_matrix`` on W windows of ``--seq-len`` random tokens (the engine's
work does not depend on the tokens) and scales it to ``--tokens``.

    python benchmarks/bench_oracle_floor.py                           # default model shapes, 1 and 2 threads
    python benchmarks/bench_oracle_floor.py --engine-windows 4 --model runs/default/stage1
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

import duolib.model  # noqa: F401  (registers the duo model type with transformers)
from duolib import DuoConfig, DuoForCausalLM
from duolib.book.analysis import trie_counts
from duolib.oracle.engine import loss_matrix
from duolib.oracle.patterns import enumerate_patterns
from duolib.train.run_folder import load_run

TARGET_S = 60.0
TARGET_RATIO = 1.3  # issue 24: the engine within 1.3x of the floor it cannot beat


def best_seconds(fn, repeats: int) -> float:
    """Fastest of three blocks of ``repeats`` calls, per call (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def matmul_rate(rows: int, k: int, n: int, dtype: torch.dtype, repeats: int) -> float:
    """Multiply-adds per second of ``[rows, k] @ [k, n]`` into a reused output."""
    a, b = torch.randn(rows, k).to(dtype), torch.randn(k, n).to(dtype)
    out = torch.empty(rows, n, dtype=dtype)
    return rows * k * n / best_seconds(lambda: torch.mm(a, b, out=out), repeats)


def attention_rate(cfg, windows: int, t1: int, dtype: torch.dtype, repeats: int) -> float:
    """Scored tokens per second of one node's causal attention (scores, softmax, values) over
    ``windows`` windows of ``t1`` positions."""
    heads, hd = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    q, k, v = (torch.randn(windows, heads, t1, hd).to(dtype) for _ in range(3))
    return windows * t1 / best_seconds(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), repeats)


def exp_rate(rows: int, vocab: int, repeats: int) -> float:
    """``exp`` into a reused buffer plus the row sum, in fp32 (as the leaf does them), entries per second."""
    x = torch.randn(rows, vocab) * 4
    buf = torch.empty_like(x)
    return rows * vocab / best_seconds(lambda: torch.exp(x, out=buf).sum(-1), repeats)


def work(cfg, tokens: int) -> dict:
    """Multiply-adds (and exps) of the exhaustive 2^L {small, big} trie over ``tokens`` scored tokens."""
    d, L, V = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    kv = cfg.num_key_value_heads * (d // cfg.num_attention_heads)
    counts = trie_counts(enumerate_patterns(L, ("small", "big")))
    nodes, leaves = counts["internal_nodes"], counts["leaves"]
    big, small = counts["edges"]["big"], counts["edges"]["small"]
    return {
        "qkvo projections": nodes * tokens * d * (2 * d + 2 * kv),
        "ffn up+gate (big)": big * tokens * 2 * d * cfg.big_ffn_size,
        "ffn down (big)": big * tokens * d * cfg.big_ffn_size,
        "ffn (small)": small * tokens * 3 * d * cfg.small_ffn_size,
        "attention scores": nodes * tokens,  # node-tokens; priced per window below
        "head": leaves * tokens * d * V,
        "exp + sum": leaves * tokens * V,
    }


def rates(cfg, threads: int, rows: int, seq_len: int, dtype: torch.dtype) -> dict:
    torch.set_num_threads(threads)
    d = cfg.hidden_size
    t1 = seq_len - 1
    windows = max(1, rows // t1)
    return {
        "qkvo projections": matmul_rate(rows, d, d, dtype, 20),
        "ffn up+gate (big)": matmul_rate(rows, d, cfg.big_ffn_size, dtype, 10),
        "ffn down (big)": matmul_rate(rows, cfg.big_ffn_size, d, dtype, 10),
        "ffn (small)": matmul_rate(rows, d, cfg.small_ffn_size, dtype, 20),
        "attention scores": attention_rate(cfg, windows, t1, dtype, 20),  # node-tokens per second
        "head": matmul_rate(min(rows, 1024), d, cfg.vocab_size, dtype, 20),
        "exp + sum": exp_rate(1024, cfg.vocab_size, 20),
    }


def report(cfg, tokens: int, threads: list[int], rows: int, seq_len: int) -> dict:
    amounts = work(cfg, tokens)
    out = {}
    for t in threads:
        fp32, bf16 = rates(cfg, t, rows, seq_len, torch.float32), rates(cfg, t, rows, seq_len, torch.bfloat16)
        print(f"\n{t} thread(s), {tokens} scored tokens, all 2^{cfg.num_hidden_layers} {{small, big}} patterns:")
        print(f"  {'work':<20}{'amount':>12}{'fp32 rate':>12}{'fp32 s':>9}{'bf16 rate':>12}{'bf16 s':>9}")
        seconds = {}
        for name, amount in amounts.items():
            s32, s16 = amount / fp32[name], amount / bf16[name]
            seconds[name] = (s32, s16)
            print(f"  {name:<20}{amount:12.3g}{fp32[name]:12.3g}{s32:9.1f}{bf16[name]:12.3g}{s16:9.1f}")
        layers = sum(s32 for name, (s32, _) in seconds.items() if name not in ("head", "exp + sum"))
        fp32_floor = layers + seconds["head"][0] + seconds["exp + sum"][0]
        mixed_floor = layers + seconds["head"][1] + seconds["exp + sum"][0]
        print(f"  floor, everything fp32: {fp32_floor:.1f} s; fp32 layers + bf16 head (exact after rescoring): "
              f"{mixed_floor:.1f} s; the fp32 layers alone: {layers:.1f} s (target {TARGET_S:.0f} s)")
        out[t] = dict(layers=layers, fp32=fp32_floor, mixed=mixed_floor)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="trained run folder (default: the profile's preset, random init)")
    p.add_argument("--profile", default="default")
    p.add_argument("--tokens", type=int, default=4096, help="scored tokens of the target")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--rows", type=int, default=16384, help="token rows per product (the engine's max_rows)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--engine-windows", type=int, default=0, help="also time loss_matrix on this many windows")
    p.add_argument("--engine-repeats", type=int, default=2, help="timed engine runs (the fastest counts), after a "
                                                                  "short warm-up run, as the floor's rates are")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = load_run(args.model).eval() if args.model else DuoForCausalLM(DuoConfig.preset(args.profile)).eval()
    cfg = model.config
    floors = report(cfg, args.tokens, args.threads, args.rows, args.seq_len)
    if args.engine_windows:
        ids = torch.randint(0, cfg.vocab_size, (args.engine_windows, args.seq_len),
                            generator=torch.Generator().manual_seed(0))
        scored = args.engine_windows * (args.seq_len - 1)
        for t in args.threads:
            torch.set_num_threads(t)
            loss_matrix(model, ids[:1, :9])  # warm-up: thread pool, first allocations
            seconds = float("inf")
            for _ in range(max(1, args.engine_repeats)):
                start = time.perf_counter()
                loss_matrix(model, ids)
                seconds = min(seconds, time.perf_counter() - start)
            scaled = seconds * args.tokens / scored
            print(f"engine, {t} thread(s): {scaled:.1f} s for {args.tokens} tokens (timed on {scored}), "
                  f"{scaled / floors[t]['fp32']:.2f}x the fp32 arithmetic floor (target <= {TARGET_RATIO}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
