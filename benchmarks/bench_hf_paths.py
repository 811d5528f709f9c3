"""Cost of the transformers-compatible model paths, and the default SDPA routed forward against the
implementation before them.

Side by side in one process, call by call in rotating order (median and minimum CPU time of
``--repeats`` calls each):
  * ``routed forward``: the default-profile model, per-token random routes (skip / small / big), under
    ``no_grad``, the new ``DuoForCausalLM`` vs the old one (its files read with ``git show REV:...``
    into a temporary package; REV defaults to the commit before the transformers-compatible model),
    both called as a user calls them (``model(x, routes=routes)``; the new model also builds its
    KV cache there, as Llama does, since ``config.use_cache`` is True) and with ``use_cache=False``;
  * ``routed train step``: forward + backward with labels, new vs old;
  * eager vs SDPA attention, gradient checkpointing vs plain (forward + backward);
  * ``torch.compile`` (inductor) vs eager for the all-big forward and the routed forward, with their
    graph breaks (``torch._dynamo.explain``; routed execution has data-dependent shapes by design);
  * static vs dynamic cache greedy decoding (``generate``), per new token;
  * the fixed-context oracle (``loss_matrix``), old vs new (the old package from ``git archive REV``).

    python benchmarks/bench_hf_paths.py                       # all parts
    python benchmarks/bench_hf_paths.py --parts routed --repeats 21
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import torch

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


def part_routed(args, cfg):
    new, old = models(args.old_rev, cfg)
    x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), generator=torch.Generator().manual_seed(1))
    routes = torch.randint(0, 3, (args.batch, args.seq, cfg.num_hidden_layers), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        diff = (new(x, routes=routes).logits - old(x, routes=routes).logits).abs().max().item()
        times = side_by_side({
            "old routed forward": lambda: old(x, routes=routes),
            "new routed forward": lambda: new(x, routes=routes),
            "new routed forward, use_cache=False": lambda: new(x, routes=routes, use_cache=False),
            "old all-big forward": lambda: old(x),
            "new all-big forward": lambda: new(x),
        }, args.repeats)
    report(f"no_grad forward, default model, batch {args.batch} x {args.seq} (max |logit diff| {diff:.2e})",
           times, "old routed forward")
    new.train(), old.train()

    def step(model):
        model.zero_grad(set_to_none=True)
        model(x, labels=x, routes=routes).loss.backward()
    report("routed train step (forward + backward)", side_by_side({"old": lambda: step(old), "new": lambda: step(new)},
                                                                   max(3, args.repeats // 2)), "old")


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
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = DuoConfig.preset(args.profile)
    print(f"torch {torch.__version__}, {args.threads} thread(s), profile {args.profile}, CPU time per call")
    for name in args.parts:
        PARTS[name](args, cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
