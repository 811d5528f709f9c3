"""Self-speculative decoding: the output is plain greedy decoding's, token for token, and the acceptance counts
are those of the algorithm run without any cache."""

import pytest
import torch

from duolib import DuoConfig, DuoForCausalLM
from duolib.speculative import speculative_generate

PROMPT = 8


def model_and_prompt(preset: str, std: float = 0.1):
    # a wider init than the default (0.02) makes a random model's greedy text vary, so drafts are also rejected
    cfg = DuoConfig.preset(preset, initializer_range=std)
    torch.manual_seed(0)
    model = DuoForCausalLM(cfg).eval()
    x = torch.randint(0, cfg.vocab_size, (1, PROMPT), generator=torch.Generator().manual_seed(1))
    return model, x


def near_big(L: int) -> str:
    return "B" * (L - 1) + "S"


@pytest.mark.parametrize("preset", ["tiny", "default"])
@pytest.mark.parametrize("draft", ["all_small", "near_big"])
def test_output_equals_plain_greedy_generate(preset, draft):
    model, x = model_and_prompt(preset)
    L = model.config.num_hidden_layers
    routes = "S" * L if draft == "all_small" else near_big(L)
    n = 12
    plain = model.generate(x, do_sample=False, max_new_tokens=n)
    assert len(set(plain[0, PROMPT:].tolist())) > n // 2  # varied text, not one repeated token
    rejected = 0
    for draft_len in (1, 2, 4, n + 3):
        out, stats = speculative_generate(model, x, n, routes, draft_len)
        assert torch.equal(out, plain), (draft_len, out[0, PROMPT:].tolist(), plain[0, PROMPT:].tolist())
        rejected += stats.drafted - stats.accepted
        assert stats.verify_calls == 1 + len(stats.accepted_per_round)
    assert rejected > 0  # the corrections were exercised


def test_a_non_default_target_routing_equals_generate_with_those_routes():
    model, x = model_and_prompt("tiny")
    target = "BSBS"
    plain = model.generate(x, do_sample=False, max_new_tokens=10, routes=target)
    out, _ = speculative_generate(model, x, 10, "SSSS", 3, target_routes=target)
    assert torch.equal(out, plain)
    assert not torch.equal(out, model.generate(x, do_sample=False, max_new_tokens=10))  # the target routing mattered


@pytest.mark.parametrize("draft_len", [1, 3, 5])
def test_a_draft_routed_as_the_target_is_always_accepted(draft_len):
    model, x = model_and_prompt("tiny")
    n = 13
    out, stats = speculative_generate(model, x, n, "BBBB", draft_len)
    assert torch.equal(out, model.generate(x, do_sample=False, max_new_tokens=n))
    assert stats.acceptance == 1.0
    # the prefill gives one token; each round then keeps its draft_len drafts plus the target's next token
    rounds = -(-(n - 1) // (draft_len + 1))
    assert stats.verify_calls == 1 + rounds and stats.drafted == n - 1 - rounds
    # the target scores the prompt, then each round's last kept token and its drafts; nothing is cropped, so the
    # draft reads each token once, all but the last round's last draft and the target's token after it
    assert stats.target_tokens == PROMPT + rounds + stats.drafted
    assert stats.draft_tokens == PROMPT + n - 2


@torch.no_grad()
def reference_rounds(model, x, n, draft_routes, draft_len) -> list[int]:
    """The algorithm without caches: every choice from a full forward of the whole sequence."""
    seq, rounds = x, []

    def next_token(s, routes):
        return model(s, routes=routes, use_cache=False).logits[0, -1].argmax()

    seq = torch.cat([seq, next_token(seq, None).view(1, 1)], 1)
    while seq.shape[1] - x.shape[1] < n:
        k = min(draft_len, n - (seq.shape[1] - x.shape[1]) - 1)
        drafts = seq
        for _ in range(k):
            drafts = torch.cat([drafts, next_token(drafts, draft_routes).view(1, 1)], 1)
        kept = 0
        while kept < k and next_token(drafts[:, :seq.shape[1] + kept], None) == drafts[0, seq.shape[1] + kept]:
            kept += 1
        rounds.append(kept)
        seq = drafts[:, :seq.shape[1] + kept]
        seq = torch.cat([seq, next_token(seq, None).view(1, 1)], 1)
    return rounds


def test_acceptance_counts_equal_the_algorithm_run_without_caches():
    model, x = model_and_prompt("tiny")
    out, stats = speculative_generate(model, x, 14, "BB--", 3)
    expected = reference_rounds(model, x, 14, "BB--", 3)
    assert stats.accepted_per_round == expected
    assert 0 < stats.accepted < stats.drafted
    assert stats.acceptance == sum(expected) / stats.drafted


def test_an_end_token_ends_the_sequence_as_in_generate():
    model, x = model_and_prompt("tiny")
    plain = model.generate(x, do_sample=False, max_new_tokens=12)
    eos = int(plain[0, PROMPT + 5])
    expected = model.generate(x, do_sample=False, max_new_tokens=12, eos_token_id=eos)
    out, _ = speculative_generate(model, x, 12, "BBBS", 4, eos_token_id=eos)
    assert torch.equal(out, expected) and int(out[0, -1]) == eos and out.shape[1] < plain.shape[1]


def test_refusals_name_the_problem():
    model, x = model_and_prompt("tiny")
    with pytest.raises(ValueError, match="one sequence"):
        speculative_generate(model, x.repeat(2, 1), 4, "SSSS")
    with pytest.raises(ValueError, match="draft_len=0"):
        speculative_generate(model, x, 4, "SSSS", 0)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        speculative_generate(model, x, model.config.max_position_embeddings, "SSSS")
    with pytest.raises(ValueError, match="model.eval"):
        speculative_generate(model.train(), x, 4, "SSSS")
