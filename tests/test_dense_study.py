"""duolib.book.dense_study and the C10 intervals (duolib.book.evidence.dense_gap_intervals)."""

import math

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

from duolib import SMALL, DuoConfig, DuoForCausalLM
from duolib.book import dense_study as ds
from duolib.book.evidence import dense_gap_intervals
from duolib.convert import llama_config
from duolib.profiles import get_profile
from duolib.train.evaluate import unigram_perplexity
from tolerances import assert_paths_close


def ids(n=4, T=16, seed=0, V=512):
    return torch.randint(0, V, (n, T), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DuoForCausalLM(DuoConfig.preset("tiny")).eval()


# ----------------------------------------------------------------------------- the runs

def test_compare_config_takes_the_profiles_compare_model_and_scales_warmup(tmp_path):
    stage1 = get_profile("default")
    cfg = ds.compare_config("default", tmp_path, 150)
    assert cfg.steps == 150 and cfg.eval_every == 150
    assert cfg.warmup_steps == max(1, round(stage1["train"]["warmup_steps"] * 150 / stage1["train"]["steps"]))
    model = cfg.duo_config()
    assert model.num_hidden_layers == stage1["book"]["compare_model"]["num_hidden_layers"] < 12
    assert (model.hidden_size, model.vocab_size, model.big_ffn_size) == (128, 4096, 512)  # Stage 1's width
    assert ds.compare_config("tiny", tmp_path, 20).duo_config().num_hidden_layers == 4  # tiny stays tiny
    assert ds.compare_config("default", tmp_path, 10, model={"num_hidden_layers": 2}).duo_config().num_hidden_layers == 2
    with pytest.raises(ValueError, match="compare_steps=0"):
        ds.compare_config("tiny", tmp_path, 0)
    with pytest.raises(ValueError, match="hidden_size=62 is not divisible"):
        ds.compare_config("tiny", tmp_path, 5, model={"hidden_size": 62})


@pytest.mark.parametrize("steps, split", [(300, (150, 150)), (5, (2, 3)), (2, (1, 1))])
def test_freeze_split_adds_up_to_the_joint_budget(steps, split):
    assert ds.freeze_split(steps) == split and sum(split) == steps


@pytest.mark.parametrize("bad", [1, 0, True, 2.5])
def test_freeze_split_needs_a_step_per_stage(bad):
    with pytest.raises(ValueError, match="at least 2 steps"):
        ds.freeze_split(bad)


def test_size_tag_names_the_model_size():
    assert ds.size_tag(DuoConfig.preset("default", num_hidden_layers=4)) == "L4-d128-ffn512-32-h4"
    assert ds.size_tag(DuoConfig.preset("default")) != ds.size_tag(DuoConfig.preset("default", num_hidden_layers=4))


# ----------------------------------------------------------------------------- evaluation

def test_route_losses_match_the_models_own_loss(model):
    x = ids(3, 16)
    L = model.config.num_hidden_layers
    out = ds.route_losses(model, x, [0.0, 0.5, 1.0], batch_size=2)
    assert set(out) == {0.0, 0.5, 1.0} and out[0.0].shape == (3, 15)
    ref = model(x, labels=x, routes=[SMALL] * L).loss
    assert float(out[0.0].mean()) == pytest.approx(float(ref.detach()), rel=1e-5)
    assert not torch.equal(out[0.0], out[1.0])
    again = ds.route_losses(model, x, [0.5], batch_size=3)[0.5]  # the same routes whatever the batching
    assert_paths_close(again, out[0.5])


def test_route_losses_of_a_dense_model_are_the_same_at_every_p():
    torch.manual_seed(0)
    dense = LlamaForCausalLM(llama_config(DuoConfig.preset("tiny"), intermediate_size=64)).eval()
    x = ids(2, 16)
    out = ds.route_losses(dense, x, [0.0, 1.0])
    assert out[0.0] is out[1.0]
    assert float(out[0.0].mean()) == pytest.approx(float(dense(x, labels=x).loss.detach()), rel=1e-5)


def test_perplexity_frame_pools_and_splits_by_holdout():
    losses = {"m": {0.0: torch.tensor([[1.0, 1.0], [3.0, 3.0], [2.0, 2.0]])}}
    frame = ds.perplexity_frame(losses, ["a", "b", "b"]).set_index("holdout")
    assert frame.loc["all", "ppl"] == pytest.approx(math.exp(2.0)) and frame.loc["all", "tokens"] == 6
    assert frame.loc["a", "ppl"] == pytest.approx(math.exp(1.0)) and frame.loc["b", "loss"] == pytest.approx(2.5)
    with pytest.raises(ValueError, match="m at p=0.0: 3 windows, but 2 holdout labels"):
        ds.perplexity_frame(losses, ["a", "b"])


def test_pooled_unigram_is_the_token_weighted_mean_loss():
    stream = np.array([1, 1, 2, 3, 1, 2, 1, 1])
    seqs = {"a": torch.tensor([[1, 2, 1]]), "b": torch.tensor([[3, 1, 1, 1, 2], [2, 2, 2, 2, 2]])}
    a, b = (unigram_perplexity(stream, s, 8) for s in seqs.values())
    assert ds.pooled_unigram(stream, seqs, 8) == pytest.approx(math.exp((2 * math.log(a) + 8 * math.log(b)) / 10))


def test_above_bar_counts_nan_as_above():
    assert ds.above_bar({"a": 10.0, "b": 20.0, "c": float("nan"), "d": 15.0}, 15.0) == ["b", "c"]


# ----------------------------------------------------------------------------- C10 intervals

def gap_losses(gaps, noise=0.0, n=64, T=8, seed=0):
    """Dense losses with window-to-window spread, and Duo losses ``log(1 + gap)`` above them at each p."""
    rng = np.random.default_rng(seed)
    base = torch.from_numpy(3.0 + rng.normal(0, 0.3, (n, 1)) + np.zeros((n, T)))
    dense, duo = {}, {}
    for p, g in gaps.items():
        dense[p] = base
        duo[p] = base + math.log1p(g) + torch.from_numpy(rng.normal(0, noise, (n, T)))
    return duo, dense


def test_dense_gap_intervals_recover_known_gaps():
    duo, dense = gap_losses({"0": 0.20, "0.5": 0.10, "1": 0.02})
    out = dense_gap_intervals(duo, dense)
    for p, g in {"0": 0.20, "0.5": 0.10, "1": 0.02}.items():
        ci = out["gap"][p]
        assert ci["value"] == pytest.approx(g) and ci["low"] == pytest.approx(g) and ci["high"] == pytest.approx(g)
    assert out["approach"]["value"] == pytest.approx(0.18) and out["approach"]["low"] > 0.17


def test_dense_gap_intervals_are_paired_and_widen_with_noise():
    duo, dense = gap_losses({"0": 0.05, "1": 0.02}, noise=0.5, n=48, T=4)
    out = dense_gap_intervals(duo, dense, seed=1)
    for ci in [*out["gap"].values(), out["approach"]]:
        assert ci["low"] < ci["value"] < ci["high"]
    # the window-to-window spread is shared by Duo and dense: pairing removes it from the gap
    shared, _ = gap_losses({"0": 0.05, "1": 0.02}, noise=0.0, n=48, T=4)
    tight = dense_gap_intervals(shared, dense)["gap"]["0"]
    assert tight["high"] - tight["low"] < 1e-9


def test_dense_gap_intervals_check_their_inputs():
    duo, dense = gap_losses({"0": 0.1, "1": 0.0})
    with pytest.raises(ValueError, match="same two or more p"):
        dense_gap_intervals({"0": duo["0"]}, {"0": dense["0"]})
    with pytest.raises(ValueError, match="same two or more p"):
        dense_gap_intervals(duo, {"0": dense["0"], "0.5": dense["1"]})
    with pytest.raises(ValueError, match="same windows"):
        dense_gap_intervals({"0": duo["0"], "1": duo["1"][:5]}, dense)
