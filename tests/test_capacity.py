"""The measured preconditions: each equals its quantity computed directly, and reads the same windows."""

import pandas as pd
import pytest
import torch

from duolib import BIG, SMALL, DuoConfig, DuoForCausalLM
from duolib.book import capacity
from duolib.oracle.engine import loss_matrix
from duolib.routing import SKIP, training_routes


@pytest.fixture(scope="module")
def model_and_ids():
    torch.manual_seed(0)
    model = DuoForCausalLM(DuoConfig.preset("tiny")).eval()
    return model, torch.randint(0, 512, (6, 12), generator=torch.Generator().manual_seed(1))


def test_small_big_gap_is_the_all_small_minus_all_big_mean_loss(model_and_ids):
    model, ids = model_and_ids
    gap = capacity.small_big_gap(loss_matrix(model, ids), n_boot=200)
    L = model.config.num_hidden_layers
    direct = (capacity.routed_losses(model, ids, torch.full((6, 12, L), SMALL))
              - capacity.routed_losses(model, ids, None)).double().mean()
    assert gap["value"] == pytest.approx(float(direct), abs=1e-4)
    assert gap["low"] <= gap["value"] <= gap["high"]


def test_half_skip_cost_skips_about_half_the_slots_and_pairs_the_windows(model_and_ids):
    model, ids = model_and_ids
    cost = capacity.half_skip_cost(model, ids, seed=3, n_boot=200)
    L = model.config.num_hidden_layers
    routes = training_routes(3, 0, range(6), 12, L, 0.5, 0.5, stream=1)
    assert set(routes.unique().tolist()) == {SKIP, BIG} and 0.35 < (routes == SKIP).double().mean() < 0.65
    direct = (capacity.routed_losses(model, ids, routes) - capacity.routed_losses(model, ids, None)).double().mean()
    assert cost["value"] == pytest.approx(float(direct), abs=1e-6)
    same = capacity.loss_gap_interval(torch.ones(6, 11), torch.ones(6, 11), n_boot=50)
    assert same == {"value": 0.0, "low": 0.0, "high": 0.0}
    with pytest.raises(ValueError, match="same windows"):
        capacity.loss_gap_interval(torch.ones(6, 11), torch.ones(5, 11))


def test_stage1_plateau_reads_the_worst_holdout():
    rows = [dict(kind="eval", step=s, holdout=h, routes="big", loss=loss)
            for h, losses in {"english": [5.0, 4.0, 3.9], "python": [5.0, 4.0, 3.0]}.items()
            for s, loss in zip([0, 80, 100], losses)]
    assert capacity.stage1_plateau(pd.DataFrame(rows)) == pytest.approx(0.25)  # python: 4.0 -> 3.0
    assert capacity.stage1_plateau(pd.DataFrame(rows[:3])) == pytest.approx(0.025)  # english alone: 4.0 -> 3.9
