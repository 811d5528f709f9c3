"""duolib.book.experiments and duolib.book.bench: the reusable steps of the book's notebooks 07-10."""

import copy
import math

import numpy as np
import pytest
import torch

import duolib
from duolib import BIG, SKIP, SMALL, DuoConfig, DuoForCausalLM, FixedRoutes, RandomRoutes, checks
from duolib.book import bench
from duolib.book import experiments as ex
from duolib.book import retrofit_study as rs
from duolib.data import batches as B
from duolib.flops import pattern_flops
from duolib.router.budgets import check_settings


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DuoForCausalLM(DuoConfig.preset("tiny")).eval()


def ids(n=4, T=16, seed=0, V=512):
    return torch.randint(0, V, (n, T), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- parameter checks

def test_check_budgets_accepts_whole_numbers_in_range():
    assert checks.budgets("budget", (4, 6, 8), 12) == (4, 6, 8)
    assert checks.budgets("budget", 0, 12) == (0,)
    assert checks.budgets("budget", [12.0], 12) == (12,)


@pytest.mark.parametrize("bad", [13, -1, 2.5, True, "4"])
def test_check_budgets_rejects_with_the_allowed_range(bad):
    with pytest.raises(ValueError, match=r"outside 0\.\.12"):
        checks.budgets("budget", [bad], 12)


def test_check_settings_names_and_custom():
    out = check_settings(["big50_skip50"], 12)
    assert out == {"big50_skip50": {"big": 0.5, "skip": 0.5}}
    assert check_settings({"mine": {"small": 0.5, "big": 0.5}}, 12)["mine"]["big"] == 0.5


def test_check_settings_rejects_fractions_not_summing_to_one():
    with pytest.raises(ValueError, match=r"'mine'.*sums to 0\.9"):
        check_settings({"mine": {"big": 0.5, "skip": 0.4}}, 12)
    with pytest.raises(ValueError, match="unknown skip setting"):
        check_settings(["nope"], 12)


def test_oracle_slices_follow_the_manifest_of_notebook_03(tmp_path):
    class Data:
        holdout = {"a": torch.arange(1000), "b": torch.arange(1000, 2000)}

    default = ex.oracle_slices("tiny", Data())  # profile: 2 x 16
    assert default["a"].shape == (2, 16) and int(default["b"][0, 0]) - 1000 == int(default["a"][0, 0])
    assert torch.equal(default["a"], B.holdout_sequences(Data.holdout["a"], 2, 16))  # the seeded random windows
    assert int(default["a"][0, 0]) % 16 == 0 and not torch.equal(default["a"][0], torch.arange(16))
    pytest.importorskip("duolib.book.analysis").write_manifest(tmp_path, {"n_sequences": 3, "seq_len": 8})
    assert ex.oracle_slices("tiny", Data(), tmp_path)["a"].shape == (3, 8)
    assert ex.oracle_slices("tiny", Data(), tmp_path / "none")["a"].shape == (2, 16)


# ----------------------------------------------------------------------------- statistics

def test_late_fraction_even_late_and_odd_layers():
    L = 4
    late = torch.full((2, 3, L), SMALL)
    late[..., 2:] = BIG
    assert ex.late_fraction(late) == 1.0
    assert ex.late_fraction(torch.full((2, 3, L), BIG)) == 0.5
    assert math.isnan(ex.late_fraction(torch.full((2, 3, L), SMALL)))
    odd = torch.full((1, 1, 3), SMALL)
    odd[..., 1] = BIG  # the middle layer of an odd L counts half
    assert ex.late_fraction(odd) == 0.5
    skips = torch.full((1, 2, L), BIG)
    skips[..., 3] = SKIP
    assert ex.late_fraction(skips, SKIP) == 1.0


def test_early_position_ratio():
    routes = torch.full((2, 20, 4), SMALL)
    routes[:, :2, :2] = BIG  # first tenth: half big
    routes[:, 2:, 0] = BIG  # rest: a quarter big
    assert ex.early_position_ratio(routes) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        ex.early_position_ratio(routes[:, :1])


def test_usage_grid_and_layer_usage_frame():
    routes = torch.full((3, 5, 4), SMALL)
    routes[:, :, 1] = BIG
    grid = ex.usage_grid(routes)
    assert grid.shape == (4, 5) and grid[1].min() == 1.0 and grid[0].max() == 0.0
    frame = ex.layer_usage_frame({"r": routes})
    assert set(frame["route"]) == {"skip", "small", "big"}
    assert frame.query("route == 'big' and layer == 1")["fraction"].iloc[0] == 1.0


def test_budget_flops_is_the_mean_pattern_flops_over_scored_positions():
    cfg = DuoConfig.preset("tiny")
    T = 16
    expected = np.mean([pattern_flops(cfg, [BIG, BIG, SMALL, SMALL], ctx) for ctx in range(1, T)])
    assert ex.scored_budget_flops(cfg, 2, T) == pytest.approx(expected)


def test_score_policies_counts_scored_positions(model):
    L = model.config.num_hidden_layers
    frame, kept = ex.score_policies(model, {"big": FixedRoutes([BIG] * L), "small": FixedRoutes([SMALL] * L)},
                                    {"a": ids()}, keep_routes=True)
    big = frame.set_index("method").loc["big"]
    assert big["mean_big_layers"] == L and big["frac_big"] == 1.0
    assert big["flops_per_token"] == pytest.approx(ex.scored_budget_flops(model.config, L, 16))
    out = model(ids(), labels=ids(), routes=[BIG] * L)
    assert big["loss"] == pytest.approx(float(out.loss.detach()), rel=1e-5)
    assert ex.pool_routes(kept, "big").shape == (4, 16, L)


def test_oracle_references_rows():
    cfg = DuoConfig.preset("tiny")
    results = {"holdouts": {"h": {"all_big": 10.0, "all_small": 12.0, "oracle": {"1": 8.0, "2": 7.0},
                                  "fixed": {"1": 11.0, "2": 10.5}, "best_of_random": {"1": 11.0, "2": 10.6}}}}
    refs = ex.oracle_references(results, "h", cfg, 16)
    assert set(refs["method"]) == {"oracle", "fixed", "best_of_random", "all small", "all big"}
    assert refs.query("method == 'all big'")["mean_big_layers"].iloc[0] == 4
    assert (refs["source"] == "reference").all() and refs["flops_per_token"].notna().all()


# ----------------------------------------------------------------------------- cached routers

def test_cached_router_trains_once_then_loads(model, tmp_path):
    batches = ids(4, 16, seed=3)
    r1, h1 = ex.cached_router(model, tmp_path / "r", batches, 3, budget=2, data_key="x")
    assert (tmp_path / "r" / "spec.json").is_file() and len(h1) == 3
    r2, h2 = ex.cached_router(model, tmp_path / "r", batches, 3, budget=2, data_key="x")
    for a, b in zip(r1.parameters(), r2.parameters()):
        assert torch.equal(a, b)
    assert len(h2) == 3
    assert r2.meta["calibration"] == r1.meta["calibration"]  # calibrated once, then loaded as calibrated
    r3, _ = ex.cached_router(model, tmp_path / "r", batches, 4, budget=2, data_key="x")  # new settings: retrain
    assert r3.meta["trained_steps"] == 4
    skip, _ = ex.cached_router(model, tmp_path / "s", batches, 2, options=("big", "skip"),
                               option_budget={"big": 0.5, "skip": 0.5})
    assert skip.option_names == ("skip", "big")


def test_cached_distilled_router(model, tmp_path):
    train = ids(4, 8, seed=5)
    router, history, ppl = ex.cached_distilled_router(model, tmp_path / "d", train, 2, 3, batch_size=4)
    assert len(history) == 3 and ppl > 1
    again, _, ppl2 = ex.cached_distilled_router(model, tmp_path / "d", train, 2, 3, batch_size=4)
    assert ppl2 == pytest.approx(ppl) and again.meta["kind"] == "distilled"


# ----------------------------------------------------------------------------- pooling

def test_pooled_perplexity_weights_holdouts_by_tokens():
    import pandas as pd

    frame = pd.DataFrame({"holdout": ["a", "b", "a", "b"], "p": [0.0, 0.0, 1.0, 1.0], "loss": [1.0, 2.0, 3.0, 3.0],
                          "tokens": [30, 10, 5, 5]})
    pooled = ex.pooled_perplexity(frame, "p")
    assert list(pooled.index) == [0.0, 1.0] and pooled.index.name == "p"
    assert pooled[0.0] == pytest.approx(math.exp((30 * 1.0 + 10 * 2.0) / 40)) and pooled[1.0] == pytest.approx(math.exp(3))
    assert ex.pooled_perplexity(frame) == pytest.approx(math.exp((30 + 20 + 15 + 15) / 50))


# ----------------------------------------------------------------------------- retrofit

def test_small_opt_retrofit_keeps_the_original(tmp_path):
    batches = ids(2, 16)
    opt, history = rs.cached_pretrained_opt("tiny", tmp_path / "opt", 512, batches, 2)
    assert len(history) == 2 and (tmp_path / "opt" / "spec.json").is_file()
    again, _ = rs.cached_pretrained_opt("tiny", tmp_path / "opt", 512, batches, 2)
    assert rs.max_logit_diff(opt, again, batches) == 0.0
    original = copy.deepcopy(opt)
    duolib.retrofit_model(opt)
    assert rs.max_logit_diff(original, opt, batches) == 0.0
    table, losses = rs.retrofit_perplexities(opt, {"a": batches}, {"orig": None, "small": FixedRoutes([SMALL] * 4),
                                                                  "rand": RandomRoutes(0.5, seed=0)})
    assert table.set_index("routes").loc["orig", "mean_big_layers"] == 4
    assert table.set_index("routes").loc["small", "mean_big_layers"] == 0
    assert list(losses) == ["orig", "small", "rand"] and losses["orig"]["a"].shape == (2, 15)
    for name, loss in table.set_index("routes")["loss"].items():  # the table's losses are the returned ones' means
        assert loss == float(losses[name]["a"].double().mean())


def test_retokenize_roundtrip():
    class Tok:  # characters <-> code points
        def decode(self, toks):
            return "".join(chr(97 + t) for t in toks)

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) - 97 for c in text]}

    stream = torch.arange(20) % 7
    out = rs.retokenize(stream, Tok(), Tok(), max_tokens=15, chunk=4)
    assert torch.equal(out, stream[:15])


# ----------------------------------------------------------------------------- bench

def test_bench_functions_run_on_the_tiny_model():
    cfg = DuoConfig.preset("tiny")
    train = bench.train_step_speed(cfg, 2, 16, 1, warmup=0)
    assert 0 < train["predicted"] < 1 and train["tok_s_duo"] > 0
    rows = bench.routed_inference_speed(cfg, 2, 16, 1, warmup=0, k=1)
    assert [r["policy"] for r in rows] == ["token1", "router", "fixed1"]
    assert all(r["big_layers"] == pytest.approx(1.0, abs=0.5) for r in rows)
    with pytest.raises(ValueError):
        bench.routed_inference_speed(cfg, 2, 16, 1, k=5)


def test_oracle_speedup_engines_agree(model):
    out = bench.oracle_speedup(model, ids(2, 8))
    assert out["patterns"] == 16 and out["max_abs_diff"] < 1e-4
    assert out["flops_bound"] > 1 and out["cost_bound"] > 1 and out["speedup"] > 0


def test_validate_params_fills_defaults_and_names_bad_values():
    from duolib.book.params import validate_params
    from duolib.profiles import get_profile

    knobs = get_profile("tiny")["router"]
    budgets, steps = validate_params("07_routers", "tiny", budgets=None, steps=None)
    assert budgets == tuple(knobs["budgets"]) and steps == knobs["steps"]
    assert validate_params("08_dense", "tiny", p_values=[0, 1]) == ((0, 1),)
    book = get_profile("default")["book"]
    assert validate_params("08_dense", "default", compare_steps=None, compare_model=None) == (
        book["compare_steps"], book["compare_model"])
    assert validate_params("08_dense", "tiny", compare_model={"num_hidden_layers": 2}) == ({"num_hidden_layers": 2},)
    with pytest.raises(ValueError, match=r"compare_model=\{'layers': 2\} must be a dict .*num_hidden_layers"):
        validate_params("08_dense", "tiny", compare_model={"layers": 2})
    with pytest.raises(ValueError, match="compare_model=.*vocab_size"):
        validate_params("08_dense", "tiny", compare_model={"vocab_size": 100})
    with pytest.raises(ValueError, match=r"compare_model=\{'num_hidden_layers': 0\}: num_hidden_layers=0 must be"):
        validate_params("08_dense", "tiny", compare_model={"num_hidden_layers": 0})
    with pytest.raises(ValueError, match="compare_steps=0 must be a whole number >= 1"):
        validate_params("08_dense", "tiny", compare_steps=0)
    small_steps, = validate_params("09_retrofit", "default", small_steps=None)
    assert small_steps == book["retrofit_steps"]
    L = get_profile("tiny")["model"]["num_hidden_layers"]
    assert validate_params("10_performance", "tiny", k=None, wide=None) == (round(L / 3), False)
    layers, budget = validate_params("09_retrofit", "tiny", opt_layers=6, budget=None)
    assert (layers, budget) == (6, 3)
    with pytest.raises(ValueError, match="steps=0 must be a whole number >= 1"):
        validate_params("07_routers", "tiny", steps=0)
    with pytest.raises(ValueError, match=r"p_values: each p\(big\)=2 must be a probability"):
        validate_params("08_dense", "tiny", p_values=[0.5, 2])
    with pytest.raises(ValueError, match="opt_layers=0"):
        validate_params("09_retrofit", "tiny", opt_layers=0)
    with pytest.raises(ValueError, match="no parameter rules for notebook '99_x'"):
        validate_params("99_x", "tiny")


def test_saved_results_are_checked_against_their_type(tmp_path):
    from duolib.book.kit import load_results, save_results

    good = {"duo": {"0.5": 10.0}, "dense": {"0.5": 9.0}, "joint_small": 12.0, "freeze_small": 14.0}
    save_results(tmp_path, "08_dense", good)
    assert load_results(tmp_path)["08_dense"] == good
    with pytest.raises(ValueError, match="results of 08_dense lack freeze_small"):
        save_results(tmp_path, "08_dense", {k: v for k, v in good.items() if k != "freeze_small"})
    with pytest.raises(ValueError, match=r"lack holdouts\.english\.fixed"):
        save_results(tmp_path, "03_oracle", {"num_layers": 4, "holdouts": {"english": {
            "all_big": 1.0, "all_small": 2.0, "oracle": {}, "best_of_random": {}, "best_of_random_per_token": {}}}})
