"""duolib.book.analysis: knob validation, cached loss matrices, the numbers of the oracle notebooks 03-06."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from duolib import BIG, SKIP, SMALL, DuoConfig, DuoForCausalLM
from duolib.book import analysis
from duolib.oracle.engine import loss_matrix
from duolib.oracle.patterns import enumerate_patterns
from duolib.oracle.reductions import LossMatrix


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DuoForCausalLM(DuoConfig.preset("tiny")).eval()


def ids(batch=2, seq=6, seed=1):
    return torch.randint(0, 512, (batch, seq), generator=torch.Generator().manual_seed(seed))


def hand_matrix(losses, patterns, seq_len):
    losses = torch.tensor(losses, dtype=torch.float32)
    P, N = losses.shape
    B = N // (seq_len - 1)
    return LossMatrix(losses, torch.tensor(patterns, dtype=torch.int8), torch.arange(B).repeat_interleave(seq_len - 1),
                      torch.arange(seq_len - 1).repeat(B), torch.zeros(N, dtype=torch.long), seq_len)


# ----------------------------------------------------------------------------- knobs

def test_oracle_settings_defaults_and_overrides():
    s = analysis.oracle_settings("tiny")
    assert s["num_layers"] == 4 and s["beam_k"] == 2 and s["fixed_context_sequences"] == 1
    s = analysis.oracle_settings("tiny", n_sequences=6, beam_widths=[3], fixed_context_sequences=6)
    assert s["n_sequences"] == 6 and s["beam_widths"] == [3] and s["fixed_context_sequences"] == 6
    assert s["three_way_positions"] == 8 and analysis.oracle_settings("tiny", seq_len=6)["three_way_positions"] == 5


@pytest.mark.parametrize("knob, value, match", [
    ("n_sequences", 0, r"n_sequences=0 must be a whole number >= 1"),
    ("seq_len", 1000, r"seq_len=1000 must be a whole number in 2\.\.128"),
    ("beam_k", 9, r"beam_k=9 is outside 0\.\.4"),
    ("beam_widths", [0], r"beam_widths=0"),
    ("fixed_context_sequences", 5, r"fixed_context_sequences=5 must be a whole number in 1\.\.2"),
    ("n_random", 2.5, r"n_random=2\.5"),
    ("skip_beam_widths", [4, 0], r"skip_beam_widths=0"),
    ("three_way_positions", 0, r"three_way_positions=0 must be a whole number >= 1"),
    ("three_way_widths", 4, r"three_way_widths=4 must be a non-empty list"),
])
def test_oracle_settings_bad_values(knob, value, match):
    with pytest.raises(ValueError, match=match):
        analysis.oracle_settings("tiny", **{knob: value})


def test_unknown_profile():
    with pytest.raises(ValueError, match="unknown profile"):
        analysis.oracle_settings("huge")


def test_paper_budgets():
    assert analysis.paper_budgets(12) == [4, 6, 8]
    assert analysis.paper_budgets(4) == [1, 2, 3]


# ----------------------------------------------------------------------------- caching

def test_cached_loss_matrix_roundtrip(model, tmp_path):
    x = ids()
    first = analysis.cached_loss_matrix(model, x, tmp_path)
    files = list((tmp_path / "oracle").glob("matrix-shared-*.pt"))
    assert len(files) == 1
    again = analysis.cached_loss_matrix(model, x, tmp_path)
    assert torch.equal(first.losses, again.losses) and torch.equal(first.patterns, again.patterns)
    assert again.stats == first.stats and again.choices == first.choices
    assert torch.allclose(first.losses, loss_matrix(model, x).losses)
    analysis.cached_loss_matrix(model, x, tmp_path, semantics="fixed-context")
    analysis.cached_loss_matrix(model, ids(seed=2), tmp_path)
    analysis.cached_loss_matrix(model, x, tmp_path, choices=("skip", "big"), k=2)
    assert len(list((tmp_path / "oracle").glob("matrix-*.pt"))) == 4


def test_a_matrix_with_entropies_serves_the_plain_request_without_recomputing(model, tmp_path, monkeypatch):
    x = ids()
    plain = loss_matrix(model, x)
    with_h = analysis.cached_loss_matrix(model, x, tmp_path, entropy=True)  # what notebook 03 saves
    assert with_h.entropy is not None
    torch.testing.assert_close(with_h.losses, plain.losses)

    def recompute(*a, **kw):
        raise AssertionError("recomputed a matrix the cache holds")

    monkeypatch.setattr(analysis, "loss_matrix", recompute)
    got = analysis.cached_loss_matrix(model, x, tmp_path)  # what notebooks 04-07 ask for
    assert torch.equal(got.losses, with_h.losses) and torch.equal(got.patterns, with_h.patterns)
    assert len(list((tmp_path / "oracle").glob("matrix-*.pt"))) == 1
    with pytest.raises(AssertionError, match="recomputed"):  # the other way round there is nothing to reuse
        analysis.cached_loss_matrix(model, ids(seed=2), tmp_path, entropy=True)


def test_manifest_and_book_matrices(tmp_path):
    with pytest.raises(ValueError, match="run notebooks/03_oracle.ipynb first"):
        analysis.read_manifest(tmp_path)
    analysis.write_manifest(tmp_path, analysis.oracle_settings("tiny"))
    assert analysis.read_manifest(tmp_path)["seq_len"] == 16


def test_subset_sequences(model):
    m = loss_matrix(model, ids(batch=3))
    sub = analysis.subset_sequences(m, 2)
    assert sub.num_tokens == 2 * 5 and torch.equal(sub.losses, m.losses[:, :10])


# ----------------------------------------------------------------------------- reductions

def test_oracle_results_and_curves(model):
    m = loss_matrix(model, ids())
    r = analysis.oracle_results(m.summary(n_random=3, seed=0), 3)
    assert set(r) == {"all_big", "all_small", "oracle", "fixed", "best_of_random", "best_of_random_per_token"}
    assert set(r["oracle"]) == {"0", "1", "2", "3", "4"}
    assert math.isclose(r["oracle"]["2"], m.oracle(2).perplexity)
    assert math.isclose(r["all_big"], m.perplexity_of([BIG] * 4))
    df = analysis.curves_frame({"english": r})
    assert len(df) == 4 * 5 and set(df["holdout"]) == {"english"}


@pytest.mark.parametrize("choices, k", [(("small", "big"), None), (("small", "big"), 2), (("skip", "small", "big"), 1)])
def test_trie_counts_match_engine(model, choices, k):
    m = loss_matrix(model, ids(batch=1, seq=3), choices=choices, k=k)
    counts = analysis.trie_counts(enumerate_patterns(4, choices, k))
    assert counts == {key: m.stats[key] for key in ("internal_nodes", "edges", "leaves")}


def test_beam_table(model, tmp_path):
    x = ids(batch=1)
    exact = loss_matrix(model, x, semantics="fixed-context")
    df = analysis.beam_table(model, x, exact, 2, [1, 6], run_dir=tmp_path)
    assert list(df["width"]) == [1, 6] * 4
    assert list(df["proxy"]) == (["early-exit"] * 2 + ["suffix"] * 2 + ["early-exit@64"] * 2  # @M: restricted vocabulary
                                 + ["linear"] * 2)
    assert (df["gap"] >= -1e-5).all()
    assert df.loc[df["width"] == 6, "gap"].abs().max() < 1e-5  # width C(4,2) = 6: exhaustive
    again = analysis.beam_table(model, x, exact, 2, [1, 6], run_dir=tmp_path)
    pd.testing.assert_frame_equal(df, again)


def test_beam_table_over_every_pattern_with_skip(model):
    x = ids(batch=1)
    exact = loss_matrix(model, x, choices=("skip", "big"), semantics="fixed-context")
    df = analysis.beam_table(model, x, exact, None, [1, 16], proxies=("early-exit", "linear"))
    assert (df["gap"] >= -1e-5).all()
    assert df.loc[df["width"] == 16, "gap"].abs().max() < 1e-5  # width 2^4: exhaustive
    assert (df["relative_compute"] > 0).all()


def test_skip_beam_frontier_searches_skip_and_three_routes_against_their_exhaustive_oracles(model, tmp_path):
    x = {"a": ids(batch=1, seq=8, seed=2), "b": ids(batch=1, seq=8, seed=3)}
    df = analysis.skip_beam_frontier(model, x, tmp_path, k=2, widths=[1, 6, 16], three_way_positions=4,
                                     three_way_widths=[1, 81], proxies=("early-exit", "suffix"))
    assert list(dict.fromkeys(df["search"])) == ["{skip, big}, k = 2", "{skip, big}", "{skip, small, big}"]
    assert set(df["holdout"]) == {"a", "b"}
    three = df[df["search"] == "{skip, small, big}"]
    assert set(three["tokens"]) == {4} and set(df.loc[df["routes"] == "skip,big", "tokens"]) == {7}
    for h, xh in x.items():  # each search's exact column is its own exhaustive oracle
        exact = loss_matrix(model, xh[:, :5], choices=("skip", "small", "big"), semantics="fixed-context")
        assert three[three["holdout"] == h]["exact"].iloc[0] == pytest.approx(exact.oracle().perplexity, rel=1e-6)
    assert (df["gap"] >= -1e-5).all()
    exhaustive = {"{skip, big}, k = 2": 6, "{skip, big}": 16, "{skip, small, big}": 81}
    for search, wide in exhaustive.items():  # a beam as wide as the search space finds the exact oracle
        part = df[(df["search"] == search) & (df["width"] >= wide)]
        assert len(part) and part["gap"].abs().max() < 1e-5
    again = analysis.skip_beam_frontier(model, x, tmp_path, k=2, widths=[1, 6, 16], three_way_positions=4,
                                        three_way_widths=[1, 81], proxies=("early-exit", "suffix"))
    pd.testing.assert_frame_equal(df, again)  # from the run folder's caches


def test_beam_summary_reads_the_worse_holdout():
    rows = [("p", 4, "a", 0.02, 0.05), ("p", 4, "b", 0.005, 0.05),  # p@4: 2% on the worse holdout
            ("p", 8, "a", 0.008, 0.09), ("p", 8, "b", 0.009, 0.10),  # p@8: within 1%, at 0.10
            ("q", 2, "a", 0.004, 0.03), ("q", 2, "b", 0.003, 0.03),  # q@2: within 1%, cheapest
            ("q", 9, "a", 0.001, 0.5), ("q", 9, "b", 0.0, 0.5)]  # q@9: the smallest gap
    frame = pd.DataFrame(rows, columns=["proxy", "width", "holdout", "gap", "relative_compute"])
    r = analysis.beam_summary(frame)
    assert r["best"] == dict(proxy="q", width=9, gap=0.001, relative_compute=0.5)
    assert r["cheapest"] == dict(proxy="q", width=2, gap=0.004, relative_compute=0.03)
    r = analysis.beam_summary(frame[frame["proxy"] == "p"], target=0.005)
    assert r["cheapest"] is None and r["best"]["width"] == 8 and r["best"]["gap"] == 0.009


def test_big_centre_and_layer_rate():
    # 2 layers, patterns SB / BS; token 0 prefers SB (late), token 1 BS (early), token 2 SB
    m = hand_matrix([[0.1, 0.9, 0.2], [0.5, 0.3, 0.4]], [[SMALL, BIG], [BIG, SMALL]], seq_len=4)
    assert math.isclose(analysis.big_centre(m, 1), 2 / 3)
    assert np.allclose(analysis.layer_rate(m, 1), [1 / 3, 2 / 3])
    with pytest.raises(ValueError, match="k=0"):
        analysis.big_centre(m, 0)


def test_skip_fraction_polarised():
    # 3 layers {big, skip}, one skipped: every token's best skips the middle layer
    pats = [[SKIP, BIG, BIG], [BIG, SKIP, BIG], [BIG, BIG, SKIP]]
    m = hand_matrix([[1.0, 1.0], [0.1, 0.2], [2.0, 2.0]], pats, seq_len=3)
    assert np.allclose(analysis.layer_rate(m, 2, SKIP), [0, 1, 0])


def test_loss_by_position():
    m = hand_matrix([[1.0, 2.0, 3.0, 4.0]], [[BIG]], seq_len=5)
    red = m.oracle()
    df = analysis.loss_by_position(m, {"x": red}, bins=2)
    assert list(df["loss"]) == [1.5, 3.5]


# ----------------------------------------------------------------------------- difficulty

def test_spearman_and_high_loss_low_gain():
    x = np.arange(10.0)
    assert math.isclose(analysis.spearman(x, x ** 3), 1.0)
    assert math.isclose(analysis.spearman(x, -x), -1.0)
    loss = np.arange(8.0)  # top quarter: tokens 6, 7
    gain = np.array([5, 5, 5, 5, 5, 5, 0, 9.0])  # bottom quarter of gain: value 0 ... (q25 = 5)
    assert analysis.high_loss_low_gain_fraction(loss, gain) == 0.5
    assert analysis.high_loss_low_gain_fraction(loss, loss) == 0.0


def test_difficulty_frame_and_passage(model):
    class Tok:
        def decode(self, ids):
            return "".join(f"<{i}>" for i in ids)

    x = ids()
    m = loss_matrix(model, x)
    df = analysis.difficulty_frame(m, 2, x, Tok())
    assert np.allclose(df["loss"], df["loss_big"])
    assert np.allclose(df["difficulty"], df["loss_small"] - m.oracle(2).token_losses.numpy())
    assert df["context"].iloc[0] == f"<{int(x[0, 0])}>"
    assert df["context"].iloc[7] == Tok().decode(x[1, :3].tolist())  # seq 1, position 2
    tokens, values = analysis.passage(df, x, 1, Tok(), "difficulty")
    assert len(tokens) == 6 and math.isnan(values[0]) and tokens[1] == f"<{int(x[1, 1])}>"


def test_label_means():
    df = pd.DataFrame({"label_name": ["easy", "easy", "noise"], "difficulty": [1.0, 3.0, 0.5]})
    assert analysis.label_means(df) == {"easy": 2.0, "compute": pytest.approx(math.nan, nan_ok=True), "noise": 0.5}




def test_synthetic_run_trains_with_the_replicas_seed(tmp_path, monkeypatch):
    """Each training seed of the book trains its own synthetic model (06): the seed reaches TrainConfig."""
    seen = []

    def fake_train(cfg, out):
        seen.append(cfg.seed)
        raise RuntimeError("stop")  # the config is what this test reads

    monkeypatch.setattr(analysis, "train", fake_train)
    for seed in (0, 2):
        with pytest.raises(RuntimeError, match="stop"):
            analysis.synthetic_run("tiny", tmp_path / f"s{seed}", steps=2, seed=seed)
    assert seen == [0, 2]
    with pytest.raises(ValueError, match="seed"):
        analysis.synthetic_run("tiny", tmp_path, steps=2, seed=-1)
