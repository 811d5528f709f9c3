"""Training-step speed of Duo (random routing, p_big 0.5) vs a dense Llama of the same sizes.

Times whole training steps (forward + backward + AdamW step) of
  * ``DuoForCausalLM`` with random routes drawn per token and layer (``duolib.train.training_routes``),
  * ``transformers.LlamaForCausalLM`` with one FFN of the big width (what an all-big Duo model is),
alternating the two step by step in one process (``--repeats`` pairs), and reports the median step time (CPU time of the process by default: ``--clock cpu``), tokens/s, the measured saving ``1 - t_duo / t_dense`` and the saving the FLOP ledger
predicts ``1 - F_duo / F_dense`` (``duolib.flops.training_flops_per_token``).  Target: measured saving
at least 70% of the predicted one.

    python benchmarks/bench_train.py                      # default model and the wide model
    python benchmarks/bench_train.py --models wide --threads 2 --repeats 11
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from duolib import DuoConfig
from duolib.book.bench import CLOCKS, WIDE, step_fn, train_step_speed  # noqa: F401  (step_fn: re-exported)
from duolib.book.bench import timed as _timed

MODELS = {
    "default": {},
    # hidden 512, big FFN 2048 (small 128): the FFN dominates the FLOPs
    "wide": WIDE,
}


def row_major_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``duolib.model.shifted_token_losses`` computed on [N, V] rows instead of a transposed [B, V, T]
    view (same values; the transposed log-softmax cost ~14% of a default-model step here)."""
    lg, t = logits[:, :-1].float(), labels[:, 1:]
    return F.cross_entropy(lg.reshape(-1, lg.shape[-1]), t.reshape(-1), ignore_index=-100,
                           reduction="none").view(t.shape)


clock = time.process_time


def timed(step, i: int) -> float:
    return _timed(step, i, clock)


def bench(name: str, batch: int, seq: int, repeats: int, p_big: float, warmup: int) -> dict:
    """The measurement itself lives in :func:`duolib.book.bench.train_step_speed` (the book calls it too)."""
    cfg = DuoConfig.preset("default", **MODELS[name])
    return dict(model=name, **train_step_speed(cfg, batch, seq, repeats, p_big, warmup, clock=clock))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7, help="timed (duo, dense) step pairs")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--p-big", type=float, default=0.5)
    ap.add_argument("--clock", choices=list(CLOCKS), default="cpu",
                    help="cpu: CPU time of this process (robust to other users' jobs on a shared machine; "
                         "with one thread it is the step's compute time); wall: elapsed time")
    ap.add_argument("--row-major-ce", action="store_true",
                    help="diagnostic: patch duolib.model.shifted_token_losses with row_major_token_losses")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared 2-core machine two threads can be far slower)")
    args = ap.parse_args(argv)
    global clock
    clock = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.row_major_ce:
        import duolib.model

        duolib.model.shifted_token_losses = row_major_token_losses
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.clock} clock, batch {args.batch} x {args.seq} tokens, "
          f"p_big {args.p_big}, median of {args.repeats} alternating steps each"
          + (", row-major cross-entropy patched in" if args.row_major_ce else ""))
    for name in args.models:
        r = bench(name, args.batch, args.seq, args.repeats, args.p_big, args.warmup)
        print(f"{r['model']:>8} (L {r['L']}, d {r['d']}, big {r['big']}, small {r['small']}): "
              f"duo {r['tok_s_duo']:,.0f} tok/s, dense {r['tok_s_dense']:,.0f} tok/s | saving measured "
              f"{r['measured']:.1%}, predicted {r['predicted']:.1%}, ratio {r['ratio']:.2f} "
              f"({'meets' if r['ratio'] >= 0.7 else 'MISSES'} the 0.70 target)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
