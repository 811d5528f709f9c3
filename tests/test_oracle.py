"""Stage-2 oracles: the trie engine equals brute force, reductions equal hand computations, beam
search, the difficulty table, distributed sharding, the CLI and bad input."""

import json
import math
import socket

import pandas as pd
import pytest
import torch

from duolib import BIG, SKIP, SMALL, DuoConfig, DuoForCausalLM
from duolib import cli
from duolib.oracle.beam import beam_oracle, linearize
from duolib.oracle.brute_force import brute_force_flops, brute_force_loss_matrix, trie_flops
from duolib.oracle.engine import loss_matrix
from duolib.oracle.patterns import enumerate_patterns, parse_choices, resolve_patterns
from duolib.oracle.difficulty import token_difficulty
from duolib.oracle.reductions import LossMatrix
from duolib.oracle.schedules import budget_schedule
from duolib.oracle.setup import oracle_setup
from tolerances import assert_engine_close, assert_paths_close, paths_close

CHOICES = {"small-big": ("small", "big"), "skip-big": ("skip", "big"), "all": ("skip", "small", "big")}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DuoForCausalLM(DuoConfig.preset("tiny")).eval()


@pytest.fixture(scope="module")
def gqa_model():
    torch.manual_seed(1)
    return DuoForCausalLM(DuoConfig.preset("tiny", num_key_value_heads=2)).eval()


def ids(batch=2, seq=7, vocab=512, seed=1):
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- engine == brute force

@pytest.mark.parametrize("semantics", ["shared", "fixed-context"])
@pytest.mark.parametrize("choices", list(CHOICES))
def test_trie_equals_brute_force_every_pattern(model, semantics, choices):
    x = ids()
    # max_rows=30: two nodes per group, so chunking and the per-route batching are exercised
    trie = loss_matrix(model, x, choices=CHOICES[choices], semantics=semantics, max_rows=30, leaf_rows=7)
    brute = brute_force_loss_matrix(model, x, choices=CHOICES[choices], semantics=semantics)
    assert trie.losses.shape == (len(CHOICES[choices]) ** 4, 2 * 6)
    assert torch.equal(trie.patterns, brute.patterns)
    assert_engine_close(trie.losses, brute.losses)
    assert trie.stats["leaves"] == trie.num_patterns


def test_fixed_context_with_grouped_query_attention_and_other_references(gqa_model):
    x = ids(seq=6)
    for reference in ("small", [BIG, SKIP, SMALL, BIG],
                      torch.randint(0, 3, (2, 6, 4), generator=torch.Generator().manual_seed(4))):
        trie = loss_matrix(gqa_model, x, choices="skip,big", semantics="fixed-context", reference=reference)
        brute = brute_force_loss_matrix(gqa_model, x, choices="skip,big", semantics="fixed-context",
                                        reference=reference)
        assert_engine_close(trie.losses, brute.losses)
    shared = loss_matrix(gqa_model, x, choices="skip,small,big")
    assert_engine_close(shared.losses, brute_force_loss_matrix(gqa_model, x, choices="skip,small,big").losses)


def test_semantics_agree_on_the_reference_and_at_the_first_token(model):
    x = ids()
    shared, fixed = (loss_matrix(model, x, semantics=s) for s in ("shared", "fixed-context"))
    big = shared.pattern_index("BBBB")
    assert_paths_close(shared.losses[big], fixed.losses[big])  # the context route is the pattern
    first = shared.position == 0  # nothing to attend to but itself
    assert_paths_close(shared.losses[:, first], fixed.losses[:, first])
    assert (shared.losses - fixed.losses).abs().max() > 1e-4  # elsewhere the context matters


def test_explicit_patterns_keep_their_order_and_duplicates(model):
    x = ids()
    given = ["BS-B", "SSSS", "BS-B", "-BBS"]
    trie = loss_matrix(model, x, given)
    brute = brute_force_loss_matrix(model, x, given)
    assert_engine_close(trie.losses, brute.losses)
    assert torch.equal(trie.losses[0], trie.losses[2]) and trie.stats["leaves"] == 3
    assert trie.choices == (SKIP, SMALL, BIG)


def test_exact_k_matrix_and_flop_ledger(model):
    x = ids()
    m = loss_matrix(model, x, k=2)
    assert m.num_patterns == 6 and (m.n_big == 2).all()
    full = loss_matrix(model, x)
    for p in range(m.num_patterns):
        assert_paths_close(m.losses[p], full.loss_of(m.patterns[p]))  # two tries, two batchings
    counts = full.stats
    assert counts["internal_nodes"] == 1 + 2 + 4 + 8 and counts["leaves"] == 16
    assert counts["edges"] == {"skip": 0, "small": 15, "big": 15}
    assert brute_force_flops(model.config, full.patterns, 2, 7) > 2 * trie_flops(model.config, counts, 2, 7)


# ----------------------------------------------------------------------------- reductions by hand

def hand_matrix():
    """L = 2 over {small, big}: rows SS, SB, BS, BB (k = 0, 1, 1, 2); 2 sequences of T = 3 (N = 4)."""
    patterns = enumerate_patterns(2, "small,big")
    losses = torch.tensor([[4.0, 4.0, 4.0, 4.0],   # SS
                           [1.0, 5.0, 2.0, 6.0],   # SB  mean 3.5
                           [3.0, 2.0, 3.0, 2.0],   # BS  mean 2.5
                           [2.0, 3.0, 1.0, 1.0]])  # BB  mean 1.75
    return LossMatrix(losses, patterns, seq=torch.tensor([0, 0, 1, 1]), position=torch.tensor([0, 1, 0, 1]),
                      target=torch.tensor([5, 6, 7, 8]), seq_len=3)


def test_enumeration_order():
    assert enumerate_patterns(2, "small,big").tolist() == [[SMALL, SMALL], [SMALL, BIG], [BIG, SMALL], [BIG, BIG]]
    assert len(enumerate_patterns(12, "skip,small,big")) == 3 ** 12
    assert len(enumerate_patterns(12, "small,big", k=6)) == 924


def test_oracle_and_fixed_by_hand():
    m = hand_matrix()
    o1 = m.oracle(1)
    assert o1.token_losses.tolist() == [1.0, 2.0, 2.0, 2.0]
    assert o1.winners.tolist() == [1, 2, 1, 2]
    assert o1.perplexity == pytest.approx(math.exp(7 / 4))
    assert m.oracle().token_losses.tolist() == [1.0, 2.0, 1.0, 1.0]
    f1 = m.fixed(1)
    assert f1.info["pattern"] == "BS" and f1.token_losses.tolist() == [3.0, 2.0, 3.0, 2.0]
    assert m.fixed().info["pattern"] == "BB" and m.fixed(0).mean_loss == 4.0


def test_best_of_random_by_hand():
    m = hand_matrix()
    every = m.best_of_random(n=100, seed=3)  # more than exist: all 4 patterns
    assert every["token"].info["n_used"] == 4
    assert torch.equal(every["token"].token_losses, m.oracle().token_losses)
    assert torch.equal(every["pattern"].token_losses, m.fixed().token_losses)
    two = m.best_of_random(n=2, seed=7)
    chosen = torch.randperm(4, generator=torch.Generator().manual_seed(7))[:2]
    assert torch.equal(two["token"].token_losses, m.losses[chosen].min(0).values)
    assert torch.equal(two["pattern"].token_losses, m.losses[chosen[m.losses[chosen].mean(1).argmin()]])
    assert torch.equal(m.best_of_random(n=2, seed=7)["token"].winners, two["token"].winners)  # seeded
    at_k1 = m.best_of_random(n=1, seed=0, k=1)["pattern"]
    assert at_k1.info["pattern"] in ("SB", "BS")


def test_schedule_by_hand():
    m = hand_matrix()
    red = m.schedule_oracle([2, 1, 0])  # length T; position 0 -> k 2 (BB), position 1 -> k 1 (SB or BS)
    assert red.token_losses.tolist() == [2.0, 2.0, 1.0, 2.0]
    assert red.winners.tolist() == [3, 2, 3, 2]
    same = m.schedule_oracle([2, 1])  # length T - 1
    assert torch.equal(same.token_losses, red.token_losses)


def test_budget_schedules():
    assert budget_schedule("falling", 12, 5).tolist() == [6, 5, 4, 3, 2]
    assert budget_schedule("rising", 12, 5).tolist() == [2, 3, 4, 5, 6]
    assert budget_schedule("constant", 12, 5).tolist() == [4] * 5
    assert budget_schedule("falling", 4, 3).tolist() == [2, 2, 1]  # 6 * 4/12 = 2 down to round(2/3) = 1
    assert budget_schedule("falling", 12, 129).double().mean() == pytest.approx(4.0)


def test_winner_usage_and_summary_by_hand():
    m = hand_matrix()
    usage = m.winner_usage(1)  # winners SB, BS, SB, BS: positions 0 -> SB, 1 -> BS
    assert usage.tolist() == [[0.0, 1.0], [1.0, 0.0]]
    s = m.summary(n_random=2)
    assert s["per_k"]["1"]["oracle"] == pytest.approx(math.exp(7 / 4))
    assert s["uniform"]["all_big"] == pytest.approx(math.exp(1.75))
    assert s["uniform"]["all_small"] == pytest.approx(math.exp(4.0))
    json.dumps(s)


def test_skip_study_summary(model):
    m = loss_matrix(model, ids(), choices="skip,big")
    s = m.summary()
    assert s["skip_study"]["n_skip"] == 2 and len(s["skip_study"]["skip_fraction_per_layer"]) == 4
    assert s["skip_study"]["oracle"] == pytest.approx(m.oracle(2).perplexity)
    assert s["skip_study"]["early_exit"] == pytest.approx(m.perplexity_of("BB--"))
    assert s["skip_study"]["oracle"] <= s["skip_study"]["early_exit"] + 1e-9


def test_token_difficulty_table(model):
    x = ids()
    labels = torch.arange(14).view(2, 7) % 4

    class Tok:
        def decode(self, token_ids):
            return f"<{token_ids[0]}>"

    m = loss_matrix(model, x)
    table = token_difficulty(m, 2, tokenizer=Tok(), labels=labels, label_names=("other", "easy", "compute", "noise"))
    assert len(table) == 12 and table["token"][0] == f"<{int(x[0, 1])}>"
    assert (table["difficulty"] - (table["loss_small"] - table["loss_oracle"])).abs().max() < 1e-6  # one computation
    assert (table["loss_small"].to_numpy() == m.loss_of("SSSS").numpy()).all()
    assert (table["small_minus_big"] - (table["loss_small"] - table["loss_big"])).abs().max() < 1e-6
    assert table["label"].tolist() == labels[:, 1:].reshape(-1).tolist()  # the predicted token's label
    assert table["label_name"][0] == "easy"
    assert (table["loss_oracle"].to_numpy() <= m.losses[m.n_big == 2].min(0).values.numpy() + 1e-7).all()


# ----------------------------------------------------------------------------- beam search

@pytest.mark.parametrize("semantics", ["shared", "fixed-context"])
def test_beam_search_is_exact_when_wide_and_never_beats_the_oracle(model, semantics):
    x = ids()
    m = loss_matrix(model, x, choices="skip,small,big", semantics=semantics)
    for k in (None, 2):
        exact = m.oracle(k)
        for proxy in ("early-exit", "suffix") + (("linear",) if semantics == "fixed-context" else ()):
            wide = beam_oracle(model, x, 27, choices="skip,small,big", k=k, semantics=semantics, proxy=proxy)
            assert_paths_close(wide.token_losses, exact.token_losses)
            narrow = beam_oracle(model, x, 1, choices="skip,small,big", k=k, semantics=semantics, proxy=proxy)
            assert (narrow.token_losses >= exact.token_losses - 1e-5).all()
            if k is not None:
                assert ((narrow.patterns == BIG).sum(1) == k).all()
            found = torch.stack([m.losses[m.pattern_index(p), n] for n, p in enumerate(narrow.patterns)])
            assert_paths_close(found, narrow.token_losses)  # the reported pattern has that loss
            assert narrow.cost["flops"] < wide.cost["flops"]
    cheap = beam_oracle(model, x, 27, choices="skip,small,big", semantics=semantics, proxy_vocab=8)
    assert_paths_close(cheap.token_losses, m.oracle().token_losses)  # wide: the proxy does not matter
    full_vocab = beam_oracle(model, x, 2, choices="skip,small,big", semantics=semantics, proxy_vocab=512)
    plain = beam_oracle(model, x, 2, choices="skip,small,big", semantics=semantics)
    assert torch.equal(full_vocab.patterns, plain.patterns)  # top-V restricted == the whole vocabulary
    restricted = beam_oracle(model, x, 2, choices="skip,small,big", semantics=semantics, proxy_vocab=8)
    assert restricted.cost["flops"] < plain.cost["flops"] and restricted.cost["proxy_rows"] > 0


def test_linear_proxy_gradients_equal_autograd_of_the_models_own_forward(model):
    """Under an all-big reference the fixed-context path of every token is the model's all-big forward,
    and token n's loss depends on its own state at layer i only along its own path: d loss_n / d h_{n,i}
    of the ordinary forward is the linear proxy's g_i."""
    x = ids(batch=2, seq=9)
    L = model.config.num_hidden_layers
    setup = oracle_setup(model, x, "fixed-context", "big")
    states, ref_loss, grads = linearize(model, setup, torch.full((L,), BIG))
    with torch.enable_grad():
        out = model(x, routes=torch.full((L,), BIG), labels=x, return_token_losses=True, output_hidden_states=True,
                    use_cache=False)
        token_losses, hidden = out.token_losses, out.hidden_states  # [B, T-1], L + 1 states
        assert_paths_close(ref_loss.view_as(token_losses), token_losses)
        for b, n in [(0, 0), (0, 4), (1, 7)]:
            g = torch.autograd.grad(token_losses[b, n], hidden[1:L], retain_graph=True)
            for i in range(L - 1):
                assert_paths_close(states[i][0, b, n], hidden[i + 1][b, n])
                assert torch.allclose(grads[i][0, b, n], g[i][b, n], atol=1e-6, rtol=1e-4), (i, b, n)
                assert grads[i][0, b, n].abs().max() > 0
    lin = beam_oracle(model, x, 2, k=2, semantics="fixed-context", proxy="linear")
    suffix = beam_oracle(model, x, 2, k=2, semantics="fixed-context", proxy="suffix")
    assert lin.cost["flops"] < suffix.cost["flops"] and lin.cost["linearization_rows"] == x.numel() - 2


def test_linear_proxy_refuses_shared_semantics_and_a_restricted_vocabulary(model):
    with pytest.raises(ValueError, match="fixed-context"):
        beam_oracle(model, ids(), 2, semantics="shared", proxy="linear")
    with pytest.raises(ValueError, match="proxy_vocab"):
        beam_oracle(model, ids(), 2, semantics="fixed-context", proxy="linear", proxy_vocab=8)


# ----------------------------------------------------------------------------- distributed

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        torch.manual_seed(0)
        m = DuoForCausalLM(DuoConfig.preset("tiny")).eval()
        out = loss_matrix(m, ids(batch=3), semantics="fixed-context", distributed=True)
        ent = loss_matrix(m, ids(batch=3), semantics="fixed-context", distributed=True, entropy=True)
        if rank == 0:
            torch.save({"losses": out.losses, "entropy": ent.entropy, "no_entropy": out.entropy}, path)
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_equals_single_process(model, tmp_path):
    import torch.multiprocessing as mp

    path = tmp_path / "losses.pt"
    mp.spawn(_worker, args=(2, _free_port(), str(path)), nprocs=2, join=True)
    single = loss_matrix(model, ids(batch=3), semantics="fixed-context")
    with_entropy = loss_matrix(model, ids(batch=3), semantics="fixed-context", entropy=True)
    got = torch.load(path)
    assert paths_close(got["losses"], single.losses) and got["no_entropy"] is None
    assert_paths_close(got["entropy"], with_entropy.entropy)


# ----------------------------------------------------------------------------- CLI

def test_cli_oracle_writes_a_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["oracle", "--random-init", "--profile", "tiny", "--out", str(out), "--n-sequences", "2",
                     "--seq-len", "6", "--semantics", "both", "--no-progress", "--save-matrix"]) == 0
    for sem in ("shared", "fixed-context"):
        folder = out / "random" / sem
        for name in ("summary.json", "per_k.csv", "patterns.csv", "usage.csv", "difficulty.parquet", "losses.npy"):
            assert (folder / name).is_file(), name
        s = json.loads((folder / "summary.json").read_text())
        assert s["semantics"] == sem and s["num_patterns"] == 16 and s["difficulty_k"] == 2
        assert len(pd.read_parquet(folder / "difficulty.parquet")) == 10
    assert "random/shared" in json.loads((out / "summary.json").read_text())["results"]
    assert cli.main(["oracle", "--profile", "tiny", "--out", str(out)]) == 1  # neither --model nor --random-init
    assert "exactly one of --model" in capsys.readouterr().err


# ----------------------------------------------------------------------------- bad input

def test_bad_input_raises_clear_errors(model):
    x = ids()
    with pytest.raises(ValueError, match=r"k=5 is outside 0\.\.4"):
        loss_matrix(model, x, k=5)
    with pytest.raises(ValueError, match=r"k=-1 is outside 0\.\.4"):
        loss_matrix(model, x, k=-1)
    with pytest.raises(ValueError, match=r"k=3 is outside 0\.\.2"):
        hand_matrix().oracle(3)
    with pytest.raises(ValueError, match="pattern set is empty"):
        loss_matrix(model, x, [])
    with pytest.raises(ValueError, match="pattern set is empty"):
        resolve_patterns(4, torch.zeros(0, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\['medium'\] are not a subset of \{skip, small, big\}"):
        loss_matrix(model, x, choices=("small", "medium"))
    with pytest.raises(ValueError, match="choices is empty"):
        parse_choices([])
    with pytest.raises(ValueError, match=r"schedule has length 5 but the sequences have 3 tokens"):
        hand_matrix().schedule_oracle([1, 1, 1, 1, 1])
    with pytest.raises(ValueError, match=r"budget at position 1=3 is outside 0\.\.2"):
        hand_matrix().schedule_oracle([1, 3, 1])
    with pytest.raises(ValueError, match="semantics='causal' is unknown; allowed: shared, fixed-context"):
        loss_matrix(model, x, semantics="causal")
    with pytest.raises(ValueError, match="width=0 must be a positive integer"):
        beam_oracle(model, x, 0)
    with pytest.raises(ValueError, match="proxy='oracle' is unknown"):
        beam_oracle(model, x, 2, proxy="oracle")
    with pytest.raises(ValueError, match="proxy_vocab=0 must be a positive number"):
        beam_oracle(model, x, 2, proxy_vocab=0)
    with pytest.raises(ValueError, match="pattern has length 3 but the model has 4 layers"):
        loss_matrix(model, x, ["BBB"])
    with pytest.raises(ValueError, match="unknown schedule 'wavy'"):
        budget_schedule("wavy", 12, 10)
    with pytest.raises(ValueError, match="seq_len >= 2"):
        loss_matrix(model, x[:, :1])
    with pytest.raises(ValueError, match="no pattern over choices"):
        enumerate_patterns(4, "small", k=2)
