"""The cost of the selection controls on a profile's model (random init: the shapes are what count).

Times, at ``--threads`` torch threads, wall clock and this process's CPU time (on a shared machine the CPU
time is the steadier number):

- one placebo candidate (:func:`duolib.oracle.controls.placebo_losses`: a full all-big forward with dropped
  units) on ``--windows`` windows of ``--seq-len`` random tokens, per semantics, and how many candidates and
  windows fit in ``--budget-s`` CPU seconds per holdout;
- one ``loss_matrix`` call with and without ``entropy=True`` on ``--entropy-windows`` windows over the
  ``--k``-big patterns (the label-free oracle's extra cost).

    python benchmarks/bench_controls.py                    # default preset, 32 x 128, 1 thread
    python benchmarks/bench_controls.py --profile tiny --windows 2 --seq-len 16 --entropy-windows 2 --k 2
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch

from duolib import DuoConfig, DuoForCausalLM
from duolib.oracle.controls import placebo_losses
from duolib.oracle.engine import loss_matrix


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--windows", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--candidates", type=int, default=3, help="placebo candidates timed (after the reference)")
    ap.add_argument("--semantics", default="shared,fixed-context")
    ap.add_argument("--budget-s", type=float, default=300.0)
    ap.add_argument("--entropy-windows", type=int, default=4)
    ap.add_argument("--k", type=int, default=6, help="budget of the loss_matrix timing (its C(L, k) patterns)")
    ap.add_argument("--repeats", type=int, default=1, help="loss_matrix calls per setting (alternating)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = DuoConfig.preset(args.profile)
    model = DuoForCausalLM(cfg).eval()
    L, g = cfg.num_hidden_layers, torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (args.windows, args.seq_len), generator=g)
    n_max = max(math.comb(L, k) for k in range(L + 1))
    print(f"{args.profile}: L={L}, d={cfg.hidden_size}, big={cfg.big_ffn_size}, vocab={cfg.vocab_size}; "
          f"{args.threads} thread(s); placebo on {args.windows} x {args.seq_len} tokens")
    for sem in args.semantics.split(","):
        placebo_losses(model, ids, 1, semantics=sem)  # warm-up (allocator, kernels)
        _, wall, cpu = timed(lambda: placebo_losses(model, ids, args.candidates, semantics=sem))
        per_wall, per_cpu = wall / (args.candidates + 1), cpu / (args.candidates + 1)  # + the reference forward
        fit = int(args.budget_s / per_cpu)
        windows = args.windows * args.budget_s / (per_cpu * (n_max + 1))
        print(f"placebo {sem}: {per_wall:.2f} s wall, {per_cpu:.2f} s CPU per candidate; in {args.budget_s:.0f} CPU s: "
              f"{fit} candidates on {args.windows} windows, or all {n_max} (every budget) on {windows:.1f} windows")
    x = ids[:args.entropy_windows]
    for entropy in (False, True) * args.repeats:
        m, wall, cpu = timed(lambda: loss_matrix(model, x, k=args.k, entropy=entropy))
        print(f"loss_matrix k={args.k} ({m.num_patterns} patterns, {args.entropy_windows} x {args.seq_len}) "
              f"entropy={entropy}: {wall:.1f} s wall, {cpu:.1f} s CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
