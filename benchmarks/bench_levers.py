"""The levers that pay for longer runs, each measured side by side on the default model, as ratios.

1. Threads: 1 vs 2 torch threads for a Stage-1 training step (16 x 128 tokens, random routes) and for
   the exact oracle (all 2^L {small, big} patterns on a slice), and the count ``threads="auto"``
   (:func:`duolib.utils.calibrate_threads`) picks right now.
2. bf16 vs fp32: the exact oracle (``precision="bf16"``: bf16 leaves, fp32 rescoring; the share
   rescored and the largest reduction difference are printed), a routed forward pass and a training
   step under CPU bf16 autocast.
3. Serial vs parallel book pipeline (``--pipeline``; tiny profile, steps 01, 02, 08, 09 with
   ``jobs=1`` then ``jobs=2``).

Variants alternate call by call (wall clock: threads only show in wall time), so both see the same
load; the host's load average is printed before and after, because on a shared machine every ratio
moves with it.  The model is the default preset trained briefly on a Markov source (as
``bench_oracle.py``; ``--cache-model DIR`` keeps it) or ``--model DIR``.

    python benchmarks/bench_levers.py --cache-model /tmp/duo-bench --repeats 2
    python benchmarks/bench_levers.py --batch 32 --seq-len 129      # the 4,096-token oracle target
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import duolib.model  # noqa: F401  (registers the duo model type with transformers)
from duolib import DuoConfig, DuoForCausalLM, RandomRoutes
from duolib.book.bench import token_routes
from duolib.book.pipeline import run_pipeline
from duolib.oracle.engine import loss_matrix
from duolib.oracle.patterns import enumerate_patterns
from duolib.routing import TokenRoutes
from duolib.utils import calibrate_threads

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_oracle import markov_batch, quick_train  # noqa: E402


def alternate(variants: dict, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall seconds of each ``(setup, fn)`` variant, ``repeats`` rounds in alternation after ``warmup``."""
    times = {name: [] for name in variants}
    for r in range(warmup + repeats):
        for name, (setup, fn) in variants.items():
            setup()
            t0 = time.perf_counter()
            fn()
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def report(title: str, times: dict[str, list[float]], base: str) -> dict:
    med = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"{title}:")
    for name, t in med.items():
        ratio = med[base] / t
        runs = ", ".join(f"{x:.2f}" for x in times[name])
        print(f"  {name:<22} {t:8.2f} s   speed vs {base}: {ratio:5.2f}x   (runs {runs})")
    return med


def train_step(model, x, seed=[0]):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=False)

    def step(amp: bool = False):
        seed[0] += 1
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = model(x, labels=x, routes=RandomRoutes(p_big=0.5, seed=seed[0])).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def threads_lever(model, ids, patterns, repeats) -> None:
    x = markov_batch(model.config.vocab_size, 16, 128, seed=5)
    step = train_step(model.train(), x)
    one, two = (lambda: torch.set_num_threads(1)), (lambda: torch.set_num_threads(2))
    report("training step 16 x 128 (random routes)",
           alternate({"1 thread": (one, step), "2 threads": (two, step)}, repeats), "1 thread")
    model.eval()
    run = lambda: loss_matrix(model, ids, patterns, precision="fp32")  # noqa: E731
    report(f"exact oracle fp32, {len(patterns)} patterns x {ids.numel() - len(ids)} tokens",
           alternate({"1 thread": (one, run), "2 threads": (two, run)}, repeats), "1 thread")
    cal = calibrate_threads()
    print(f"  threads='auto' now picks {cal['threads']} (probe medians: "
          + ", ".join(f"{c} thread(s) {t * 1e3:.1f} ms" for c, t in cal["seconds"].items()) + ")")
    torch.set_num_threads(1)


def bf16_lever(model, ids, patterns, repeats) -> None:
    model.eval()
    keep = lambda: None  # noqa: E731
    out = {}

    def run(precision):
        def fn():
            out[precision] = loss_matrix(model, ids, patterns, precision=precision)
        return fn

    report(f"exact oracle, {len(patterns)} patterns x {ids.numel() - len(ids)} tokens, 1 thread",
           alternate({"fp32": (keep, run("fp32")), "bf16 + fp32 rescoring": (keep, run("bf16"))}, repeats), "fp32")
    a, b = out["fp32"], out["bf16"]
    sa, sb = a.summary(), b.summary()
    diff = max(abs(torch.tensor(sa["per_k"][k][m]).log() - torch.tensor(sb["per_k"][k][m]).log()).item()
               for k in sa["per_k"] for m in sa["per_k"][k] if isinstance(sa["per_k"][k][m], float))
    print(f"  bf16 run: precision {b.stats['precision']}, rescored {b.stats.get('rescored_share', 1):.1%} of the "
          f"entries, largest |mean-loss difference| over the per-k reductions {diff:.1e}")
    B, T = 8, 128
    x = markov_batch(model.config.vocab_size, B, T, seed=6)
    routes = TokenRoutes(token_routes(B, T, model.config.num_hidden_layers, 4))

    def fwd(amp):
        def fn():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                model(x, routes=routes)
        return fn

    report(f"routed forward {B} x {T}, 4 big layers per token",
           alternate({"fp32": (keep, fwd(False)), "bf16 autocast": (keep, fwd(True))}, repeats * 3), "fp32")
    step = train_step(model.train(), markov_batch(model.config.vocab_size, 16, 128, seed=5))
    report("training step 16 x 128", alternate({"fp32": (keep, step), "bf16 autocast": (keep, lambda: step(True))},
                                                repeats), "fp32")
    model.eval()


def pipeline_lever(repeats: int) -> None:
    root = Path(__file__).resolve().parents[1]
    steps = ["01_data", "02_training", "08_dense", "09_retrofit"]
    times = {"jobs=1": [], "jobs=2": []}
    for _ in range(repeats):
        for name, jobs in (("jobs=1", 1), ("jobs=2", 2)):
            with tempfile.TemporaryDirectory() as tmp:
                shutil.copytree(root / "book", Path(tmp) / "book",
                                ignore=shutil.ignore_patterns("_build", "experiments"))
                t0 = time.perf_counter()
                run_pipeline("tiny", root=root, run_dir=Path(tmp) / "runs", book_dir=Path(tmp) / "book", only=steps,
                             jobs=jobs)
                times[name].append(time.perf_counter() - t0)
    report(f"book pipeline, tiny profile, steps {', '.join(steps)}", times, "jobs=1")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="trained model folder")
    p.add_argument("--cache-model", default=None, help="folder: load the quickly trained model, or train and save it")
    p.add_argument("--train-steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=129)
    p.add_argument("--patterns", type=int, default=None, help="the first N of the 2^L patterns (default: all)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--skip", nargs="*", default=[], choices=("threads", "bf16", "pipeline"))
    p.add_argument("--pipeline", action="store_true", help="also time the book pipeline (minutes)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
    cached = args.cache_model and (Path(args.cache_model) / "config.json").is_file()
    if args.model or cached:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(args.model or args.cache_model).eval()
    else:
        torch.manual_seed(0)
        model = DuoForCausalLM(DuoConfig.preset("default"))
        quick_train(model, args.train_steps)
        if args.cache_model:
            model.save_pretrained(args.cache_model)
    ids = markov_batch(model.config.vocab_size, args.batch, args.seq_len, seed=99)
    patterns = enumerate_patterns(model.config.num_hidden_layers)[: args.patterns]
    if "threads" not in args.skip:
        threads_lever(model, ids, patterns, args.repeats)
    if "bf16" not in args.skip:
        bf16_lever(model, ids, patterns, args.repeats)
    if args.pipeline and "pipeline" not in args.skip:
        pipeline_lever(max(1, args.repeats // 2))
    print(f"host load average {os.getloadavg()[0]:.1f} at the end (a shared machine: ratios move with it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
