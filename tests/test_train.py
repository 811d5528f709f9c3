"""Stage-1 training (duolib.train): schedule, routes, resume after SIGKILL, DDP, checkpoints, baselines, errors.

Everything runs on the ``tiny`` profile with a small synthetic corpus prepared once into a temporary
cache (a couple of seconds); the subprocess tests (kill -9 / resume, torchrun with 2 CPU ranks) reuse it.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from duolib import DuoConfig
from duolib.flops import dense_equivalent_width, ffn_flops
from duolib.routing import BIG, SKIP, SMALL
from duolib.train.config import P_GRID, TrainConfig, lr_at
from duolib.train.build import build_model
from duolib.train.loop import train
from duolib.train.baselines import freeze_ablation
from duolib.train.checkpoint import latest_checkpoint
from duolib.train.run_folder import read_metrics
from duolib.routing import training_routes
from duolib.train.evaluate import unigram_perplexity
from tiny_runs import SYNTH, tiny
from tolerances import TRAIN_LOSS_RTOL, TRAIN_WEIGHT_RTOL

ROOT = Path(__file__).resolve().parents[1]


def cli_args(cache_dir, *extra) -> list[str]:
    return ["--profile", "tiny", "--corpus", "synthetic", "--set", f"data={json.dumps(SYNTH)}",
            "--set", f"cache_dir={cache_dir}", "--threads", "1", "--no-progress", *extra]


def weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(Path(run_dir) / "final" / "model.safetensors")


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


# ----------------------------------------------------------------------------- pure functions

def test_lr_schedule_holds_the_final_rate_for_the_last_hold_fraction():
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1, hold_fraction=0.2)
    lrs = [lr_at(s, cfg) for s in range(cfg.steps)]
    assert lrs[79] == pytest.approx(1e-4) and all(x == pytest.approx(1e-4) for x in lrs[79:])
    assert all(a > b for a, b in zip(lrs[10:79], lrs[11:79]))  # the cosine reaches the floor at step 79
    assert "hold_fraction" not in TrainConfig(steps=100).semantic()  # at its default: old runs keep their identity
    assert TrainConfig(steps=100, hold_fraction=0.2).semantic()["hold_fraction"] == 0.2
    short = TrainConfig(steps=20, warmup_steps=10, hold_fraction=0.9)  # never into the warm-up
    assert [lr_at(s, short) for s in range(10, 20)] == pytest.approx([short.lr * 0.1] * 10)
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="hold_fraction"):
            TrainConfig(steps=100, hold_fraction=bad).validate()


def test_lr_schedule_warmup_then_cosine_to_min():
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(cfg.steps)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)  # linear warmup to the peak
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # monotone cosine decay
    assert lrs[-1] == pytest.approx(1e-4)  # ends at min_lr_ratio * lr
    mid = 10 + (99 - 10) // 2
    assert lrs[mid] == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * (mid - 10) / 89)))
    # the optimizer sees exactly this schedule
    from duolib.train.build import make_optimizer, make_scheduler

    p = torch.nn.Parameter(torch.zeros(2, 2))
    opt = make_optimizer([("w", p)], cfg)
    sched = make_scheduler(opt, cfg)
    seen = []
    for _ in range(cfg.steps):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx(lrs, rel=1e-12)


def test_training_routes_do_not_depend_on_sharding():
    full = training_routes(3, 7, range(8), 16, 4, p_big=0.5, p_skip=0.2)
    shards = [training_routes(3, 7, range(r, 8, 2), 16, 4, p_big=0.5, p_skip=0.2) for r in range(2)]
    assert torch.equal(full[0::2], shards[0]) and torch.equal(full[1::2], shards[1])
    assert not torch.equal(full, training_routes(3, 8, range(8), 16, 4, 0.5, 0.2))  # new step, new routes
    many = training_routes(0, 0, range(64), 64, 8, p_big=0.5, p_skip=0.2).float()
    assert (many == BIG).float().mean() == pytest.approx(0.5, abs=0.02)
    assert (many == SKIP).float().mean() == pytest.approx(0.2, abs=0.02)
    assert (many == SMALL).float().mean() == pytest.approx(0.3, abs=0.02)


def test_unigram_perplexity():
    uniform = np.arange(1000) % 10
    assert unigram_perplexity(uniform, uniform) == pytest.approx(10.0, rel=1e-3)
    skewed = np.array([0] * 90 + [1] * 10)
    p0, p1 = 91 / 102, 11 / 102  # add-one smoothing
    assert unigram_perplexity(skewed, np.array([0, 1]), smoothing=1.0) == pytest.approx(1 / math.sqrt(p0 * p1))
    seqs = torch.tensor([[5, 0, 1]])  # the first token of a sequence is never predicted
    assert unigram_perplexity(skewed, seqs) == pytest.approx(unigram_perplexity(skewed, np.array([0, 1])))


def test_dense_baseline_widths_match_the_flop_ledger():
    duo = DuoConfig.preset("tiny")
    for p in P_GRID:
        cfg = TrainConfig(profile="tiny", arch="dense", dense_p_big=p)
        w = cfg.ffn_width()
        assert w == dense_equivalent_width(duo, p)
        model = build_model(cfg)
        assert type(model).__name__ == "LlamaForCausalLM"
        assert model.config.intermediate_size == w and model.config.num_hidden_layers == duo.num_hidden_layers
        target = p * ffn_flops(duo, BIG) + (1 - p) * ffn_flops(duo, SMALL)
        assert abs(6 * duo.hidden_size * w - target) <= 3 * duo.hidden_size  # rounding to an integer width
    assert TrainConfig(profile="tiny", arch="dense", dense_p_big=0).ffn_width() == duo.small_ffn_size
    assert TrainConfig(profile="tiny", arch="dense", dense_p_big=1).ffn_width() == duo.big_ffn_size


# ----------------------------------------------------------------------------- training runs

def test_train_writes_the_run_folder_and_skips_a_finished_run(cache_dir, tmp_path):
    cfg = tiny(cache_dir, steps=12, eval_every=6, log_every=3)
    result = train(cfg, tmp_path / "run")
    run = tmp_path / "run"
    for name in ("config.json", "metrics.jsonl", "summary.json", "final/model.safetensors", "final/config.json",
                 "tokenizer/tokenizer.json", "checkpoint/latest"):
        assert (run / name).exists(), name
    assert not list(run.glob(".tmp-*")) and not list((run / "checkpoint").glob(".tmp-*"))
    m = read_metrics(run)
    train_rows = m[m.kind == "train"]
    assert train_rows.loss.iloc[-1] < train_rows.loss.iloc[0]
    evals = m[m.kind == "eval"]
    assert set(evals.routes) == {"small", "big", "random"} and set(evals.step) == {6, 12}
    first, last = evals[evals.step == 6], evals[evals.step == 12]
    assert (last.ppl.to_numpy() < first.ppl.to_numpy()).all()
    assert result.final_eval("synthetic", "big")["ppl"] == pytest.approx(last[last.routes == "big"].ppl.item())
    assert result.summary["unigram_ppl"]["synthetic"] > 1
    assert result.load_model().config.model_type == "duo"
    t0 = time.perf_counter()
    again = train(cfg, run)
    assert again.skipped and again.summary == result.summary and time.perf_counter() - t0 < 5


def test_kill9_then_resume_is_bitwise_identical_to_an_uninterrupted_run(cache_dir, tmp_path):
    steps, every = 40, 10
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "duolib", "train", *cli_args(cache_dir, "--out", str(killed), "--steps", str(steps),
                                                         "--checkpoint-every", str(every), "--log-every", "1")],
        cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while latest_checkpoint(killed) is None:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.time() < deadline, "no checkpoint written"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "final").exists() and not (killed / "summary.json").exists()  # killed mid-training
    ckpt_step = int(latest_checkpoint(killed).name.split("-")[1])
    assert ckpt_step < steps

    cfg = tiny(cache_dir, steps=steps, checkpoint_every=every, log_every=1)
    resumed = train(cfg, killed)
    train(cfg, tmp_path / "full")
    assert not resumed.skipped
    a, b = weights(killed), weights(tmp_path / "full")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la, lb = read_metrics(killed), read_metrics(tmp_path / "full")
    cols = ["kind", "step", "loss"]
    assert la[la.kind == "train"][cols].equals(lb[lb.kind == "train"][cols])  # no duplicate or missing step


def test_ddp_two_cpu_ranks_match_single_process(cache_dir, tmp_path):
    """torchrun, 2 gloo ranks x 4 rows vs 1 process x 8 rows: same data, same routes, same losses.

    Tolerance: 1e-4 relative on every logged loss (the ranks' gradient all-reduce sums in another order)."""
    steps = 6
    ddp_dir = tmp_path / "ddp"
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "duolib", "train", *cli_args(cache_dir, "--out", str(ddp_dir), "--steps", str(steps),
                                         "--log-every", "1", "--eval-every", str(steps))],
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    single = train(tiny(cache_dir, steps=steps, log_every=1, eval_every=steps), tmp_path / "single")
    d, s = read_metrics(ddp_dir), read_metrics(tmp_path / "single")
    ld, ls = d[d.kind == "train"].loss.to_numpy(), s[s.kind == "train"].loss.to_numpy()
    assert len(ld) == len(ls) == steps
    np.testing.assert_allclose(ld, ls, rtol=TRAIN_LOSS_RTOL)
    assert json.loads((ddp_dir / "summary.json").read_text())["world_size"] == 2
    assert single.summary["world_size"] == 1
    a, b = weights(ddp_dir), weights(tmp_path / "single")
    assert all(torch.allclose(a[k], b[k], rtol=TRAIN_WEIGHT_RTOL, atol=1e-5) for k in a)


def test_gradient_accumulation_matches_one_big_batch(cache_dir, tmp_path):
    runs = [train(tiny(cache_dir, steps=4, log_every=1, eval_every=4, grad_accum=k), tmp_path / f"acc{k}")
            for k in (1, 2)]
    l1, l2 = (r.metrics[r.metrics.kind == "train"].loss.to_numpy() for r in runs)
    np.testing.assert_allclose(l1, l2, rtol=TRAIN_LOSS_RTOL)


def test_checkpoint_corruption_is_a_clear_error(cache_dir, tmp_path):
    run = tmp_path / "run"
    cfg = tiny(cache_dir, steps=10, checkpoint_every=5, eval_every=10)
    train(cfg, run)
    (run / "summary.json").unlink()  # pretend the run was killed after its checkpoint
    ckpt = latest_checkpoint(run)
    weights_file = ckpt / "model.safetensors"
    good = weights_file.read_bytes()

    def listing():
        return sorted(str(p.relative_to(run)) for p in run.rglob("*"))

    before = listing()
    weights_file.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="truncated.*model.safetensors"):
        train(cfg, run)
    weights_file.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(ValueError, match="corrupted.*model.safetensors"):
        train(cfg, run)
    weights_file.write_bytes(good)
    (ckpt / "optimizer.pt").unlink()
    with pytest.raises(ValueError, match="incomplete.*optimizer.pt"):
        train(cfg, run)
    (ckpt / "manifest.json").unlink()
    with pytest.raises(ValueError, match="incomplete or corrupted.*manifest.json"):
        train(cfg, run)
    assert [p for p in listing() if p not in before] == []  # nothing half-written left behind


def test_resuming_with_a_different_config_is_an_error(cache_dir, tmp_path):
    run = tmp_path / "run"
    cfg = tiny(cache_dir, steps=6, checkpoint_every=3, eval_every=6)
    train(cfg, run)
    (run / "summary.json").unlink()
    with pytest.raises(ValueError, match=r"different config:\n  train.lr: 0.003 \(existing\) vs 0.001"):
        train(cfg.replace(lr=1e-3), run)
    (run / "config.json").unlink()  # the checkpoint itself also knows its config
    with pytest.raises(ValueError, match=r"checkpoint .* different config:\n  train.p_big"):
        train(cfg.replace(p_big=0.25), run)
    assert train(cfg.replace(p_big=0.25), run, overwrite=True).summary["steps"] == 6


def test_dense_baseline_trains_with_the_same_loop(cache_dir, tmp_path):
    result = train(tiny(cache_dir, arch="dense", dense_p_big=0.25, steps=8, eval_every=8), tmp_path / "dense")
    assert result.summary["ffn_width"] == dense_equivalent_width(DuoConfig.preset("tiny"), 0.25)
    assert [r["routes"] for r in result.summary["final_eval"]] == ["dense"]
    m = result.metrics
    assert m[m.kind == "train"].loss.iloc[-1] < m[m.kind == "train"].loss.iloc[0]
    assert type(result.load_model()).__name__ == "LlamaForCausalLM"


def test_freeze_ablation_trains_big_alone_then_only_small(cache_dir, tmp_path):
    base = tiny(cache_dir, steps=2, eval_every=2, warmup_steps=2)
    init = build_model(base).state_dict()
    big, small = freeze_ablation(base, tmp_path, small_steps=3)  # 5 steps in all, like a joint run of 5
    assert (big.summary["steps"], small.summary["steps"]) == (2, 3)
    evals = small.metrics.query("kind == 'eval'")["step"].unique().tolist()
    assert evals == [3], "a base evaluated only at its end is evaluated only at the small stage's end"
    assert json.loads((small.run_dir / "config.json").read_text())["config"]["warmup_steps"] == 2
    wb, ws = weights(big.run_dir), weights(small.run_dir)
    for k, v in wb.items():
        if ".small." in k:
            assert torch.equal(v, init[k]), f"{k} changed while the big modules trained alone"
            assert not torch.equal(ws[k], v), f"{k} did not train in the small stage"
        else:
            assert torch.equal(ws[k], v), f"{k} changed while only the small modules should train"
    assert any(not torch.equal(v, init[k]) for k, v in wb.items() if ".big." in k)
    assert small.summary["stage"] == "small"
    # stage big trains all-big; its evaluation still covers every route mode
    assert {r["routes"] for r in big.summary["final_eval"]} == {"small", "big", "random"}


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("change, message", [
    (dict(corpus="nope"), "unknown corpus 'nope'; allowed: mix"),
    (dict(model={"vocab_size": 100}), "vocab_size=100 is too small"),
    (dict(seq_len=256), "seq_len=256 is longer than the model's context"),
    (dict(batch_size=4096), "batch_size=4096.*do not fit the data"),
    (dict(p_big=0.8, p_skip=0.5), "p_big=0.8, p_skip=0.5"),
    (dict(stage="small"), "give init_from"),
    (dict(eval_routes=("sometimes",)), "route mode 'sometimes'"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(cache_dir, tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        train(tiny(cache_dir, **change), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_empty_corpus_is_a_clear_error(cache_dir, tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="no non-empty documents"):
        train(tiny(cache_dir, corpus=f"text:{tmp_path / 'docs'}"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_duo_train_cli_reports_errors(cache_dir, tmp_path, capsys):
    from duolib.cli import main

    assert main(["train", *cli_args(cache_dir, "--out", str(tmp_path / "r"), "--seq-len", "999")]) == 1
    assert "seq_len=999 is longer than the model's context" in capsys.readouterr().err
