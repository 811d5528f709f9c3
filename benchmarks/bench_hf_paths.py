"""Cost of the transformers-compatible model paths, and the default SDPA routed forward against the
implementation before them.

``routed`` (the acceptance check: the default SDPA routed forward must not get slower): the
default-profile model under per-token routes (skip / small / big, one fixed route tensor), the code
before the transformers-compatible model (REV, its files read with ``git show REV:...`` into a
temporary package), the new code as a user calls it (``model(x, routes=routes)``: it builds a KV
cache, as Llama does, since ``config.use_cache`` is True) and the new code with ``use_cache=False``
(what duolib's own callers pass).  Each version runs in its own subprocess (the same weights and
inputs), the versions alternate over ``--rounds`` rounds in rotated order, and each process reports
its fastest CPU time of eval ``no_grad`` forwards and of train-mode forward + backward steps.

The other parts run side by side in one process, call by call in rotating order (median and
minimum CPU time of ``--repeats`` calls each):
  * eager vs SDPA attention, gradient checkpointing vs plain (forward + backward);
  * ``torch.compile`` (inductor) vs eager for the all-big forward and the routed forward, with their
    graph breaks (``torch._dynamo.explain``; routed execution has data-dependent shapes by design);
  * static vs dynamic cache greedy decoding (``generate``), per new token;
  * the fixed-context oracle (``loss_matrix``), old vs new (the old package from ``git archive REV``).

    python benchmarks/bench_hf_paths.py                       # all parts
    python benchmarks/bench_hf_paths.py --parts routed --rounds 5 --calls 10
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import torch
from safetensors.torch import load_file, save_file

from duolib import DuoConfig, DuoForCausalLM

ROOT = Path(__file__).resolve().parents[1]
OLD_FILES = ("model", "config", "routing", "flops", "profiles")
clock = time.process_time


def old_model_class(rev: str):
    """``DuoForCausalLM`` as it was at ``rev``: its package files copied into a temporary package."""
    pkg = f"duo_old_{rev[:10]}"
    folder = Path(tempfile.mkdtemp(prefix="duo-old-")) / pkg
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    for name in OLD_FILES:
        text = subprocess.run(["git", "show", f"{rev}:duolib/{name}.py"], cwd=ROOT, check=True, capture_output=True,
                              text=True).stdout
        (folder / f"{name}.py").write_text(text)
    sys.path.insert(0, str(folder.parent))
    return importlib.import_module(f"{pkg}.model").DuoForCausalLM


def side_by_side(calls: dict, repeats: int, warmup: int = 2) -> dict:
    """Median and minimum CPU seconds of each callable, measured in turn with the order rotated every round
    (on a shared machine the minimum is the steadier estimate of a call's own cost)."""
    for f in calls.values():
        for _ in range(warmup):
            f()
    times, names = {k: [] for k in calls}, list(calls)
    for r in range(repeats):
        for k in names[r % len(names):] + names[:r % len(names)]:
            t = clock()
            calls[k]()
            times[k].append(clock() - t)
    return {k: (median(v), min(v)) for k, v in times.items()}


def report(title: str, times: dict, base: str) -> None:
    print(f"\n{title}")
    for k, (med, low) in times.items():
        print(f"  {k:<36} median {med * 1e3:9.2f} ms ({med / times[base][0]:.3f})   "
              f"min {low * 1e3:9.2f} ms ({low / times[base][1]:.3f})   ratios to {base}")


def models(rev: str, cfg: DuoConfig):
    torch.manual_seed(0)
    new = DuoForCausalLM(cfg).eval()
    old_cls = old_model_class(rev)
    old = old_cls(old_cls.config_class(**sizes(cfg))).eval()
    old.load_state_dict(new.state_dict())
    return new, old


def sizes(cfg: DuoConfig) -> dict:
    return {k: getattr(cfg, k) for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                         "num_key_value_heads", "big_ffn_size", "small_ffn_size",
                                         "max_position_embeddings")}


VARIANTS = {"old": {}, "new": {}, "new use_cache=False": {"use_cache": False}}


def worker(args, cfg) -> None:
    """One code version in its own process: load the shared weights, time ``args.rounds_calls`` eval routed
    forwards (no_grad) and train-mode routed forward + backward steps, save the eval logits, print JSON."""
    weights = load_file(args.weights)
    if args.worker == "old":
        cls = old_model_class(args.old_rev)
        model = cls(cls.config_class(**sizes(cfg)))
    else:
        model = DuoForCausalLM(cfg)
    model.load_state_dict(weights)
    kw = VARIANTS[args.worker]
    x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), generator=torch.Generator().manual_seed(1))
    routes = torch.randint(0, 3, (args.batch, args.seq, cfg.num_hidden_layers), generator=torch.Generator().manual_seed(2))

    def forward():
        with torch.no_grad():
            return model(x, routes=routes, **kw).logits

    def step():
        model.zero_grad(set_to_none=True)
        model(x, labels=x, routes=routes, **kw).loss.backward()
    model.eval()
    save_file({"logits": forward()}, args.logits)
    out = {"eval": timed(forward, args.calls)}
    model.train()
    out["train"] = timed(step, max(2, args.calls // 2))
    print(json.dumps(out))


def timed(f, calls: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        f()
    times = []
    for _ in range(calls):
        t = clock()
        f()
        times.append(clock() - t)
    return times


def part_routed(args, cfg):
    """Old code, new code as called by default and new code with ``use_cache=False``, each in its own
    subprocess, alternated over ``--rounds`` rounds (order rotated), on the same weights and inputs."""
    folder = Path(tempfile.mkdtemp(prefix="duo-bench-"))
    torch.manual_seed(0)
    save_file({k: v.clone() for k, v in DuoForCausalLM(cfg).state_dict().items()}, folder / "weights.safetensors")
    names, runs = list(VARIANTS), {k: {"eval": [], "train": []} for k in VARIANTS}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            cmd = [sys.executable, __file__, "--worker", name, "--weights", str(folder / "weights.safetensors"),
                   "--logits", str(folder / f"{name}.safetensors"), "--old-rev", args.old_rev, "--profile",
                   args.profile, "--batch", str(args.batch), "--seq", str(args.seq), "--calls", str(args.calls),
                   "--threads", str(args.threads)]
            got = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            for part in ("eval", "train"):
                runs[name][part].append(min(got[part]))  # a process's steadiest estimate: its fastest call
    logits = {k: load_file(folder / f"{k}.safetensors")["logits"] for k in VARIANTS}
    same = {k: torch.equal(logits[k], logits["old"]) for k in VARIANTS}
    print(f"\nrouted forward, batch {args.batch} x {args.seq}, {args.rounds} rounds of one process per code version "
          f"({args.calls} eval calls, {max(2, args.calls // 2)} train steps each); logits bit-identical to old: {same}")
    print(f"  {'':<22} {'eval no_grad forward (ms)':>34} {'train forward + backward (ms)':>36}")
    for name in VARIANTS:
        cells = []
        for part in ("eval", "train"):
            per_round = [v / o for v, o in zip(runs[name][part], runs["old"][part])]
            cells.append(f"{median(runs[name][part]) * 1e3:9.2f}  ratio {median(per_round):.3f} "
                         f"[{min(per_round):.3f}, {max(per_round):.3f}]")
        print(f"  {name:<22} {cells[0]:>34} {cells[1]:>36}")
    print("  (median over rounds of each process's fastest call; ratio to old: median [min, max] of the per-round "
          "ratios)")


def part_paths(args, cfg):
    torch.manual_seed(0)
    model = DuoForCausalLM(cfg).train()
    x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), generator=torch.Generator().manual_seed(1))
    routes = torch.randint(0, 3, (args.batch, args.seq, cfg.num_hidden_layers), generator=torch.Generator().manual_seed(2))

    def step(impl=None, ckpt=False):
        def run():
            model.set_attn_implementation(impl or "sdpa")
            (model.activation_checkpointing_enable if ckpt else model.activation_checkpointing_disable)()
            model.zero_grad(set_to_none=True)
            model(x, labels=x, routes=routes, use_cache=False).loss.backward()
        return run
    report("routed train step: attention implementation and checkpointing",
           side_by_side({"sdpa": step(), "eager": step("eager"), "sdpa + checkpointing": step(ckpt=True)},
                        max(3, args.repeats // 2)), "sdpa")
    model.activation_checkpointing_disable()
    model.set_attn_implementation("sdpa")


def part_compile(args, cfg):
    torch.manual_seed(0)
    model = DuoForCausalLM(cfg).eval()
    x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), generator=torch.Generator().manual_seed(1))
    routes = torch.randint(0, 3, (args.batch, args.seq, cfg.num_hidden_layers), generator=torch.Generator().manual_seed(2))
    torch._dynamo.reset()
    for name, kw in (("all-big", {}), ("routed", {"routes": routes})):
        explained = torch._dynamo.explain(model)(x, use_cache=False, **kw)
        reasons = sorted({b.reason.splitlines()[0][:60] for b in explained.break_reasons})
        print(f"\ntorch.compile: {name} forward has {explained.graph_break_count} graph breaks "
              f"({explained.graph_count} graphs){': ' + '; '.join(reasons) if reasons else ''}")
        torch._dynamo.reset()
    compiled = torch.compile(model)
    with torch.no_grad():
        t0 = time.perf_counter()
        diff = (compiled(x, use_cache=False).logits - model(x, use_cache=False).logits).abs().max().item()
        routed_diff = (compiled(x, routes=routes, use_cache=False).logits
                       - model(x, routes=routes, use_cache=False).logits).abs().max().item()
        print(f"  compile time (first calls) {time.perf_counter() - t0:.1f} s; max |diff| all-big {diff:.2e}, "
              f"routed {routed_diff:.2e}")
        times = side_by_side({
            "eager all-big": lambda: model(x, use_cache=False),
            "compiled all-big": lambda: compiled(x, use_cache=False),
            "eager routed": lambda: model(x, routes=routes, use_cache=False),
            "compiled routed": lambda: compiled(x, routes=routes, use_cache=False),
        }, args.repeats)
    report("compiled vs eager (no_grad forward)", times, "eager all-big")


def part_cache(args, cfg):
    torch.manual_seed(0)
    model = DuoForCausalLM(cfg).eval()
    x = torch.randint(0, cfg.vocab_size, (1, 16), generator=torch.Generator().manual_seed(1))
    kw = dict(max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=0)
    same = torch.equal(model.generate(x, **kw), model.generate(x, cache_implementation="static", **kw))
    times = side_by_side({"dynamic cache": lambda: model.generate(x, **kw),
                          "static cache": lambda: model.generate(x, cache_implementation="static", **kw)},
                         max(3, args.repeats // 3), warmup=1)
    report(f"greedy decoding, 32 new tokens (static == dynamic: {same}); per token:",
           {k: (v[0] / 32, v[1] / 32) for k, v in times.items()}, "dynamic cache")


def part_oracle(args, cfg):
    """The fixed-context oracle now runs the model's attention function over cat(reference, own) keys."""
    folder = Path(tempfile.mkdtemp(prefix="duo-old-oracle-"))
    archive = subprocess.run(["git", "archive", args.old_rev, "duolib"], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    (folder / "duolib").rename(folder / "duo_old_oracle")
    sys.path.insert(0, str(folder))
    old_pkg = importlib.import_module("duo_old_oracle")
    old_oracle = importlib.import_module("duo_old_oracle.oracle")
    new_oracle = importlib.import_module("duolib.oracle.engine")
    torch.manual_seed(0)
    new = DuoForCausalLM(cfg).eval()
    old = old_pkg.DuoForCausalLM(old_pkg.DuoConfig(**sizes(cfg))).eval()
    old.load_state_dict(new.state_dict())
    x = torch.randint(0, cfg.vocab_size, (1, args.seq + 1), generator=torch.Generator().manual_seed(1))
    run = {"old fixed-context oracle": lambda: old_oracle.loss_matrix(old, x, k=4, semantics="fixed-context"),
           "new fixed-context oracle": lambda: new_oracle.loss_matrix(new, x, k=4, semantics="fixed-context")}
    diff = (run["old fixed-context oracle"]().losses - run["new fixed-context oracle"]().losses).abs().max().item()
    report(f"fixed-context loss matrix, k=4 of {cfg.num_hidden_layers} big, 1 x {args.seq + 1} tokens "
           f"(max |loss diff| {diff:.1e})", side_by_side(run, max(3, args.repeats // 5), warmup=0), "old fixed-context oracle")


PARTS = {"routed": part_routed, "paths": part_paths, "compile": part_compile, "cache": part_cache, "oracle": part_oracle}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    ap.add_argument("--old-rev", default="3cdb3d4", help="commit holding the implementation to compare with")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5, help="routed: processes per code version")
    ap.add_argument("--calls", type=int, default=10, help="routed: timed eval calls per process (half as many steps)")
    ap.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    ap.add_argument("--logits", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = DuoConfig.preset(args.profile)
    if args.worker:
        worker(args, cfg)
        return 0
    print(f"torch {torch.__version__}, {args.threads} thread(s), profile {args.profile}, CPU time per call")
    for name in args.parts:
        PARTS[name](args, cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
