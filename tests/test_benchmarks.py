"""The benchmark scripts' own arithmetic (their timings are not tested: machines are noisy)."""

import importlib.util
from pathlib import Path

from duolib import BIG, SMALL, DuoConfig
from duolib.book.analysis import trie_counts
from duolib.flops import attention_flops, ffn_flops, head_flops
from duolib.oracle.patterns import enumerate_patterns

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_oracle_floor_counts_the_work_the_engines_flop_accounting_counts(capsys):
    floor = load("bench_oracle_floor")
    cfg = DuoConfig.preset("tiny", num_key_value_heads=2)
    tokens = 100
    work = floor.work(cfg, tokens)
    counts = trie_counts(enumerate_patterns(cfg.num_hidden_layers, ("small", "big")))
    ffn = counts["edges"]["big"] * ffn_flops(cfg, BIG) + counts["edges"]["small"] * ffn_flops(cfg, SMALL)
    assert 2 * (work["ffn up+gate (big)"] + work["ffn down (big)"] + work["ffn (small)"]) == tokens * ffn
    assert 2 * work["head"] == tokens * counts["leaves"] * head_flops(cfg)
    assert 2 * work["qkvo projections"] == tokens * counts["internal_nodes"] * attention_flops(cfg, 0)
    assert work["exp + sum"] == tokens * counts["leaves"] * cfg.vocab_size
    assert floor.main(["--profile", "tiny", "--threads", "1", "--tokens", "64", "--rows", "256", "--seq-len", "16",
                       "--engine-windows", "2"]) == 0
    out = capsys.readouterr().out
    assert "floor, everything fp32" in out and "engine, 1 thread(s)" in out


def test_generation_speed_predicts_the_flops_of_each_call_and_runs_the_benchmark(capsys):
    import torch

    from duolib import DuoForCausalLM
    from duolib.book.generation import fixed_patterns, generation_speed
    from duolib.flops import head_flops, pattern_flops

    cfg = DuoConfig.preset("tiny")
    torch.manual_seed(0)
    model = DuoForCausalLM(cfg).eval()
    T, n, L = 6, 7, cfg.num_hidden_layers  # n = 1 (prefill) + two rounds of 2 drafts and 1 target token
    prompts = torch.randint(0, cfg.vocab_size, (2, T), generator=torch.Generator().manual_seed(0))
    rows = generation_speed(model, prompts, n, 2, patterns=fixed_patterns(L, [1]), drafts={"same": "B" * L},
                            draft_lens=(2,), warmup=0)
    gen = {r["variant"]: r for r in rows["generate"]}

    def call_flops(pattern):  # every row of prompt + new tokens but the last, the head only where it runs
        return sum(pattern_flops(cfg, pattern, c) for c in range(1, T + n)) - (T - 1) * head_flops(cfg)

    assert gen["all-big"]["speedup"] == 1.0 and gen["all-big"]["predicted"] == 1.0
    for name, pattern in fixed_patterns(L, [1]).items():
        assert abs(gen[name]["predicted"] - call_flops("B" * L) / call_flops(pattern)) < 1e-9
        assert gen[name]["big_layers"] == pattern.count("B")
        ci = gen[name]["speedup_ci"]
        assert ci["low"] <= gen[name]["speedup"] <= ci["high"]
    (spec,) = rows["speculative"]
    assert spec["acceptance"] == 1.0 and spec["tokens_per_verify"] == 3.0  # a draft routed as its target
    assert load("bench_generate").main(["--profile", "tiny", "--models", "default", "--prompts", "2", "--prompt-len",
                                        "6", "--new-tokens", "4", "--repeats", "2", "--draft-lens", "2"]) == 0
    out = capsys.readouterr().out
    assert "all-small" in out and "speed-up" in out and "accepted" in out


def test_controls_benchmark_runs_on_tiny(capsys):
    bench = load("bench_controls")
    assert bench.main(["--profile", "tiny", "--windows", "2", "--seq-len", "8", "--candidates", "1",
                       "--entropy-windows", "1", "--k", "2"]) == 0
    out = capsys.readouterr().out
    assert "placebo shared" in out and "placebo fixed-context" in out and "entropy=True" in out


def test_holdout_prompts_alternate_between_the_holdouts_and_speedups_read_against_one():
    import numpy as np
    import pytest

    from duolib.book.generation import holdout_prompts, median_interval, speedup_words

    holdout = {"english": np.arange(0, 1000), "python": np.arange(5000, 6000)}  # values tell the streams apart
    prompts = holdout_prompts(holdout, 5, 16)
    assert prompts.shape == (5, 16)
    assert [bool(p[0] >= 5000) for p in prompts] == [False, True, False, True, False]
    assert all(torch_equal_range(p) for p in prompts)  # each prompt is one contiguous window of its stream
    with pytest.raises(ValueError, match="fewer"):
        holdout_prompts(holdout, 200, 16)
    ci = median_interval([1.1, 1.2, 1.3, 1.15, 1.25])
    assert ci["value"] == 1.2 and 1.1 <= ci["low"] <= 1.2 <= ci["high"] <= 1.3
    assert speedup_words({"speedup": 1.2, "speedup_ci": ci}).startswith("1.20 times as fast as all-big, i.e. faster")
    assert "wholly faster" in speedup_words({"speedup": 1.2, "speedup_ci": ci})
    slow = {"speedup": 0.9, "speedup_ci": {"value": 0.9, "low": 0.8, "high": 1.05}}
    assert "i.e. slower" in speedup_words(slow) and "not surely different" in speedup_words(slow)


def torch_equal_range(p) -> bool:
    return bool((p[1:] - p[:-1] == 1).all())
