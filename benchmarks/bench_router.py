"""Hard-routed inference at ~4 big layers of 12 vs all-big: does sparse execution realise the FLOP saving?

Two policies route every token through 4 big and 8 small FFNs on average:

- ``token4``: :class:`~duolib.TokenRoutes`, exactly 4 big layers per token (random layers per token);
- ``router``: a randomly initialised :class:`~duolib.router.RouterPolicy` whose per-layer biases are
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
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from duolib import BIG, SMALL, DuoConfig, DuoForCausalLM, FixedRoutes, RoutingPolicy, TokenRoutes  # noqa: E402
from duolib.flops import mean_flops_per_token  # noqa: E402
from duolib.router import RouterPolicy  # noqa: E402

MODELS = {
    "default": dict(),
    "wide": dict(hidden_size=512, num_attention_heads=8, big_ffn_size=2048, small_ffn_size=128),
}


def token_routes(batch: int, seq: int, layers: int, k: int, seed: int = 0) -> torch.Tensor:
    """``[batch, seq, layers]`` codes with exactly ``k`` big layers per token (random), the rest small."""
    g = torch.Generator().manual_seed(seed)
    order = torch.rand(batch, seq, layers, generator=g).argsort(-1)
    routes = torch.full((batch, seq, layers), SMALL, dtype=torch.long)
    return routes.scatter(-1, order[..., :k], BIG)


@torch.no_grad()
def calibrated_router(model, x, frac_big: float) -> RouterPolicy:
    """Random router (std 1) whose bias puts a fraction ``frac_big`` of the tokens big at every layer.

    Calibrated layer by layer along the router's own routes (later layers see the routed states)."""
    router = RouterPolicy.for_model(model, init_std=1.0, seed=0)

    class Calibrate(RoutingPolicy):  # sets each layer's bias, then routes
        def route_layer(self, layer_idx, hidden_states, position_ids):
            logits = router.logits(layer_idx, hidden_states)
            margin = (logits[..., 1] - logits[..., 0]).flatten()  # big minus small
            router.layers[layer_idx].bias[1] -= torch.quantile(margin.float().cpu(), 1 - frac_big).to(margin.device)
            return router.route_layer(layer_idx, hidden_states, position_ids)

    model(x, routes=Calibrate())
    return router.eval()


def time_forward(model, x, policy, device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one forward pass."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        model(x, routes=policy)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0


def bench(name: str, args, device) -> list[dict]:
    torch.manual_seed(0)
    cfg = DuoConfig.preset("default", **MODELS[name])
    model = DuoForCausalLM(cfg).to(device).eval()
    L = cfg.num_hidden_layers
    x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), generator=torch.Generator().manual_seed(1)).to(device)
    all_big = FixedRoutes([BIG] * L)
    policies = {"token4": TokenRoutes(token_routes(args.batch, args.seq, L, 4).to(device)),
                "router": calibrated_router(model, x, 4 / L),
                # reference: one pattern for all tokens, no gather / scatter (the routing-overhead-free bound)
                "fixed4": FixedRoutes([BIG] * 4 + [SMALL] * (L - 4))}
    rows = []
    for pname, policy in policies.items():
        with torch.no_grad():
            routes = model(x, routes=policy, return_routes=True).routing.routes.cpu()
            big_routes = torch.full_like(routes, BIG)
        predicted = 1 - mean_flops_per_token(cfg, routes) / mean_flops_per_token(cfg, big_routes)
        for _ in range(args.warmup):
            time_forward(model, x, all_big, device)
            time_forward(model, x, policy, device)
        t_big, t_routed = [], []
        for _ in range(args.repeats):  # alternate, same process
            t_big.append(time_forward(model, x, all_big, device))
            t_routed.append(time_forward(model, x, policy, device))
        clock = 1 if args.clock == "cpu" else 0
        tb, tr = (statistics.median(t[clock] for t in ts) for ts in (t_big, t_routed))
        wall_b, wall_r = (statistics.median(t[0] for t in ts) for ts in (t_big, t_routed))
        measured = 1 - tr / tb
        rows.append(dict(model=name, policy=pname, big_layers=float((routes == BIG).sum(-1).float().mean()),
                         t_all_big_ms=1e3 * tb, t_routed_ms=1e3 * tr, measured=measured, predicted=predicted,
                         realised=measured / predicted, wall_measured=1 - wall_r / wall_b))
    return rows


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
