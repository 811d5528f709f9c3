"""The bf16 oracle leaf (duolib.oracle.leaf): bf16 scoring plus fp32 rescoring gives the fp32 engine's reductions,
certifies its minima, refuses what it cannot certify and falls back to fp32 when its bound fails."""

import math

import pytest
import torch

from duolib import BIG, SMALL, DuoConfig, DuoForCausalLM
from duolib.oracle import leaf
from duolib.oracle.engine import loss_matrix
from duolib.oracle.difficulty import token_difficulty
from duolib.oracle.reductions import LossMatrix
from tolerances import assert_paths_close

# Weights larger than the default init spread the losses of the patterns apart, as training does.
CONFIGS = {
    "tiny": DuoConfig.preset("tiny", initializer_range=0.15),
    "default-like": DuoConfig.preset("default", hidden_size=64, num_hidden_layers=8, vocab_size=2048,
                                     big_ffn_size=256, small_ffn_size=16, initializer_range=0.1),
}


def model_for(name: str) -> DuoForCausalLM:
    torch.manual_seed(0)
    return DuoForCausalLM(CONFIGS[name]).eval()


def ids_for(model, batch: int, seq: int, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, model.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed))


def flat(summary: dict, prefix: str = "") -> dict[str, float]:
    """Every perplexity of a :meth:`LossMatrix.summary` by path."""
    out = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}/"))
        elif isinstance(value, float) and (key in ("perplexity", "oracle", "fixed") or "best_of" in key
                                            or prefix.startswith(("uniform", "schedules"))):
            out[prefix + key] = value
    return out


@pytest.mark.parametrize("semantics", ["shared", "fixed-context"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_bf16_reductions_match_fp32(name, semantics):
    model = model_for(name)
    x = ids_for(model, 2, 17 if name == "tiny" else 25)
    ref = loss_matrix(model, x, semantics=semantics, precision="fp32")
    got = loss_matrix(model, x, semantics=semantics, precision="bf16")
    assert got.stats["precision"] == "bf16" and 0 < got.stats["rescored_share"] < 0.9  # the selection was exercised
    assert not got.exact.all() and (got.losses[~got.exact] - ref.losses[~got.exact]).abs().max() > 0
    assert_paths_close(got.losses[got.exact], ref.losses[got.exact])
    a, b = flat(ref.summary()), flat(got.summary())
    assert a.keys() == b.keys() and len(a) > 20
    for key in a:  # mean losses within 1e-4
        assert abs(math.log(a[key]) - math.log(b[key])) <= 1e-4, key
    L = model.config.num_hidden_layers
    for k in range(L + 1):
        assert torch.equal(ref.oracle(k).winners, got.oracle(k).winners)
        assert abs(ref.fixed(k).mean_loss - got.fixed(k).mean_loss) <= 1e-4
        assert torch.equal(ref.winner_usage(k), got.winner_usage(k))
    for seed in (0,):
        for k in (L // 2, None):
            for reading in ("pattern", "token"):
                assert abs(ref.best_of_random(100, seed, k)[reading].mean_loss
                           - got.best_of_random(100, seed, k)[reading].mean_loss) <= 1e-4
    d_ref, d_got = token_difficulty(ref, L // 2), token_difficulty(got, L // 2)
    assert_paths_close(d_ref["difficulty"], d_got["difficulty"])
    half = (got.seq < 1).nonzero().flatten()  # a column subset keeps its certificates
    assert abs(ref.columns(half).oracle(L // 2).mean_loss - got.columns(half).oracle(L // 2).mean_loss) <= 1e-5


def test_uncertified_reductions_raise():
    """A minimum or a row resting on bf16 scores that were not rescored is refused, not returned."""
    losses = torch.tensor([[1.00, 2.0], [1.05, 1.0], [3.0, 3.0]])
    patterns = torch.tensor([[SMALL, BIG], [BIG, SMALL], [BIG, BIG]], dtype=torch.int8)
    exact = torch.tensor([[True, False], [False, True], [True, True]])
    m = LossMatrix(losses, patterns, seq=torch.tensor([0, 0]), position=torch.tensor([0, 1]),
                   target=torch.tensor([1, 2]), seq_len=3, exact=exact, error_bound=torch.tensor([0.1, 0.1, 0.1]))
    with pytest.raises(ValueError, match="precision='fp32'"):
        m.oracle(1)  # token 0: 1.05 - 0.1 < 1.00 and row 1 is not exact there
    with pytest.raises(ValueError, match="precision='fp32'"):
        m.loss_of([SMALL, BIG])
    assert torch.equal(m.oracle(2).token_losses, torch.tensor([3.0, 3.0]))
    certified = LossMatrix(losses, patterns, m.seq, m.position, m.target, 3, exact=exact,
                           error_bound=torch.tensor([0.01, 0.01, 0.01]))
    assert torch.equal(certified.oracle(1).token_losses, torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match="come together"):
        LossMatrix(losses, patterns, m.seq, m.position, m.target, 3, exact=exact)


def test_unsafe_bound_falls_back_to_fp32(monkeypatch):
    """If a rescored entry's error exceeds its share of the bound, the matrix is recomputed in fp32."""
    model = model_for("tiny")
    x = ids_for(model, 2, 9)
    monkeypatch.setattr(leaf, "CHECK_SHARE", 0.0)
    with pytest.warns(UserWarning, match="recomputed in fp32"):
        got = loss_matrix(model, x, precision="bf16")
    assert got.stats["precision"] == "fp32" and got.exact is None and "bf16_fallback" in got.stats
    assert torch.equal(got.losses, loss_matrix(model, x, precision="fp32").losses)


def test_precision_names():
    assert leaf.resolve_precision("auto", "cpu") in ("fp32", "bf16")
    assert leaf.resolve_precision("auto", "meta") == "fp32"
    assert leaf.resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision='fp16' is unknown"):
        leaf.resolve_precision("fp16", "cpu")
