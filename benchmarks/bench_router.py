"""Hard-routed inference at ~4 big layers of 12 vs all-big: does sparse execution realise the FLOP saving?

Two policies route every token through 4 big and 8 small FFNs on average:

- ``token4``: :class:`~duolib.TokenRoutes`, exactly 4 big layers per token (random layers per token);
- ``router``: a randomly initialised :class:`~duolib.router.policy.RouterPolicy` whose per-layer biases are
  calibrated on the batch so that each layer sends a third of the tokens big (~4 of 12 per token);
- ``fixed4`` (reference): the same pattern ``BBBBSSSSSSSS`` for every token, so no gather / scatter:
  the saving sparse execution could reach with zero routing overhead.

For the ``default`` profile model (12 layers, d 128, FFN 512 / 32) and a wider one (d 512, FFN
2048 / 128, 12 layers), in one process, forward passes (no grad) alternate between all-big and
routed; each time is the median of ``--repeats`` (on CPU, by default, the process's CPU time: with
one thread it is the work done, unaffected by other processes on a shared machine; ``--clock wall``
for wall-clock time).  Printed: measured saving ``1 - t_routed / t_all_big``,
the FLOP-predicted saving ``1 - flops_routed / flops_all_big`` (duolib.flops on the traces) and
their ratio (target >= 0.70).

    python benchmarks/bench_router.py [--batch 8] [--seq 128] [--repeats 15] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from duolib import DuoConfig  # noqa: E402
from duolib.book.bench import (  # noqa: E402,F401
    WIDE, calibrated_router, routed_inference_speed, time_forward, token_routes
)

MODELS = {
    "default": dict(),
    "wide": WIDE,
}


def bench(name: str, args, device) -> list[dict]:
    """The measurement itself lives in :func:`duolib.book.bench.routed_inference_speed` (the book calls it too)."""
    cfg = DuoConfig.preset("default", **MODELS[name])
    rows = routed_inference_speed(cfg, args.batch, args.seq, args.repeats, args.warmup, args.clock, device, k=4)
    return [dict(model=name, **r) for r in rows]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="default,wide", help="comma-separated: default, wide")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU (default 1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--clock", choices=("cpu", "wall"), default=None,
                   help="what the times measure: this process's CPU time (default on CPU: robust on a shared "
                        "machine, exact with one thread) or wall-clock time (default on GPU)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    args.clock = args.clock or ("cpu" if device.type == "cpu" else "wall")
    print(f"device {device}, threads {torch.get_num_threads()}, batch {args.batch} x seq {args.seq}, "
          f"median of {args.repeats} alternating repeats, {args.clock} time")
    header = f"{'model':<8} {'policy':<7} {'big/12':>6} {'all-big ms':>10} {'routed ms':>9} {'measured':>8} " \
             f"{'predicted':>9} {'realised':>8} {'wall-clock measured':>19}"
    print(header)
    ok = True
    for name in args.models.split(","):
        for r in bench(name.strip(), args, device):
            print(f"{r['model']:<8} {r['policy']:<7} {r['big_layers']:>6.2f} {r['t_all_big_ms']:>10.2f} "
                  f"{r['t_routed_ms']:>9.2f} {r['measured']:>8.1%} {r['predicted']:>9.1%} {r['realised']:>8.0%} "
                  f"{r['wall_measured']:>19.1%}")
            ok &= r["realised"] >= 0.7 or r["policy"] == "fixed4"
    print("target (>= 70% of the predicted saving realised by the per-token policies):", "met" if ok else "NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
