"""Selection controls: prediction entropies equal brute force, the label-free oracle, the placebo oracle, matched
candidates, split-half reliability and the book's intervals of them, on tiny models and constructed matrices."""

import copy
import math

import numpy as np
import pytest
import torch

from duolib import BIG, SMALL, DuoConfig, DuoForCausalLM
from duolib.book import analysis
from duolib.book.selection import seed_agreement_ci, selection_intervals, split_half_ci
from duolib.oracle.brute_force import brute_force_loss_matrix
from duolib.oracle.controls import (PlaceboLosses, matched_candidates, placebo_keep, placebo_losses,
                                    split_half_difficulty)
from duolib.oracle.engine import loss_matrix
from duolib.oracle.patterns import enumerate_patterns
from duolib.oracle.reductions import LossMatrix
from tolerances import assert_engine_close, assert_paths_close

SEMANTICS = ["shared", "fixed-context"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = DuoForCausalLM(DuoConfig.preset("tiny")).eval()
    with torch.no_grad():  # sharper predictions than at init, so entropies differ between patterns
        m.model.norm.weight.mul_(8.0)
    return m


def ids(batch=2, seq=7, seed=1):
    return torch.randint(0, 512, (batch, seq), generator=torch.Generator().manual_seed(seed))


def constructed(losses, L=4, entropy=None, windows=None):
    """A LossMatrix over every {small, big} pattern of L layers with the given losses [2^L, N]."""
    losses = torch.as_tensor(losses, dtype=torch.float32)
    N = losses.shape[1]
    W = windows or 1
    T1 = N // W
    return LossMatrix(losses, enumerate_patterns(L), seq=torch.arange(W).repeat_interleave(T1),
                      position=torch.arange(T1).repeat(W), target=torch.zeros(N, dtype=torch.long), seq_len=T1 + 1,
                      entropy=None if entropy is None else torch.as_tensor(entropy, dtype=torch.float32))


# ----------------------------------------------------------------------------- entropy and the label-free oracle

@pytest.mark.parametrize("semantics", SEMANTICS)
def test_engine_entropy_equals_brute_force(model, semantics):
    x = ids()
    trie = loss_matrix(model, x, semantics=semantics, entropy=True, max_rows=30, leaf_rows=7)
    brute = brute_force_loss_matrix(model, x, semantics=semantics, entropy=True)
    plain = loss_matrix(model, x, semantics=semantics, max_rows=30, leaf_rows=7)
    assert plain.entropy is None
    assert trie.entropy.std() > 0.05  # the check below compares entropies that differ
    assert_engine_close(trie.entropy, brute.entropy)
    assert_paths_close(trie.losses, plain.losses)
    assert_engine_close(trie.losses, brute.losses)


def test_entropy_refuses_bf16_and_mismatched_shapes(model):
    with pytest.raises(ValueError, match="precision='fp32'"):
        loss_matrix(model, ids(), entropy=True, precision="bf16")
    with pytest.raises(ValueError, match="entropy"):
        constructed(torch.zeros(16, 3), entropy=torch.zeros(16, 2))
    with pytest.raises(ValueError, match="entropy=True"):
        constructed(torch.zeros(16, 3)).label_free(2)


def test_label_free_takes_the_lowest_entropy_pattern():
    g = torch.Generator().manual_seed(0)
    losses, entropy = torch.rand(16, 5, generator=g), torch.rand(16, 5, generator=g)
    m = constructed(losses, entropy=entropy)
    for k in range(5):
        rows = (m.n_big == k).nonzero().flatten()
        red = m.label_free(k)
        for n in range(5):  # by hand: the k-big row of least entropy, its loss
            best = min(rows.tolist(), key=lambda r: float(entropy[r, n]))
            assert int(red.winners[n]) == best and float(red.token_losses[n]) == float(losses[best, n])
        assert red.mean_loss >= m.oracle(k).mean_loss  # it never beats the oracle, which sees the target


@pytest.mark.parametrize("semantics", SEMANTICS)
def test_label_free_never_beats_the_oracle_on_a_model(model, semantics):
    m = loss_matrix(model, ids(batch=3), semantics=semantics, entropy=True)
    for k in range(5):
        assert (m.label_free(k).token_losses >= m.oracle(k).token_losses).all()


def test_entropy_is_saved_and_old_files_load(tmp_path):
    m = constructed(torch.rand(16, 4), entropy=torch.rand(16, 4))
    analysis.save_matrix(m, tmp_path / "new.pt")
    assert torch.equal(analysis.load_matrix(tmp_path / "new.pt").entropy, m.entropy)
    state = torch.load(tmp_path / "new.pt", weights_only=True)
    del state["entropy"]  # a file written before the field existed
    torch.save(state, tmp_path / "old.pt")
    assert analysis.load_matrix(tmp_path / "old.pt").entropy is None
    assert torch.equal(m.columns(torch.tensor([2, 0])).entropy, m.entropy[:, [2, 0]])


# ----------------------------------------------------------------------------- the placebo oracle

@pytest.mark.parametrize("semantics", SEMANTICS)
def test_placebo_identical_candidates_give_zero_gain(model, semantics):
    x = ids()
    p = placebo_losses(model, x, 6, drop=0.0, semantics=semantics)
    assert torch.equal(p.losses, p.reference.expand(6, -1))  # the same code: bit for bit
    for k in range(5):
        assert torch.equal(p.for_budget(k), p.reference)
    engine = loss_matrix(model, x, semantics=semantics)  # the reference is the engine's all-big route
    assert_engine_close(p.reference, engine.loss_of([BIG] * 4))


def test_placebo_candidate_equals_a_model_with_the_units_zeroed(model):
    """Known answer: candidate c is the all-big forward of a copy whose dropped units' gate and up rows are 0."""
    x = ids()
    p = placebo_losses(model, x, 3, drop=0.25, seed=5)
    for c in range(3):
        keep = placebo_keep(4, model.config.big_ffn_size, 0.25, 5, c)
        ablated = copy.deepcopy(model)
        with torch.no_grad():
            for i, layer in enumerate(ablated.model.layers):
                dropped = np.setdiff1d(np.arange(model.config.big_ffn_size), keep[i])
                layer.big.up_proj.weight[torch.from_numpy(dropped)] = 0.0
        want = brute_force_loss_matrix(ablated, x, patterns=[[BIG] * 4]).losses[0]
        assert_engine_close(p.losses[c], want)
        assert keep.shape == (4, model.config.big_ffn_size - 64)


def test_placebo_more_candidates_never_worse_nested_and_deterministic(model):
    x = ids()
    p = placebo_losses(model, x, 6, drop=0.1, seed=3)
    for n in range(1, 6):
        assert (p.best(n + 1) <= p.best(n)).all()
    assert (p.best(6) < p.best(1)).any()  # the candidates differ
    again = placebo_losses(model, x, 3, drop=0.1, seed=3)
    assert torch.equal(again.losses, p.losses[:3])  # nested and deterministic for a seed
    assert not torch.equal(placebo_losses(model, x, 3, drop=0.1, seed=4).losses, again.losses)
    assert torch.equal(p.for_budget(1), p.best(4)) and torch.equal(p.for_budget(2), p.best(6))
    with pytest.raises(ValueError, match="6 candidates"):
        p.best(7)
    assert PlaceboLosses.from_state(p.state()).losses is p.losses


def test_placebo_bad_arguments(model):
    with pytest.raises(ValueError, match="drop"):
        placebo_losses(model, ids(), 2, drop=1.0)
    with pytest.raises(ValueError, match="n_candidates"):
        placebo_losses(model, ids(), 0)


# ----------------------------------------------------------------------------- matched candidates, split half

def test_matched_candidates_by_hand():
    g = torch.Generator().manual_seed(2)
    m = constructed(torch.rand(16, 6, generator=g), L=4)
    got = matched_candidates(m)
    assert list(got) == [1]  # 1 <= k < 2
    rows1, rows3 = (m.n_big == 1).nonzero().flatten(), (m.n_big == 3).nonzero().flatten()
    want = m.losses[rows1].min(0).values - m.losses[rows3].min(0).values
    assert torch.equal(got[1], want)
    m6 = constructed(torch.rand(64, 2, generator=g), L=6)
    assert list(matched_candidates(m6)) == [1, 2]  # k = 3 = L/2 is its own match: left out


def planted(signal: float, L=8, windows=40, per=20, seed=0):
    """A matrix whose all-small row is constant and whose other rows are noise minus ``signal`` x a per-token gain."""
    g = torch.Generator().manual_seed(seed)
    N = windows * per
    gain = torch.rand(N, generator=g)
    losses = 3.0 + torch.randn(2 ** L, N, generator=g) * 0.1 - signal * gain
    losses[0] = 3.0  # all small: row 0 of the lexicographic order
    return constructed(losses, L=L, windows=windows)


def test_split_half_noise_gives_zero_and_a_planted_signal_a_high_value():
    noise, signal = planted(0.0), planted(1.0)
    small = signal.loss_of([SMALL] * 8)
    ci0, ci1 = split_half_ci(noise, 4, n_boot=200), split_half_ci(signal, 4, n_boot=200)
    assert abs(ci0["value"]) < 0.1 and ci0["low"] < 0 < ci0["high"]
    assert ci1["value"] > 0.9 and ci1["low"] > 0.8
    a1, b1 = split_half_difficulty(signal, 4, seed=1)
    rows = (signal.n_big == 4).nonzero().flatten()
    assert len(rows) == 70  # even: the two halves together are the whole k set
    assert torch.equal(torch.maximum(a1, b1), small - signal.losses[rows].min(0).values)
    assert not torch.equal(a1, b1)


def test_split_half_counts_the_shared_all_small_term():
    """Documented behaviour: both halves subtract from the same all-small row, so when the all-small losses vary across
    tokens and every k-big row is noise, the halves still agree (the all-small spread is real, not selection)."""
    m = planted(0.0)
    m.losses[0] = 3.0 + torch.rand(m.num_tokens, generator=torch.Generator().manual_seed(9))
    assert split_half_ci(m, 4, n_boot=50)["value"] > 0.8


def test_seed_agreement():
    rng = np.random.default_rng(0)
    x, window = rng.normal(size=400), np.repeat(np.arange(20), 20)
    assert abs(seed_agreement_ci(x, rng.normal(size=400), window, n_boot=200)["value"]) < 0.15
    assert seed_agreement_ci(x, x + 0.1 * rng.normal(size=400), window, n_boot=200)["low"] > 0.9
    with pytest.raises(ValueError, match="one length"):
        seed_agreement_ci(x, x[:-1], window)


# ----------------------------------------------------------------------------- the book's intervals

def test_selection_intervals_known_answer():
    """Every pattern equals all-big except one per budget, better by d_k on every token; placebo candidates better
    than their reference by c/10 for candidate c; the label-free oracle picks the worse rows (all-big's loss)."""
    W, per, L = 5, 4, 4
    N = W * per
    g = torch.Generator().manual_seed(0)
    big = 2.0 + torch.rand(N, generator=g)
    losses = big.expand(16, N).clone()
    m0 = constructed(losses, L=L, windows=W)
    d = {1: 0.1, 2: 0.3, 3: 0.2}
    entropy = torch.zeros(16, N)
    for k, dk in d.items():
        row = int((m0.n_big == k).nonzero()[0])
        losses[row] -= dk
        entropy[row] = 1.0  # the label-free rule avoids the better row
    m = constructed(losses, L=L, entropy=entropy, windows=W)
    ref = 1.0 + torch.rand(N, generator=g)
    placebo = PlaceboLosses(ref - torch.arange(6)[:, None] / 10, ref, m.seq, m.position, m.target, m.seq_len, L)
    out = selection_intervals(m, placebo, n_boot=100)
    ci = out["ci"]
    for k, dk in d.items():
        n = math.comb(L, k)
        assert ci[f"oracle_gain_k{k}"]["value"] == pytest.approx(dk, abs=1e-6)
        assert ci[f"placebo_gain_k{k}"]["value"] == pytest.approx((n - 1) / 10, abs=1e-6)
        assert ci[f"beyond_placebo_k{k}"]["value"] == pytest.approx(dk - (n - 1) / 10, abs=1e-6)
        assert ci[f"label_free_gain_k{k}"]["value"] == pytest.approx(0.0, abs=1e-6)
        assert out["placebo"][str(k)] == pytest.approx(math.exp(float((ref - (n - 1) / 10).double().mean())))
        assert out["label_free"][str(k)] == pytest.approx(math.exp(float(big.double().mean())))
        # constant differences: every draw gives the same value
        assert ci[f"oracle_gain_k{k}"]["low"] == pytest.approx(dk, abs=1e-6)
    assert ci["matched_k1"]["value"] == pytest.approx(d[3] - d[1], abs=1e-6)
    assert set(out["placebo"]) == {"1", "2", "3"} and "matched_k2" not in ci
    # one label per window: the window bootstrap itself; windows in two works: the same estimates
    assert selection_intervals(m, placebo, n_boot=100, clusters=list(range(W))) == out
    works = selection_intervals(m, placebo, n_boot=100, clusters=[0, 0, 0, 1, 1])
    assert works["ci"]["beyond_placebo_k2"]["value"] == pytest.approx(ci["beyond_placebo_k2"]["value"])


def test_selection_intervals_pairing_and_refusals(model):
    x = ids(batch=4)
    m = loss_matrix(model, x, entropy=True)
    p = placebo_losses(model, x, 4, drop=0.1)
    out = selection_intervals(m, p, n_boot=200)
    assert sorted(out["placebo"]) == ["1", "3"]  # C(4, 2) = 6 > 4 candidates; k = 4 = L is not reported
    ci = out["ci"]
    for k in (1, 3):
        assert ci[f"beyond_placebo_k{k}"]["value"] == pytest.approx(
            ci[f"oracle_gain_k{k}"]["value"] - ci[f"placebo_gain_k{k}"]["value"])
        assert all(c["low"] <= c["value"] <= c["high"] for c in ci.values())
    with pytest.raises(ValueError, match="placebo candidates"):
        selection_intervals(m, p, ks=[2])
    with pytest.raises(ValueError, match="different tokens"):
        selection_intervals(m, placebo_losses(model, ids(batch=3), 4, drop=0.1))
    first = (m.seq < 2).nonzero().flatten()  # a placebo on the first windows only: the matrix restricted to them
    sub = selection_intervals(m.columns(first), placebo_losses(model, x[:2], 4, drop=0.1), n_boot=50)
    assert sub["placebo"]["1"] == pytest.approx(math.exp(float(p.for_budget(1)[first].double().mean())))
    no_entropy = selection_intervals(loss_matrix(model, x), None, n_boot=50)
    assert no_entropy["label_free"] == {} and "placebo_gain_k1" not in no_entropy["ci"]


def test_cached_placebo_roundtrip(model, tmp_path, monkeypatch):
    from duolib.book import selection
    from duolib.book.selection import cached_placebo

    x = ids()
    first = cached_placebo(model, x, tmp_path, 2, drop=0.1)
    files = sorted(p.name for p in (tmp_path / "oracle").iterdir())
    assert len(files) == 2 and files[1].endswith(".sha256")
    compute = selection.placebo_losses
    monkeypatch.setattr(selection, "placebo_losses", lambda *a, **k: pytest.fail("recomputed a cached placebo"))
    again = cached_placebo(model, x, tmp_path, 2, drop=0.1)
    monkeypatch.setattr(selection, "placebo_losses", compute)
    assert torch.equal(again.losses, first.losses) and torch.equal(again.reference, first.reference)
    assert again.drop == 0.1 and again.semantics == "shared"
    other = cached_placebo(model, x, tmp_path, 2, drop=0.2)  # another drop share is another file
    assert not torch.equal(other.losses, first.losses) and len(list((tmp_path / "oracle").iterdir())) == 4
