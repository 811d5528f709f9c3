"""The extension points of CONTRIBUTING.md, exercised the way a contributor would use them: a toy
reduction registered through :mod:`duolib.oracle.registry` shows up in the summary, the book's curves and
its intervals; a toy router type registered through :mod:`duolib.router.policy` saves, loads and calibrates."""

import math

import pytest
import torch

from duolib.book import analysis, evidence
from duolib.oracle.reductions import LossMatrix
from duolib.oracle.registry import REDUCTIONS, BudgetReduction, register_reduction, unregister_reduction
from duolib.oracle.patterns import enumerate_patterns
from duolib.routing import BIG, pattern_to_str


def synthetic_matrix(L: int = 4, seqs: int = 6, T: int = 9, seed: int = 0) -> LossMatrix:
    """Losses of every {small, big} pattern: a per-layer cost of small plus per-token noise."""
    g = torch.Generator().manual_seed(seed)
    patterns = enumerate_patterns(L, ("small", "big"))
    N = seqs * (T - 1)
    cost = torch.rand(L, generator=g)  # what making each layer small costs, on average
    losses = 3.0 + (patterns != BIG).float() @ cost[:, None] + 0.3 * torch.rand(len(patterns), N, generator=g)
    t = torch.arange(N)
    return LossMatrix(losses.float(), patterns, t // (T - 1), t % (T - 1), torch.zeros(N, dtype=torch.long), T)


def first_row(matrix, k, n_random, seed):
    return matrix.budget_rows(k)[:1]


def first_two(matrix, k, n_random, seed):
    return matrix.budget_rows(k)[:2]


@pytest.fixture
def toys():
    """Two toy reductions, removed again after the test (the registry is process-wide)."""
    added = [register_reduction(BudgetReduction("first_pattern", "first pattern", "first_pattern", first_row,
                                                per_token=False, record_pattern=True)),
             register_reduction(BudgetReduction("best_of_first_two", "best of the first two (per token)",
                                                "best_of_first_two", first_two, per_token=True))]
    yield added
    for r in added:
        unregister_reduction(r.name)


def test_a_registered_reduction_reaches_summary_curves_and_intervals(toys):
    m = synthetic_matrix()
    summary = m.summary(n_random=3, seed=0)
    for k, row in summary["per_k"].items():
        first = m.patterns[m.budget_rows(int(k))[0]]
        assert row["first_pattern"] == pytest.approx(m.perplexity_of(first))
        assert row["first_pattern_pattern"] == pattern_to_str(first)
        pair = m.losses[m.budget_rows(int(k))[:2]].min(0).values
        assert row["best_of_first_two"] == pytest.approx(math.exp(pair.double().mean()))
        assert row["oracle"] <= row["best_of_first_two"] + 1e-9  # the oracle sees every pattern of the budget
    results = analysis.oracle_results(summary, 3)
    assert results["first_pattern"] == {k: v["first_pattern"] for k, v in summary["per_k"].items()}
    frame = analysis.curves_frame({"h": results}, 3)
    assert {"first pattern", "best of the first two (per token)", "best of 3 random (one pattern)"} <= set(frame["method"])
    ci = evidence.oracle_intervals(m, n_random=3, seed=0, n_boot=100)
    for k, row in summary["per_k"].items():
        for name in ("first_pattern", "best_of_first_two", "oracle", "fixed"):
            c = ci["perplexity"][name][k]
            assert c["value"] == pytest.approx(row[name]) and c["low"] <= c["value"] <= c["high"]


def test_builtin_reductions_keep_their_summary_keys():
    """`duo oracle`'s summary.json keeps the keys earlier releases wrote."""
    row = synthetic_matrix().summary(n_random=5, seed=1)["per_k"]["2"]
    assert list(row) == ["n_patterns", "oracle", "fixed", "fixed_pattern", "best_of_5_pattern", "best_of_5_token"]
    assert list(REDUCTIONS)[:4] == ["oracle", "fixed", "best_of_random", "best_of_random_per_token"]


def test_the_registry_refuses_bad_entries(toys):
    with pytest.raises(ValueError, match="already registered"):
        register_reduction(BudgetReduction("oracle", "x", "x", first_row, per_token=True))
    with pytest.raises(ValueError, match="identifier"):
        BudgetReduction("two words", "x", "x", first_row, per_token=True)
    with pytest.raises(ValueError, match="one-pattern"):
        BudgetReduction("odd", "x", "x", first_row, per_token=False, reduce=lambda *a: None)
    with pytest.raises(ValueError, match="record_pattern"):
        BudgetReduction("odd", "x", "x", first_row, per_token=True, record_pattern=True)
    with pytest.raises(KeyError, match="registered: oracle"):
        unregister_reduction("no_such")


# ----------------------------------------------------------------------------- a toy router type

from torch import nn  # noqa: E402

from duolib import DuoConfig, DuoForCausalLM  # noqa: E402
from duolib.router.base import ROUTER_TYPES, Router, load_router, register_router  # noqa: E402
from duolib.router.evaluate import perplexity_vs_budget  # noqa: E402
from duolib.router.calibration import calibrate_router  # noqa: E402
from duolib.router.train import train_router  # noqa: E402


class MeanRouter(Router):
    """Scores each option from the mean of ``width`` hidden features per layer: a toy type with a
    constructor argument that shapes its weights."""

    kind = "toy-mean"

    def __init__(self, hidden_size, num_layers, options=("small", "big"), width: int = 8):
        super().__init__(hidden_size, num_layers, options)
        self.width = int(width)
        self.scale = nn.Parameter(torch.randn(num_layers, len(self.options), generator=torch.Generator().manual_seed(0)))

    def raw_logits(self, layer_idx, hidden_states):
        return hidden_states[..., : self.width].mean(-1, keepdim=True) * self.scale[layer_idx]

    def config(self):
        return {"width": self.width}


@pytest.fixture
def toy_router_type():
    register_router(MeanRouter)
    yield MeanRouter
    del ROUTER_TYPES[MeanRouter.kind]


def test_a_registered_router_type_trains_calibrates_saves_and_loads(toy_router_type, tmp_path):
    model = DuoForCausalLM(DuoConfig.preset("tiny")).eval()
    ids = torch.randint(0, 512, (8, 16), generator=torch.Generator().manual_seed(0))
    router = MeanRouter.for_model(model, width=4)
    train_router(model, router, [ids[:4], ids[4:]], steps=2, budget=2.0, lr=1e-2, progress=False)
    before = router.offsets.clone()
    info = calibrate_router(model, router, ids, {BIG: 0.25})
    assert not torch.equal(router.offsets, before) and info["error_layers"] >= 0  # calibration moves the offsets
    router.save(tmp_path / "r", model)
    again = load_router(tmp_path / "r", model)
    assert type(again) is MeanRouter and again.width == 4
    torch.testing.assert_close(again.offsets, router.offsets)
    torch.testing.assert_close(again.scale, router.scale)
    x = torch.randn(2, 5, model.config.hidden_size)
    assert torch.equal(again.route_layer(1, x, None), router.route_layer(1, x, None))
    assert "toy" in set(perplexity_vs_budget(model, {"toy": again}, ids)["method"])


def test_an_unregistered_router_type_is_refused_by_name(toy_router_type, tmp_path):
    model = DuoForCausalLM(DuoConfig.preset("tiny")).eval()
    MeanRouter.for_model(model).save(tmp_path / "r", model)
    del ROUTER_TYPES[MeanRouter.kind]
    try:
        with pytest.raises(ValueError, match="type 'toy-mean', which this process has not registered"):
            load_router(tmp_path / "r", model)
    finally:
        register_router(MeanRouter)
    with pytest.raises(ValueError, match="taken by MeanRouter"):
        register_router(type("Other", (MeanRouter,), {}))


# ----------------------------------------------------------------------------- a profile

def test_every_profile_carries_the_keys_the_notebooks_read():
    """CONTRIBUTING.md: model, router and book sections have the same keys in every profile."""
    from duolib.profiles import PROFILES

    for section in ("model", "router", "book"):
        keys = {name: set(p[section]) for name, p in PROFILES.items()}
        first = next(iter(keys.values()))
        assert all(k == first for k in keys.values()), (section, {n: sorted(k ^ first) for n, k in keys.items()})
