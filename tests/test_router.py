"""Routers (Stage 3): training to a budget, hard routing, generation, distillation, save/load, evaluation."""

from itertools import combinations

import pytest
import torch

from duolib import BIG, SKIP, SMALL, DuoConfig, DuoForCausalLM, FixedRoutes, RandomRoutes
from duolib.router.budgets import SETTINGS, budget_penalty, budget_targets, option_code, parse_options, temperature
from duolib.router.policy import RouterPolicy, load_router, routed_forward
from duolib.router.evaluate import (
    decision_grid, decision_heatmap, evaluate_policy, evaluate_routers, heatmap_from_routes, perplexity_vs_budget,
    perplexity_vs_flops
)
from duolib.router.distill import oracle_routes_per_sequence, train_distilled_router
from duolib.router.train import train_router

V = 512  # the tiny profile's vocabulary


def markov_batch(step: int, batch: int = 8, seq: int = 64, seed: int = 0) -> torch.Tensor:
    """A fixed random successor table, followed 80% of the time: memorising it needs FFN capacity."""
    succ = torch.randint(0, V, (V,), generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed * 100_003 + step)
    x = torch.empty(batch, seq, dtype=torch.long)
    x[:, 0] = torch.randint(0, V, (batch,), generator=g)
    noise = torch.rand(batch, seq, generator=g) < 0.2
    rnd = torch.randint(0, V, (batch, seq), generator=g)
    for t in range(1, seq):
        x[:, t] = torch.where(noise[:, t], rnd[:, t], succ[x[:, t - 1]])
    return x


@pytest.fixture(scope="module")
def trained():
    """The tiny Duo model after a short Stage-1 run with random routing (p_big = 0.5)."""
    torch.manual_seed(0)
    model = DuoForCausalLM(DuoConfig.preset("tiny"))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(60):
        x = markov_batch(step)
        loss = model(x, labels=x, routes=RandomRoutes(p_big=0.5, seed=step)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def holdout():
    return torch.cat([markov_batch(i, seed=1) for i in range(2)])  # [16, 64]


@pytest.fixture(scope="module")
def router_k2(trained):
    router = RouterPolicy.for_model(trained)
    before = RouterPolicy.for_model(trained)
    before.set_prior(budget_targets(4, before.options, budget=2))
    history = train_router(trained, router, lambda s: markov_batch(s, seed=2), steps=60, budget=2, progress=False)
    return router, before, history


# ----------------------------------------------------------------------------- schedule and budgets


def test_temperature_schedule_is_an_exponential_decay():
    taus = [temperature(s, 11, tau0=1.0, tau_min=0.1) for s in range(11)]
    assert taus[0] == pytest.approx(1.0) and taus[-1] == pytest.approx(0.1)
    ratios = [b / a for a, b in zip(taus, taus[1:])]
    assert all(r == pytest.approx(0.1 ** 0.1) for r in ratios)  # constant ratio: exponential
    assert temperature(50, 11) == pytest.approx(0.1)  # clamped at tau_min
    with pytest.raises(ValueError, match="0 < tau_min <= tau0"):
        temperature(0, 10, tau0=0.1, tau_min=1.0)


def test_budget_targets_and_penalty():
    assert budget_targets(12, (SMALL, BIG), budget=4) == {BIG: pytest.approx(1 / 3)}
    t = budget_targets(12, (SKIP, SMALL, BIG), option_budget=SETTINGS["big50_small30_skip20"])
    assert t == {SKIP: pytest.approx(0.2), SMALL: pytest.approx(0.3), BIG: pytest.approx(0.5)}
    assert budget_targets(12, (SKIP, BIG), option_budget="big50_skip50") == {SKIP: 0.5, BIG: 0.5}
    probs = torch.zeros(2, 3, 4, 3)
    probs[0, ..., BIG] = 0.75  # sequence 0: 3 of 4 layers big on average
    probs[1, ..., BIG] = 0.25
    probs[..., SMALL] = 1 - probs[..., BIG]
    # per sequence (0.75 - 0.5)^2 and (0.25 - 0.5)^2, averaged over the batch
    assert float(budget_penalty(probs, {BIG: 0.5})) == pytest.approx(0.0625)
    assert float(budget_penalty(probs.mean(0, keepdim=True), {BIG: 0.5})) == pytest.approx(0.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(budget=13), r"budget=13 is outside 0\.\.12"),
        (dict(budget=-1), r"budget=-1 is outside 0\.\.12"),
        (dict(option_budget={"small": 0.7, "big": 0.2}), r"sums to 0\.9; the fractions of the options must sum to 1"),
        (dict(option_budget={"medium": 1.0}), "unknown option 'medium'"),
        (dict(option_budget="big90"), "unknown setting 'big90'; allowed: small70_big30"),
        (dict(), "give exactly one of budget"),
        (dict(budget=4, option_budget={"big": 1.0}), "give exactly one of budget"),
    ],
)
def test_bad_budgets_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        budget_targets(12, (SMALL, BIG), **kwargs)


def test_options_are_names_or_codes_in_both_parsers():
    assert parse_options(("BIG", 0, "small", 2)) == (SKIP, SMALL, BIG)
    assert parse_options("skip, big") == (SKIP, BIG)
    assert [option_code(o) for o in ("skip", "Small", "big", 0, 1, 2)] == [SKIP, SMALL, BIG, SKIP, SMALL, BIG]
    assert budget_targets(12, "skip,small,big", option_budget={"Skip": 0.25, SMALL: 0.25, "big": 0.5}) == \
        {SKIP: 0.25, SMALL: 0.25, BIG: 0.5}
    assert budget_targets(12, (SMALL, BIG), option_budget="small70_big30") == {SMALL: 0.7, BIG: 0.3}
    with pytest.raises(ValueError, match=r"unknown router option 3; allowed route codes 0 \(skip\)"):
        parse_options((1, 3))
    with pytest.raises(ValueError, match=r"option_budget names unknown option 3; allowed route codes"):
        budget_targets(12, (SMALL, BIG), option_budget={3: 1.0})
    with pytest.raises(ValueError, match="option_budget names unknown option 'huge'; allowed: 'skip', 'small', 'big'"):
        budget_targets(12, (SMALL, BIG), option_budget={"huge": 1.0})


def test_bad_budget_in_training_and_bad_options_raise(trained):
    router = RouterPolicy.for_model(trained)
    with pytest.raises(ValueError, match=r"budget=5 is outside 0\.\.4"):
        train_router(trained, router, markov_batch, steps=1, budget=5, progress=False)
    with pytest.raises(ValueError, match="option_budget names 'skip' but the router's options are"):
        budget_targets(4, (SMALL, BIG), option_budget={"skip": 0.5, "big": 0.5})
    with pytest.raises(ValueError, match="have no 'big'"):
        budget_targets(4, (SKIP, SMALL), budget=2)
    with pytest.raises(ValueError, match="unknown router option 'huge'"):
        RouterPolicy(64, 4, ("small", "huge"))
    with pytest.raises(ValueError, match="at least two options"):
        RouterPolicy(64, 4, ("big",))


# ----------------------------------------------------------------------------- training (paper)


def test_router_training_lowers_the_loss_and_lands_on_the_budget(trained, holdout, router_k2):
    router, before, history = router_k2
    targets = budget_targets(4, router.options, budget=2)

    def objective(r):  # the training objective at the final temperature on a fixed batch
        with torch.no_grad(), r.soft(0.1):
            out, trace = routed_forward(trained, holdout, r, labels=holdout)
        return float(out.loss) + 10.0 * float(budget_penalty(trace.probs, targets))

    assert objective(router) < objective(before)
    hard_after, hard_before = evaluate_policy(trained, router, holdout), evaluate_policy(trained, before, holdout)
    assert hard_after["loss"] < hard_before["loss"]
    assert abs(hard_after["mean_big_layers"] - 2) <= 0.5
    assert hard_after["frac_big"] + hard_after["frac_small"] == pytest.approx(1.0)
    assert [h["step"] for h in history] == list(range(60))
    assert history[0]["tau"] == pytest.approx(1.0) and history[-1]["tau"] == pytest.approx(0.1)
    assert {"loss", "ce", "penalty", "mean_big_layers", "frac_big"} <= set(history[0])
    assert router.mode == "hard" and router.meta["budget"] == 2


def test_base_model_stays_frozen_and_untouched(trained):
    snapshot = {k: v.clone() for k, v in trained.state_dict().items()}
    router = RouterPolicy.for_model(trained)
    train_router(trained, router, markov_batch, steps=3, budget=2, progress=False)
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in snapshot.items())
    assert all(p.requires_grad for p in trained.parameters())  # flags restored after training


def test_unfrozen_base_is_trained_too():
    torch.manual_seed(0)
    model = DuoForCausalLM(DuoConfig.preset("tiny"))
    before = model.model.layers[0].big.up_proj.weight.clone()
    router = RouterPolicy.for_model(model)
    train_router(model, router, markov_batch, steps=2, budget=2, freeze_base=False, base_lr=1e-3, progress=False)
    assert not torch.equal(before, model.model.layers[0].big.up_proj.weight)
    assert router.meta["freeze_base"] is False


def test_skip_setting_trains_toward_its_option_fractions(trained, holdout):
    router = RouterPolicy.for_model(trained, options=("skip", "small", "big"))
    history = train_router(trained, router, lambda s: markov_batch(s, seed=3), steps=25,
                           option_budget="big50_small30_skip20", progress=False)
    assert history[-1]["penalty"] < 0.01
    res = evaluate_policy(trained, router, holdout)
    assert abs(res["frac_big"] - 0.5) < 0.2 and abs(res["frac_skip"] - 0.2) < 0.2
    assert res["frac_skip"] + res["frac_small"] + res["frac_big"] == pytest.approx(1.0)


def test_training_is_seeded(trained):
    runs = []
    for _ in range(2):
        router = RouterPolicy.for_model(trained, seed=5)
        train_router(trained, router, markov_batch, steps=3, budget=1, progress=False, seed=1)
        runs.append(router.layers[0].weight.detach().clone())
    assert torch.equal(runs[0], runs[1])


# ----------------------------------------------------------------------------- inference


@pytest.mark.parametrize("options", [("small", "big"), ("skip", "small", "big")])
def test_hard_routed_forward_equals_forward_with_its_routes(trained, options):
    router = RouterPolicy.for_model(trained, options=options, init_std=1.0, seed=3)  # varied decisions
    x = markov_batch(0, batch=4, seq=32, seed=4)
    with torch.no_grad():
        out = trained(x, routes=router, return_routes=True)
        routes = out.routing.routes
        explicit = trained(x, routes=routes)
    assert len(routes.unique()) == len(options)
    assert torch.equal(out.logits, explicit.logits)
    assert out.routing.probs is None  # hard routing


def test_router_decisions_are_causal(trained):
    router = RouterPolicy.for_model(trained, init_std=1.0, seed=3)
    x = markov_batch(0, batch=2, seq=40, seed=5)
    with torch.no_grad():
        full = trained(x, routes=router, return_routes=True).routing.routes
        prefix = trained(x[:, :25], routes=router, return_routes=True).routing.routes
    assert torch.equal(full[:, :25], prefix)


def test_generate_with_router_equals_greedy_with_its_routes(trained, router_k2):
    router = router_k2[0]
    prompt = markov_batch(7, batch=2, seq=6, seed=6)
    with torch.no_grad():
        generated = trained.generate(prompt, max_new_tokens=10, do_sample=False, routes=router, pad_token_id=0)
        routes = trained(generated, routes=router, return_routes=True).routing.routes  # the routes it chose
        ids = prompt
        for _ in range(10):  # greedy decoding, no cache, every token on its chosen route
            logits = trained(ids, routes=routes[:, : ids.shape[1]], use_cache=False).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, ids)
    assert (routes == BIG).any() and (routes == SMALL).any()


# ----------------------------------------------------------------------------- oracle distillation (ours)


def brute_force_oracle(model, x, k):
    """Per-token argmin over all C(L, k) patterns of the token loss (each pattern applied to every token)."""
    L = model.config.num_hidden_layers
    patterns = torch.tensor([[BIG if i in big else SMALL for i in range(L)] for big in combinations(range(L), k)])
    with torch.no_grad():
        losses = torch.stack([model(x, routes=p, labels=x, return_token_losses=True).token_losses for p in patterns])
    best = losses.argmin(0)  # [N, T-1]
    return patterns[best], losses.min(0).values  # [N, T-1, L], [N, T-1]


def test_oracle_routes_reshaping():
    ids = torch.zeros(3, 5, dtype=torch.long)
    flat = torch.full((3 * 4, 4), BIG)
    routes, mask = oracle_routes_per_sequence(ids, flat, fill=SMALL)
    assert routes.shape == (3, 5, 4) and not mask[:, -1].any() and mask[:, :-1].all()
    assert (routes[:, -1] == SMALL).all()
    with pytest.raises(ValueError, match="oracle routes have 7 rows"):
        oracle_routes_per_sequence(ids, torch.full((7, 4), BIG))
    # rows for a subset of tokens, in any order, placed by (seq, position)
    rows = torch.tensor([[BIG, BIG, SMALL, SMALL], [SMALL, SMALL, BIG, BIG]])
    routes, mask = oracle_routes_per_sequence(ids, rows, fill=SMALL, token_index=([2, 0], [3, 1]))
    assert torch.equal(routes[2, 3], rows[0]) and torch.equal(routes[0, 1], rows[1]) and int(mask.sum()) == 2
    with pytest.raises(ValueError, match="token_index points outside"):
        oracle_routes_per_sequence(ids, rows, token_index=([3, 0], [0, 0]))


def test_distilled_router_imitates_the_oracle(trained, holdout, router_k2):
    x = torch.cat([markov_batch(i, batch=8, seq=32, seed=7) for i in range(2)])  # [16, 32]
    oracle, oracle_losses = brute_force_oracle(trained, x, k=2)
    assert oracle.shape == (16, 31, 4) and ((oracle == BIG).sum(-1) == 2).all()
    router = RouterPolicy.for_model(trained)
    history = train_distilled_router(trained, router, x, oracle.reshape(-1, 4), steps=40, batch_size=8,
                                     lr=3e-2, progress=False)
    first, last = history[0], history[-1]
    assert last["loss"] < first["loss"] and last["accuracy"] > first["accuracy"]
    assert router.meta["kind"] == "distilled" and router.meta["budget"] == pytest.approx(2.0)
    # compared with the MoE-style router on the same axes (references: numbers from elsewhere)
    ho = holdout[:, :32]
    h_oracle, h_oracle_losses = brute_force_oracle(trained, ho, k=2)
    refs = [{"method": "oracle k=2", "mean_big_layers": 2.0, "ppl": float(h_oracle_losses.mean().exp())}]
    df = evaluate_routers(trained, {"moe": router_k2[0], "distilled": router, "fixed BBSS": FixedRoutes("BBSS")},
                          ho, references=refs)
    assert list(df.method) == ["moe", "distilled", "fixed BBSS", "oracle k=2"]
    assert (df.source == ["measured"] * 3 + ["reference"]).all()
    oracle_ppl = float(df.loc[df.method == "oracle k=2", "ppl"].iloc[0])
    assert (df.loc[df.source == "measured", "ppl"] > oracle_ppl).all()  # the oracle is the lower bound
    assert df.flops_per_token.notna().all()


def test_teacher_forcing_follows_the_oracle_routes(trained):
    x = markov_batch(0, batch=2, seq=16, seed=8)
    routes = torch.randint(1, 3, (2, 16, 4), generator=torch.Generator().manual_seed(0))
    from duolib.router.distill import _TeacherForced

    teacher = _TeacherForced(routes)
    with torch.no_grad():
        _, trace = routed_forward(trained, x, teacher)
    assert torch.equal(trace.routes, routes) and set(teacher.hidden) == {0, 1, 2, 3}
    assert teacher.hidden[2].shape == (2, 16, 64)


def test_distillation_rejects_routes_outside_the_options(trained):
    x = markov_batch(0, batch=2, seq=8)
    oracle = torch.full((2, 7, 4), SKIP)
    message = r"oracle routes use \['skip'\] but the router's options are \['small', 'big'\]"
    with pytest.raises(ValueError, match=message):
        train_distilled_router(trained, RouterPolicy.for_model(trained), x, oracle, steps=1, progress=False)


# ----------------------------------------------------------------------------- save / load


def test_save_load_round_trip(trained, router_k2, tmp_path):
    router = router_k2[0]
    router.save(tmp_path / "r")
    loaded = load_router(tmp_path / "r", trained)
    x = markov_batch(0, batch=2, seq=32, seed=9)
    with torch.no_grad():
        a = trained(x, routes=router, return_routes=True).routing.routes
        b = trained(x, routes=loaded, return_routes=True).routing.routes
    assert torch.equal(a, b)
    assert loaded.options == router.options and loaded.targets == pytest.approx(router.targets)
    assert loaded.meta["budget"] == 2 and loaded.mode == "hard"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(hidden_size=32), "trained for hidden_size=64 but the model has hidden_size=32"),
        (dict(num_hidden_layers=3), "trained for num_hidden_layers=4 but the model has num_hidden_layers=3"),
        (dict(big_ffn_size=128), r"different base model \(config fingerprint .*big_ffn_size': \(256, 128\)"),
    ],
)
def test_loading_a_router_for_another_base_model_raises(router_k2, tmp_path, overrides, message):
    router_k2[0].save(tmp_path / "r")
    other = DuoForCausalLM(DuoConfig.preset("tiny", **overrides))
    with pytest.raises(ValueError, match=message):
        load_router(tmp_path / "r", other)


def test_loading_onto_other_weights_warns(router_k2, tmp_path):
    router_k2[0].save(tmp_path / "r")
    with pytest.warns(UserWarning, match="different checkpoint"):
        load_router(tmp_path / "r", DuoForCausalLM(DuoConfig.preset("tiny")))
    with pytest.raises(ValueError, match="holds no saved router"):
        load_router(tmp_path / "nothing", DuoForCausalLM(DuoConfig.preset("tiny")))


# ----------------------------------------------------------------------------- evaluation frames


def test_perplexity_frames(trained, holdout, router_k2):
    router = router_k2[0]
    refs = [{"method": "fixed k=2", "mean_big_layers": 2, "ppl": 9.0},
            {"method": "best of 100 k=2", "mean_big_layers": 2, "ppl": 9.5, "flops_per_token": 1.0}]
    by_budget = perplexity_vs_budget(trained, {"router k=2": router, "all big": FixedRoutes("BBBB")}, holdout, refs)
    assert list(by_budget.columns) == ["method", "kind", "source", "budget", "mean_big_layers", "ppl"]
    assert by_budget.mean_big_layers.is_monotonic_increasing
    assert by_budget.loc[by_budget.method == "all big", "mean_big_layers"].item() == 4
    by_flops = perplexity_vs_flops(trained, {"router k=2": router, "all big": FixedRoutes("BBBB")}, holdout, refs)
    assert by_flops.flops_per_token.is_monotonic_increasing
    from duolib.flops import mean_flops_per_token

    all_big = torch.full((1, 64, 4), BIG)
    measured = by_flops.loc[by_flops.method == "all big", "flops_per_token"].item()
    assert measured == mean_flops_per_token(trained.config, all_big)
    # the reference at k=2 without FLOPs gets the FLOPs of 2 big + 2 small layers per token
    fixed = torch.tensor([BIG, BIG, SMALL, SMALL]).expand(1, 64, 4)
    assert by_flops.loc[by_flops.method == "fixed k=2", "flops_per_token"].item() == pytest.approx(
        mean_flops_per_token(trained.config, fixed))


def test_heatmap_and_grid(trained, holdout, router_k2):
    router = router_k2[0]
    heat = decision_heatmap(trained, router, holdout)
    assert len(heat) == 4 * 64 and set(heat.columns) >= {"layer", "position", "fraction"}
    with torch.no_grad():
        routes = trained(holdout, routes=router, return_routes=True).routing.routes
    assert heat.loc[(heat.layer == 3) & (heat.position == 10), "fraction"].item() == pytest.approx(
        float((routes[:, 10, 3] == BIG).float().mean()))
    mean_big = float((routes == BIG).sum(-1).float().mean())
    assert heat.groupby("position").fraction.sum().mean() == pytest.approx(mean_big)
    grid = decision_grid(trained, router, holdout[0])
    assert len(grid) == 4 * 64
    codes = torch.tensor(grid.sort_values(["position", "layer"]).code.values).view(64, 4)
    assert torch.equal(codes, routes[0])
    agrees = (grid.p_big > 0.5) == (grid.code == BIG)
    assert agrees.all()
    assert grid.loss.isna().sum() == 4  # the last position has no next-token loss
    skip_heat = heatmap_from_routes(torch.full((2, 3, 4), SKIP), code=SKIP)
    assert (skip_heat.fraction == 1).all()


def test_duo_route_command(tmp_path, capsys):
    from duolib import cli

    rc = cli.main(["route", "--random-init", "--profile", "tiny", "--out", str(tmp_path), "--no-progress", "--steps", "3",
                   "--eval-sequences", "2", "--seq-len", "16", "--batch-size", "2"])
    assert rc == 0
    assert (tmp_path / "router" / "router.json").is_file() and (tmp_path / "eval.csv").is_file()
    assert "router saved to" in capsys.readouterr().out
    rc = cli.main(["route", "--random-init", "--profile", "tiny", "--out", str(tmp_path / "b"), "--no-progress",
                   "--budget", "9"])
    assert rc == 1 and "budget=9.0 is outside 0..4" in capsys.readouterr().err
    rc = cli.main(["route", "--random-init", "--profile", "tiny", "--out", str(tmp_path / "s"), "--no-progress",
                   "--setting", "big90"])
    assert rc == 1 and "unknown setting 'big90'; allowed: small70_big30" in capsys.readouterr().err
    assert not (tmp_path / "s" / "router").exists()


# ----------------------------------------------------------------------------- calibration and flatness


def test_calibration_brings_the_hard_routes_to_the_budget(trained, holdout, router_k2):
    import copy

    from duolib.router.calibration import calibrate_router

    router = copy.deepcopy(router_k2[0])
    with torch.no_grad():  # push every layer toward big: the hard routes overshoot the budget of 2 of 4
        for lin in router.layers:
            lin.bias[router.options.index(BIG)] += 3.0
    weights = [lin.weight.clone() for lin in router.layers]
    before = evaluate_policy(trained, router, holdout)["mean_big_layers"]
    assert before > 3.0
    calib = torch.cat([markov_batch(s, seed=5) for s in range(4)])
    info = calibrate_router(trained, router, calib)
    assert info["error_layers"] <= 0.05
    assert abs(evaluate_policy(trained, router, holdout)["mean_big_layers"] - 2) <= 0.25  # unseen windows
    assert all(torch.equal(w, lin.weight) for w, lin in zip(weights, router.layers))  # only the threshold moved
    assert router.meta["calibration"]["offsets"]["big"] < 0


def test_calibration_of_a_three_way_skip_setting(trained, holdout):
    from duolib.router.calibration import calibrate_router

    router = RouterPolicy.for_model(trained, ("skip", "small", "big"), seed=3)
    train_router(trained, router, lambda s: markov_batch(s, seed=2), steps=10, option_budget="big50_small30_skip20",
                 progress=False)
    calibrate_router(trained, router, torch.cat([markov_batch(s, seed=5) for s in range(4)]))
    got = evaluate_policy(trained, router, holdout)
    for name, target in SETTINGS["big50_small30_skip20"].items():
        assert abs(got[f"frac_{name}"] - target) * 4 <= 0.25, (name, got)


def test_flatness_on_constructed_histories():
    import numpy as np

    from duolib.router.evaluate import FLAT_TOL, flatness_word, history_flatness, tail_change

    steps = np.arange(400)
    noise = np.random.default_rng(0).normal(0, 0.05, 400)
    plateau = 3 + 2 * np.exp(-steps / 30) + noise  # converged long before the last 20%
    falling = 5 - 0.004 * steps + noise  # still dropping ~0.3 over the last 80 steps (~10%)
    assert abs(tail_change(plateau)) < FLAT_TOL and flatness_word(tail_change(plateau)) == "flattened"
    assert tail_change(falling) > FLAT_TOL and flatness_word(tail_change(falling)) == "still falling"
    assert flatness_word(tail_change(falling[::-1])) == "still rising"
    slow = 3 + 2 * np.exp(-steps / 300)  # an exponential that is still visibly falling at the end
    assert flatness_word(tail_change(slow)) == "still falling"
    with pytest.raises(ValueError, match="at least 10"):
        tail_change([1.0] * 5)
    with pytest.raises(ValueError, match="not finite"):
        tail_change([1.0] * 20 + [float("nan")])

    import pandas as pd

    flat_penalty = pd.DataFrame({"loss": plateau, "penalty": 1e-3 * np.exp(-steps / 20)})
    assert history_flatness(flat_penalty, alpha=10.0)["flat"]
    # the cross-entropy part flat, the weighted penalty still falling by ~0.3 nats at the end: not flat
    late_penalty = pd.DataFrame({"loss": plateau, "penalty": 0.15 * (1 - steps / 400)})
    verdict = history_flatness(late_penalty, alpha=10.0)
    assert not verdict["flat"] and verdict["word"] == "still falling" and verdict["penalty_change"] > FLAT_TOL
