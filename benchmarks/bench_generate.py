"""Generation speed with a KV cache: does routing turn into tokens per second, and does the all-small
path pay as a draft for the all-big model?

For each model (the ``default`` profile model and a wider one, hidden 512 and FFNs 2048 / 128, randomly
initialised unless ``--run`` gives a trained Stage-1 run folder), in one process, round by round:

- greedy ``model.generate`` of ``--new-tokens`` tokens with a KV cache under all-big, all-small and fixed
  patterns with k of L layers big (``--ks``; the first k layers big), and a trained router (``--router``,
  with ``--run``);
- self-speculative decoding (:func:`duolib.speculative.speculative_generate`, greedy, all-big target) with
  each draft routing (all-small and the L/3-big pattern) and draft length (``--draft-lens``).

Printed per variant: tokens/s (median), the speed-up over all-big generate (median over rounds of the
paired ratio, with its 95% bootstrap interval over rounds) beside the FLOP-predicted one, and for
speculative decoding the share of drafts accepted and new tokens per verifying forward.  A randomly
initialised model's greedy text repeats a few tokens, so its acceptance says little: give ``--run`` for
acceptance on real text (the prompts are then the run's holdout windows).  On CPU the times are this
process's CPU time (``--clock wall`` for wall-clock).

    python benchmarks/bench_generate.py [--models default,wide] [--run RUN_DIR [--router ROUTER_DIR]]
        [--prompt-len 32] [--new-tokens 32] [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from duolib import DuoConfig, DuoForCausalLM  # noqa: E402
from duolib.book.bench import WIDE  # noqa: E402
from duolib.book.generation import fixed_patterns, generation_speed, holdout_prompts  # noqa: E402

MODELS = {"default": dict(), "wide": WIDE}


def prompts_for(model, args) -> torch.Tensor:
    """The run's holdout windows when a run is given, else random tokens (seeded)."""
    if args.run:
        from duolib.data.run_data import run_data

        return holdout_prompts(run_data(args.run).holdout, args.prompts, args.prompt_len)
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, model.config.vocab_size, (args.prompts, args.prompt_len), generator=g)


def build(name: str, args):
    if args.run:
        from duolib.train.run_folder import load_run

        if name != "default":
            raise SystemExit(f"--run gives one trained model; run with --models default (not {name})")
        if args.weights:
            return DuoForCausalLM.from_pretrained(args.weights).eval()
        return load_run(args.run).eval()
    torch.manual_seed(0)
    return DuoForCausalLM(DuoConfig.preset(args.profile, **MODELS[name])).eval()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="default,wide", help="comma-separated: default, wide")
    p.add_argument("--profile", default="default", help="the model preset of 'default' (tiny for a smoke run)")
    p.add_argument("--run", default=None, help="a trained Stage-1 run folder (duo train) instead of random init")
    p.add_argument("--weights", default=None, help="with --run: a saved model folder to time instead of the run's "
                                                   "final model (e.g. RUN_DIR/checkpoint/step-00000200)")
    p.add_argument("--router", default=None, help="with --run: a saved router folder (duo route) to time too")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--prompts", type=int, default=4, help="distinct prompts, used round robin")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--ks", default=None, help="comma-separated big-layer counts of the fixed patterns "
                                              "(default: L/3 and 2L/3)")
    p.add_argument("--draft-lens", default="2,4")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU (default 1)")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    draft_lens = [int(k) for k in args.draft_lens.split(",")]
    print(f"threads {torch.get_num_threads()}, prompts {args.prompts} x {args.prompt_len} tokens, "
          f"{args.new_tokens} new tokens, median of {args.repeats} alternating rounds, {args.clock} time, "
          f"{'trained run ' + args.run if args.run else 'random init'}")
    for name in args.models.split(","):
        model = build(name.strip(), args)
        L = model.config.num_hidden_layers
        ks = [int(k) for k in args.ks.split(",")] if args.ks else sorted({max(1, round(L / 3)),
                                                                          max(1, round(2 * L / 3))} - {L})
        patterns = fixed_patterns(L, ks)
        if args.router:
            from duolib.router.policy import load_router

            patterns["router"] = load_router(args.router, model)
        rows = generation_speed(model, prompts_for(model, args), args.new_tokens, args.repeats, patterns=patterns,
                                draft_lens=draft_lens, warmup=args.warmup, clock=args.clock)
        cfg = model.config
        print(f"\n{name}: hidden {cfg.hidden_size}, FFN {cfg.big_ffn_size} / {cfg.small_ffn_size}, {L} layers")
        print(f"{'generate':<10} {'big/L':>5} {'tok/s':>7} {'speed-up [95% CI]':>22} {'predicted':>9}")
        for r in rows["generate"]:
            ci = r["speedup_ci"]
            print(f"{r['variant']:<10} {r['big_layers']:>5.2f} {r['tok_s']:>7.1f} "
                  f"{r['speedup']:>6.2f}x [{ci['low']:.2f}, {ci['high']:.2f}]{'':>5} {r['predicted']:>8.2f}x")
        print(f"{'draft':<10} {'n':>2} {'accepted':>8} {'tok/verify':>10} {'tok/s':>7} {'speed-up [95% CI]':>22} "
              f"{'predicted':>9}")
        for r in rows["speculative"]:
            ci = r["speedup_ci"]
            print(f"{r['variant']:<10} {r['draft_len']:>2} {r['acceptance']:>8.0%} {r['tokens_per_verify']:>10.2f} "
                  f"{r['tok_s']:>7.1f} {r['speedup']:>6.2f}x [{ci['low']:.2f}, {ci['high']:.2f}]{'':>5} "
                  f"{r['predicted']:>8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
