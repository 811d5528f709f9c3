"""The FLOP ledger against hand counts on the tiny preset (d 64, 4 layers, 4 heads, FFN 256 / 16, V 512)."""

import pytest
import torch

from duolib import BIG, SKIP, SMALL, DuoConfig, DuoForCausalLM
from duolib import flops


@pytest.fixture
def cfg():
    return DuoConfig.preset("tiny")


def test_components_match_hand_count(cfg):
    # q, k, v, o: four 64x64 matrices -> 2 * 4 * 64 * 64; scores + AV at ctx 10: 4 * 10 * 64
    assert flops.attention_flops(cfg, 10) == 2 * 4 * 64 * 64 + 4 * 10 * 64 == 35328
    assert flops.ffn_flops(cfg, BIG) == 2 * 3 * 64 * 256 == 98304
    assert flops.ffn_flops(cfg, SMALL) == 2 * 3 * 64 * 16 == 6144
    assert flops.ffn_flops(cfg, SKIP) == 0
    assert flops.head_flops(cfg) == 2 * 64 * 512 == 65536


def test_pattern_flops_hand_count(cfg):
    # pattern big, small, skip, big at ctx 10: 4 * 35328 + 98304 + 6144 + 0 + 98304 + 65536
    assert flops.pattern_flops(cfg, [BIG, SMALL, SKIP, BIG], 10) == 141312 + 202752 + 65536
    assert DuoForCausalLM(cfg).flops_per_token("BS-B", 10) == 409600


def test_routes_flops_sums_tokens_with_causal_context(cfg):
    routes = torch.tensor([[[BIG, BIG, BIG, BIG], [SKIP, SKIP, SKIP, SKIP]]])  # one sequence, two tokens
    expected = (flops.pattern_flops(cfg, [BIG] * 4, 1) + flops.pattern_flops(cfg, [SKIP] * 4, 2))
    assert flops.routes_flops(cfg, routes) == expected
    assert flops.mean_flops_per_token(cfg, routes) == expected / 2


def test_dense_equivalent_width_and_training_flops(cfg):
    assert flops.dense_equivalent_width(cfg, 0.5) == 136  # 0.5 * 256 + 0.5 * 16
    assert flops.dense_equivalent_width(cfg, 1.0) == 256
    t = flops.training_flops_per_token(cfg, p_big=1.0, seq_len=1)
    assert t == 3 * flops.pattern_flops(cfg, [BIG] * 4, 1)


def test_bad_route_code(cfg):
    with pytest.raises(ValueError, match="route 5 is not a route code"):
        flops.ffn_flops(cfg, 5)
    with pytest.raises(ValueError, match="routes must be"):
        flops.routes_flops(cfg, torch.zeros(2, 3, 5, dtype=torch.long))
