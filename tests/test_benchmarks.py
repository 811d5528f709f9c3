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


def test_controls_benchmark_runs_on_tiny(capsys):
    bench = load("bench_controls")
    assert bench.main(["--profile", "tiny", "--windows", "2", "--seq-len", "8", "--candidates", "1",
                       "--entropy-windows", "1", "--k", "2"]) == 0
    out = capsys.readouterr().out
    assert "placebo shared" in out and "placebo fixed-context" in out and "entropy=True" in out
