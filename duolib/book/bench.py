"""Speed measurements shared by ``benchmarks/`` and the book's performance notebook.

- :func:`train_step_speed`: training steps of Duo (random routing) vs a dense Llama of the big width
  (``benchmarks/bench_train.py``);
- :func:`routed_inference_speed`: hard-routed forwards at about L/3 big layers vs all-big
  (``benchmarks/bench_router.py``);
- :func:`oracle_speedup`: the trie oracle engine vs brute force on one pattern set, with the
  bound the FLOP ledger gives (:func:`duolib.oracle.brute_force.trie_flops` /
  :func:`~duolib.oracle.brute_force.brute_force_flops`).

Each returns plain dicts: measured saving ``1 - t_cheap / t_expensive`` next to the saving the FLOP
ledger predicts.  The two variants alternate call by call (both see the same machine load); the saving is
the median over adjacent pairs of ``1 - t_cheap / t_expensive`` (:func:`paired_saving`), which cancels
the slow drifts of a shared machine that a ratio of two separate medians keeps; reported times are medians;
``clock="cpu"`` (default on CPU) times this process's CPU time, robust to other jobs on a shared machine.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from ..routing import BIG, ROUTE_NAMES, SMALL, FixedRoutes, RoutingPolicy, TokenRoutes
from ..convert import llama_config
from ..flops import mean_flops_per_token, training_flops_per_token
from ..model import DuoForCausalLM
from ..routing import training_routes
from ..router.policy import RouterPolicy
from ..oracle.engine import loss_matrix
from ..oracle.patterns import resolve_patterns
from ..oracle.setup import ffn_residual, oracle_setup
from ..oracle.brute_force import brute_force_flops, brute_force_loss_matrix, trie_flops

CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}

#: The wide model of the benchmarks: hidden 512, big FFN 2048 (small 128), the FFN dominates the FLOPs.
WIDE = dict(hidden_size=512, num_attention_heads=8, big_ffn_size=2048, small_ffn_size=128)


def _clock(clock: str | Callable[[], float]) -> Callable[[], float]:
    if callable(clock):
        return clock
    if clock not in CLOCKS:
        raise ValueError(f"clock={clock!r}; allowed: {', '.join(CLOCKS)}")
    return CLOCKS[clock]


def paired_saving(t_cheap: list[float], t_expensive: list[float]) -> float:
    """Median over adjacent pairs ``i`` of ``1 - t_cheap[i] / t_expensive[i]``."""
    if len(t_cheap) != len(t_expensive) or not t_cheap:
        raise ValueError(f"need equally many timings, at least one; got {len(t_cheap)} and {len(t_expensive)}")
    return statistics.median(1 - c / e for c, e in zip(t_cheap, t_expensive))


# ----------------------------------------------------------------------------- training


def step_fn(model, x, routes_for_step):
    """One AdamW training step of ``model`` on ``x`` (routes from ``routes_for_step(i)``, or none)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=False)

    def step(i: int) -> None:
        kw = {} if routes_for_step is None else {"routes": routes_for_step(i)}
        loss = model(x, labels=x, **kw).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def timed(step, i: int, clock: Callable[[], float] = time.process_time) -> float:
    t0 = clock()
    step(i)
    return clock() - t0


def train_step_speed(cfg, batch: int, seq: int, repeats: int, p_big: float = 0.5, warmup: int = 1,
                     clock="cpu") -> dict:
    """Median training-step time of ``DuoForCausalLM(cfg)`` under random routing (``p_big``) vs a dense
    ``LlamaForCausalLM`` of the big width, alternating step by step; saving measured vs predicted by
    :func:`duolib.flops.training_flops_per_token`."""
    from transformers import LlamaForCausalLM

    clk = _clock(clock)
    torch.manual_seed(0)
    duo = DuoForCausalLM(cfg).train()
    dense = LlamaForCausalLM(llama_config(cfg)).train()
    x = torch.randint(0, cfg.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
    L = cfg.num_hidden_layers
    routes = lambda i: training_routes(0, i, range(batch), seq, L, p_big)  # noqa: E731
    steps_duo, steps_dense = step_fn(duo, x, routes), step_fn(dense, x, None)
    for i in range(warmup):
        steps_duo(i), steps_dense(i)
    t_duo, t_dense = [], []
    for i in range(warmup, warmup + repeats):  # alternate step by step: both see the same machine load
        t_duo.append(timed(steps_duo, i, clk))
        t_dense.append(timed(steps_dense, i, clk))
    td, tn = statistics.median(t_duo), statistics.median(t_dense)
    f_duo = training_flops_per_token(cfg, p_big, seq_len=seq)
    f_dense = training_flops_per_token(cfg, 1.0, seq_len=seq)
    measured, predicted = paired_saving(t_duo, t_dense), 1 - f_duo / f_dense
    return dict(d=cfg.hidden_size, big=cfg.big_ffn_size, small=cfg.small_ffn_size, L=L,
                batch=batch, seq=seq, tok_s_duo=batch * seq / td, tok_s_dense=batch * seq / tn,
                measured=measured, predicted=predicted, ratio=measured / predicted,
                spread_duo=(min(t_duo), max(t_duo)), spread_dense=(min(t_dense), max(t_dense)))


# ----------------------------------------------------------------------------- routed inference


def token_routes(batch: int, seq: int, layers: int, k: int, seed: int = 0) -> torch.Tensor:
    """``[batch, seq, layers]`` codes with exactly ``k`` big layers per token (random), the rest small."""
    g = torch.Generator().manual_seed(seed)
    order = torch.rand(batch, seq, layers, generator=g).argsort(-1)
    routes = torch.full((batch, seq, layers), SMALL, dtype=torch.long)
    return routes.scatter(-1, order[..., :k], BIG)


@torch.no_grad()
def calibrated_router(model, x, frac_big: float):
    """Random router (std 1) whose bias puts a fraction ``frac_big`` of the tokens big at every layer.

    Calibrated layer by layer along the router's own routes (later layers see the routed states)."""
    router = RouterPolicy.for_model(model, init_std=1.0, seed=0)

    class Calibrate(RoutingPolicy):  # sets each layer's bias, then routes
        def route_layer(self, layer_idx, hidden_states, position_ids):
            logits = router.logits(layer_idx, hidden_states)
            margin = (logits[..., 1] - logits[..., 0]).flatten()  # big minus small
            q = float(torch.quantile(margin.float().cpu(), 1 - frac_big))
            router.shift([0.0, -q], layer_idx)  # (small, big): big wins for the top frac_big margins
            return router.route_layer(layer_idx, hidden_states, position_ids)

    model(x, routes=Calibrate(), use_cache=False)
    return router.eval()


def time_forward(model, x, policy, device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one forward pass."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        model(x, routes=policy, use_cache=False)  # timed: no KV cache that nothing reads
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0


def routed_inference_speed(cfg, batch: int, seq: int, repeats: int, warmup: int = 3, clock: str = "cpu",
                           device="cpu", k: int | None = None) -> list[dict]:
    """Forward passes of ``DuoForCausalLM(cfg)`` routed with ``k`` big layers of L per token
    (default ``round(L / 3)``: 4 of 12) vs all-big, alternating (round robin over the policies, each
    routed pass paired with the all-big pass just before it); one row per policy:

    ``token<k>`` (exactly k random big layers per token), ``router`` (a random router calibrated to
    k / L big per layer) and ``fixed<k>`` (one pattern for all tokens: no gather / scatter, the
    overhead-free reference).  ``measured`` uses ``clock``; ``wall_measured`` is always wall-clock."""
    device = torch.device(device)
    torch.manual_seed(0)
    model = DuoForCausalLM(cfg).to(device).eval()
    L = cfg.num_hidden_layers
    k = round(L / 3) if k is None else int(k)
    if not 0 <= k <= L:
        raise ValueError(f"k={k} big layers is outside 0..{L}")
    x = torch.randint(0, cfg.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(1)).to(device)
    all_big = FixedRoutes([BIG] * L)
    policies = {f"token{k}": TokenRoutes(token_routes(batch, seq, L, k).to(device)),
                "router": calibrated_router(model, x, k / L),
                # reference: one pattern for all tokens, no gather / scatter (the routing-overhead-free bound)
                f"fixed{k}": FixedRoutes([BIG] * k + [SMALL] * (L - k))}
    predicted, big_layers = {}, {}
    for pname, policy in policies.items():
        with torch.no_grad():
            routes = model(x, routes=policy, return_routes=True, use_cache=False).routing.routes.cpu()
        predicted[pname] = 1 - mean_flops_per_token(cfg, routes) / mean_flops_per_token(cfg, torch.full_like(routes, BIG))
        big_layers[pname] = float((routes == BIG).sum(-1).float().mean())
    times = {pname: ([], []) for pname in policies}  # (all-big, routed) (wall, cpu) pairs
    for i in range(warmup + repeats):  # round robin over the policies, each routed pass next to an all-big one
        for pname, policy in policies.items():
            pair = time_forward(model, x, all_big, device), time_forward(model, x, policy, device)
            if i >= warmup:
                for kept, t in zip(times[pname], pair):
                    kept.append(t)
    which = 1 if clock == "cpu" else 0
    rows = []
    for pname, (t_big, t_routed) in times.items():
        tb, tr = (statistics.median(t[which] for t in ts) for ts in (t_big, t_routed))
        measured = paired_saving([t[which] for t in t_routed], [t[which] for t in t_big])
        rows.append(dict(policy=pname, big_layers=big_layers[pname],
                         t_all_big_ms=1e3 * tb, t_routed_ms=1e3 * tr, measured=measured, predicted=predicted[pname],
                         realised=measured / predicted[pname] if predicted[pname] else float("nan"),
                         wall_measured=paired_saving([t[0] for t in t_routed], [t[0] for t in t_big])))
    return rows


# ----------------------------------------------------------------------------- oracle engine


def _median_time(fn, clk, repeats: int = 5, inner: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = clk()
        for _ in range(inner):
            fn()
        times.append((clk() - t0) / inner)
    return statistics.median(times)


@torch.no_grad()
def oracle_component_costs(model, input_ids: torch.Tensor, clock="cpu") -> dict:
    """Seconds of one trie node (``B x (T-1)`` rows) per piece: attention block, norm, each FFN, leaf
    (final norm + head + loss), measured on the middle layer (as ``benchmarks/bench_oracle.py`` does)."""
    clk = _clock(clock)
    setup = oracle_setup(model, input_ids, "shared")
    h = setup.h0[None]
    mid = len(model.model.layers) // 2
    layer = model.model.layers[mid]
    a = setup.attend(mid, h)
    x = layer.post_attention_layernorm(a)
    return {"attention": _median_time(lambda: setup.attend(mid, h), clk),
            "norm": _median_time(lambda: layer.post_attention_layernorm(a), clk),
            "big": _median_time(lambda: ffn_residual(layer, BIG, a, x), clk),
            "small": _median_time(lambda: ffn_residual(layer, SMALL, a, x), clk),
            "skip": 0.0,
            "leaf": _median_time(lambda: setup.leaf(a), clk)}


def oracle_cost_bound(costs: dict, counts: dict, patterns: torch.Tensor) -> float:
    """The speed-up the evaluation counts allow (``benchmarks/bench_oracle.py``'s bound):
    brute = sum_p (L c_attn + sum_i c_ffn(p_i) + c_leaf), trie = nodes c_attn + sum_edges c_ffn + leaves c_leaf."""
    L, P = patterns.shape[1], len(patterns)
    attn = costs["attention"] + costs["norm"]
    per_code = torch.tensor([costs[name] for name in ROUTE_NAMES], dtype=torch.float64)
    brute = P * L * attn + float(per_code[patterns.long()].sum()) + P * costs["leaf"]
    trie = (counts["internal_nodes"] * attn + sum(n * costs[name] for name, n in counts["edges"].items())
            + counts["leaves"] * costs["leaf"])
    return brute / trie


def oracle_speedup(model, input_ids: torch.Tensor, patterns=None, *, k: int | None = None, clock: str = "cpu",
                   max_rows: int = 16384) -> dict:
    """Time the trie engine (:func:`duolib.oracle.engine.loss_matrix`) and brute force
    (:func:`~duolib.oracle.brute_force.brute_force_loss_matrix`) on the same patterns (default: all 2^L over
    {small, big}, or those with ``k`` big layers) and ``input_ids``; returns their times, the
    speed-up, two bounds on it, the share of each achieved and the largest loss difference:

    ``flops_bound`` = ``brute_force_flops / trie_flops`` (the FLOP ledger: the work the trie saves) and
    ``cost_bound`` = :func:`oracle_cost_bound` from measured per-node costs (:func:`oracle_component_costs`).
    Batching many nodes per call can beat both: they count work, not per-call overheads."""
    clk = _clock(clock)
    cfg = model.config
    patterns, _ = resolve_patterns(cfg.num_hidden_layers, patterns, ("small", "big"), k)
    B, T = input_ids.shape
    t0 = clk()
    trie = loss_matrix(model, input_ids, patterns, max_rows=max_rows)
    t_trie = clk() - t0
    t0 = clk()
    brute = brute_force_loss_matrix(model, input_ids, patterns)
    t_brute = clk() - t0
    bound = brute_force_flops(cfg, patterns, B, T) / trie_flops(cfg, trie.stats, B, T)
    cost_bound = oracle_cost_bound(oracle_component_costs(model, input_ids, clock), trie.stats, patterns)
    speedup = t_brute / t_trie
    return dict(patterns=len(patterns), tokens=trie.num_tokens, trie_s=t_trie, brute_s=t_brute, speedup=speedup,
                flops_bound=bound, fraction_of_bound=speedup / bound, cost_bound=cost_bound,
                fraction_of_cost_bound=speedup / cost_bound,
                max_abs_diff=float((trie.losses - brute.losses).abs().max()))
