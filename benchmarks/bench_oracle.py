"""Oracle engine speed: the trie engine vs brute force, and beam search vs exhaustive search.

1. Exhaustive 2^L {small, big} loss matrix (``shared`` semantics) of the default model (12 layers:
   4096 patterns) on a holdout slice, by the trie engine (``duolib.oracle.loss_matrix``) and by
   brute force (one ``DuoForCausalLM`` forward per pattern), in the same process.  The patterns are
   split into ``--rounds`` blocks (by their first routes) and the engines alternate block by block,
   so both see the same machine load.  Prints both times, the speed ratio, the max abs difference,
   patterns x tokens per second and peak memory.
2. The bound the evaluation counts allow, from measured costs of one attention block, one FFN of
   each kind and one leaf (final norm + head + loss) on one node (the slice's ``B x (T-1)`` rows):
       brute = sum_p (L * c_attn + sum_i c_ffn(p_i)) + P * c_leaf
       trie  = (internal nodes) * c_attn + sum_edges c_ffn(edge) + P * c_leaf
   (the engine computes a node's attention once for all its children), and the simpler
   ``P * (L * c_layer + c_leaf) / (nodes * c_layer + P * c_leaf)``.  Targets: speed-up >= 2.5x and
   >= 85% of the bound.
3. Beam search (``duolib.oracle.beam_oracle``) at several widths, for several proxies
   (``early-exit``, ``suffix``; ``@M``: the cheap top-M restricted-vocabulary version; ``linear``: the
   suffix linearised around the reference route, fixed-context only) and both
   semantics, for the per-token oracle with exactly ``--beam-k`` big layers (default 6, and
   unconstrained; ``--choices skip,big`` for routes that skip): perplexity gap to the exhaustive oracle vs compute (FLOPs and seconds, relative
   to the exhaustive trie on the same pattern set).  Aim: <= 1% gap at >= 10x less compute.

The model is the default preset, briefly trained with random routing on a synthetic Markov source
(``--train-steps``; 0 = random init), or a trained model folder (``--model DIR``).

    python benchmarks/bench_oracle.py --cache-model /tmp/duo-bench   # ~3 min training (once) + ~6 min
    python benchmarks/bench_oracle.py --batch 2 --seq-len 32 --train-steps 50 --widths 1 4   # quick
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path

import torch

import duolib.model  # noqa: F401  (registers the duo model type with transformers)
from duolib import BIG, DuoConfig, DuoForCausalLM, RandomRoutes
from duolib.book.bench import oracle_component_costs
from duolib.oracle.beam import beam_oracle
from duolib.oracle.brute_force import brute_force_flops, brute_force_loss_matrix, trie_flops
from duolib.oracle.engine import loss_matrix
from duolib.oracle.patterns import enumerate_patterns
from duolib.routing import ROUTE_NAMES


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux ru_maxrss is in KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def markov_batch(vocab: int, batch: int, seq: int, seed: int, fanout: int = 3, active: int = 512) -> torch.Tensor:
    """Sequences of a fixed random sparse Markov chain over ``active`` token ids (each with ``fanout``
    likely successors) with occasional copies of the token 8 positions back: structure a model
    learns in a few hundred steps, so routes matter."""
    active = min(active, vocab)
    table = torch.randint(0, active, (active, fanout), generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    ids = torch.empty(batch, seq, dtype=torch.long)
    ids[:, 0] = torch.randint(0, active, (batch,), generator=g)
    for t in range(1, seq):
        nxt = table[ids[:, t - 1], torch.randint(0, fanout, (batch,), generator=g)]
        copy = (torch.rand(batch, generator=g) < 0.2) & (t >= 8)
        ids[:, t] = torch.where(copy, ids[:, max(0, t - 8)], nxt)
    return ids


def quick_train(model, steps: int, batch: int = 8, seq: int = 64, lr: float = 3e-3) -> float:
    """``steps`` AdamW steps with random routing (p_big 0.5); returns the last loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    routes = RandomRoutes(p_big=0.5, seed=0)
    model.train()
    loss = float("nan")
    for step in range(steps):
        x = markov_batch(model.config.vocab_size, batch, seq, seed=10_000 + step)
        out = model(x, labels=x, routes=routes)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = float(out.loss.detach())
    model.eval()
    return loss


def component_costs(model, ids) -> dict:
    """Seconds for one node (``B x (T-1)`` rows): attention block, each FFN, leaf (wall clock)."""
    return oracle_component_costs(model, ids, clock="wall")


def bounds(c: dict, counts: dict, patterns: torch.Tensor) -> dict:
    L = patterns.shape[1]
    P = len(patterns)
    attn = c["attention"] + c["norm"]
    per_code = torch.tensor([c[name] for name in ROUTE_NAMES], dtype=torch.float64)
    brute = P * L * attn + float(per_code[patterns.long()].sum()) + P * c["leaf"]
    trie = (counts["internal_nodes"] * attn + sum(n * c[name] for name, n in counts["edges"].items())
            + counts["leaves"] * c["leaf"])
    mean_ffn = float(per_code[patterns.long()].mean())
    layer = attn + mean_ffn
    nodes = counts["internal_nodes"] - 1 + counts["leaves"]  # every node but the root
    simple = P * (L * layer + c["leaf"]) / (nodes * layer + P * c["leaf"])
    return {"brute_pred_s": brute, "trie_pred_s": trie, "bound": brute / trie, "simple_bound": simple}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="trained model folder (default: the default preset)")
    p.add_argument("--cache-model", default=None,
                   help="folder: load the quickly trained model from it if present, else train and save it there")
    p.add_argument("--profile", default="default")
    p.add_argument("--train-steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--rounds", type=int, default=4, help="pattern blocks the engines alternate over")
    p.add_argument("--max-rows", type=int, default=16384)
    p.add_argument("--widths", type=int, nargs="*", default=[2, 4, 8, 16])
    p.add_argument("--beam-k", nargs="*", default=["6", "none"],
                   help="budgets of the beam comparison ('none': unconstrained)")
    p.add_argument("--proxies", nargs="*", default=["early-exit@64", "suffix@64", "linear"],
                   help="beam proxies: early-exit or suffix, @M for a top-M restricted vocabulary; linear "
                        "(fixed-context only, skipped under shared)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared machine OpenMP oversubscription makes the brute "
                        "force's many tiny ops erratically slow, which would flatter the trie)")
    p.add_argument("--skip-engine", action="store_true", help="only the beam comparison (parts 1-2 skipped)")
    p.add_argument("--choices", default="small,big",
                   help="routes of the beam comparison, e.g. skip,big (the book's frontier with skip: notebook 03)")
    p.add_argument("--json", default=None, help="write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    report = {"threads": torch.get_num_threads()}

    cached = args.cache_model and (Path(args.cache_model) / "config.json").is_file()
    if args.model or cached:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(args.model or args.cache_model).eval()
    else:
        model = DuoForCausalLM(DuoConfig.preset(args.profile)).eval()
        if args.train_steps:
            t0 = time.perf_counter()
            loss = quick_train(model, args.train_steps)
            print(f"quick training: {args.train_steps} steps, last loss {loss:.3f} ({time.perf_counter() - t0:.0f} s)")
        if args.cache_model:
            model.save_pretrained(args.cache_model)
    cfg = model.config
    L = cfg.num_hidden_layers
    ids = markov_batch(cfg.vocab_size, args.batch, args.seq_len, seed=99)  # the holdout slice
    N = args.batch * (args.seq_len - 1)
    print(f"model: L={L} d={cfg.hidden_size} big={cfg.big_ffn_size} small={cfg.small_ffn_size} V={cfg.vocab_size}; "
          f"slice {args.batch} x {args.seq_len} ({N} scored tokens); threads {torch.get_num_threads()}")
    print(f"peak RSS before the engines: {peak_rss_mb():.0f} MB")

    if not args.skip_engine:
        engine_vs_brute_force(model, ids, args, report)
    beam_curve(model, ids, args, report)
    print(f"peak RSS overall {peak_rss_mb():.0f} MB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, default=float)
    return 0


def engine_vs_brute_force(model, ids, args, report) -> None:
    # ---- 1. trie vs brute force, alternating over pattern blocks -----------------------------
    cfg = model.config
    L = cfg.num_hidden_layers
    N = ids.numel() - ids.shape[0]
    patterns = enumerate_patterns(L, ("small", "big"))
    P = len(patterns)
    head_bits = max(0, min(L, round(math.log2(max(1, args.rounds)))))
    block_of = (patterns[:, :head_bits] == BIG).long() @ (2 ** torch.arange(head_bits - 1, -1, -1)) if head_bits \
        else torch.zeros(P, dtype=torch.long)
    t_trie = t_brute = 0.0
    diff = 0.0
    counts = {"internal_nodes": 0, "edges": {n: 0 for n in ROUTE_NAMES}, "leaves": 0}
    rss_trie = 0.0
    trie_losses = torch.empty(P, N)
    for block in block_of.unique().tolist():
        rows = (block_of == block).nonzero().flatten()
        t0 = time.perf_counter()
        a = loss_matrix(model, ids, patterns[rows], semantics="shared", max_rows=args.max_rows)
        t_trie += time.perf_counter() - t0
        rss_trie = max(rss_trie, peak_rss_mb())
        t0 = time.perf_counter()
        b = brute_force_loss_matrix(model, ids, patterns[rows], semantics="shared")
        t_brute += time.perf_counter() - t0
        diff = max(diff, float((a.losses - b.losses).abs().max()))
        counts["internal_nodes"] += a.stats["internal_nodes"]
        counts["leaves"] += a.stats["leaves"]
        for n in ROUTE_NAMES:
            counts["edges"][n] += a.stats["edges"][n]
        trie_losses[rows] = a.losses
        print(f"  block {block}: {len(rows)} patterns, trie {a.stats['seconds']:.1f} s, brute {b.stats['seconds']:.1f} s")
    speedup = t_brute / t_trie
    print(f"exhaustive 2^{L} = {P} patterns x {N} tokens (shared):")
    print(f"  trie engine  {t_trie:8.1f} s   {P * N / t_trie:12,.0f} pattern-tokens/s")
    print(f"  brute force  {t_brute:8.1f} s   {P * N / t_brute:12,.0f} pattern-tokens/s")
    print(f"  speed-up     {speedup:8.2f} x   (target >= 2.5x)   max |trie - brute| = {diff:.2e}")
    print(f"  peak RSS after the trie blocks {rss_trie:.0f} MB, after brute force too {peak_rss_mb():.0f} MB")
    flops_ratio = brute_force_flops(cfg, patterns, args.batch, args.seq_len) / trie_flops(cfg, counts, args.batch, args.seq_len)
    report.update(patterns=P, tokens=N, trie_s=t_trie, brute_s=t_brute, speedup=speedup, max_abs_diff=diff,
                  flops_ratio=flops_ratio, peak_rss_mb_trie=rss_trie)

    # ---- 2. the bound from measured component costs -------------------------------------------
    c = component_costs(model, ids)
    bd = bounds(c, counts, patterns)
    print("  measured per node (ms): " + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in c.items()))
    print(f"  bound from evaluation counts: brute/trie = {bd['brute_pred_s']:.1f} s / {bd['trie_pred_s']:.1f} s "
          f"= {bd['bound']:.2f}x  (simple formula {bd['simple_bound']:.2f}x; FLOP ledger {flops_ratio:.2f}x)")
    print(f"  achieved {speedup / bd['bound']:.0%} of the bound (target >= 85%); measured / predicted time: "
          f"trie {t_trie / bd['trie_pred_s']:.0%} (below 100%: batched nodes beat one-node costs), "
          f"brute force {t_brute / bd['brute_pred_s']:.0%}")
    report.update(component_s=c, **bd, fraction_of_bound=speedup / bd["bound"])



def beam_curve(model, ids, args, report) -> None:
    # ---- 3. beam search vs exhaustive ----------------------------------------------------------
    cfg = model.config
    L = cfg.num_hidden_layers
    report["beam"] = []
    for k_arg in args.beam_k if args.widths else ():
        k = None if k_arg.lower() == "none" else int(k_arg)
        n_pat = len(enumerate_patterns(L, args.choices, k))
        print(f"beam search, per-token oracle {'over all' if k is None else f'with k={k} big layers of'} "
              f"{n_pat} patterns:")
        print(f"  {'semantics':<14}{'proxy':<16}{'width':>5}{'ppl':>10}{'gap':>9}{'FLOPs x less':>14}"
              f"{'time x less':>13}")
        for semantics in ("fixed-context", "shared"):
            t0 = time.perf_counter()
            ex = loss_matrix(model, ids, choices=args.choices, k=k, semantics=semantics, max_rows=args.max_rows)
            t_ex = time.perf_counter() - t0
            f_ex = trie_flops(cfg, ex.stats, args.batch, args.seq_len)
            ppl_ex = ex.oracle(k).perplexity
            print(f"  {semantics:<14}{'exhaustive':<16}{'':>5}{ppl_ex:10.3f}{'':>9}{1.0:14.1f}{1.0:13.1f}"
                  f"   ({t_ex:.1f} s)")
            for spec in args.proxies:
                proxy, _, vocab = spec.partition("@")
                if proxy == "linear" and semantics != "fixed-context":
                    continue  # one gradient per token cannot express a shared route's effect on later tokens
                for w in args.widths:
                    r = beam_oracle(model, ids, w, choices=args.choices, k=k, semantics=semantics, proxy=proxy,
                                    proxy_vocab=int(vocab) if vocab else None, max_rows=args.max_rows)
                    gap = r.perplexity / ppl_ex - 1
                    row = dict(k=k, semantics=semantics, proxy=spec, width=w, ppl=r.perplexity, exhaustive_ppl=ppl_ex,
                               gap=gap, flops_less=f_ex / r.cost["flops"], time_less=t_ex / r.cost["seconds"])
                    report["beam"].append(row)
                    print(f"  {semantics:<14}{spec:<16}{w:>5}{r.perplexity:10.3f}{gap:9.2%}{row['flops_less']:14.1f}"
                          f"{row['time_less']:13.1f}")


if __name__ == "__main__":
    sys.exit(main())
