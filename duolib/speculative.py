"""Self-speculative greedy decoding [ours, beyond the paper]: one Duo model drafts for itself.

The same weights routed cheaply (all-small, a low-budget pattern, or a trained router: any ``routes``
the model accepts) propose ``draft_len`` tokens greedily, one at a time with their own KV cache; the
target routing (all-big by default) then scores the last accepted token and all drafts in one forward
with its KV cache.  The longest prefix of drafts that equals the target's own greedy choices is kept,
followed by the target's choice after it (the correction, or a bonus token when every draft held), and
both caches are cropped back to the kept tokens.  The small FFNs were trained with the big ones
(Stage-1 random routing), so the draft costs no training and no extra memory.

Each kept token is the target's argmax given the tokens before it, so the output is that of plain greedy
decoding with the target routing (``model.generate(..., do_sample=False, routes=target_routes)``).  The
one difference is floating-point order: the target scores several tokens per forward instead of one, so
its logits match plain decoding's to rounding, not bitwise; a near-tie between the top two logits could
resolve differently.  The tests check token-for-token equality.

Batch 1 only: in a batch, each row would keep a different number of drafts and the caches would need
per-row lengths.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers.cache_utils import DynamicCache

from .config import check_context


@dataclass
class SpeculativeStats:
    """What a speculative run did: ``drafted`` draft tokens proposed, ``accepted`` of them kept,
    ``verify_calls`` target forwards (the prompt's prefill included), ``draft_calls`` draft forwards,
    ``target_tokens`` / ``draft_tokens`` the token rows those forwards processed (prompt included)."""

    drafted: int = 0
    accepted: int = 0
    verify_calls: int = 0
    draft_calls: int = 0
    target_tokens: int = 0
    draft_tokens: int = 0
    accepted_per_round: list[int] = field(default_factory=list)

    @property
    def acceptance(self) -> float:
        """Share of the proposed draft tokens that the target kept (nan when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else float("nan")

    @property
    def tokens_per_verify(self) -> float:
        """New tokens per target forward after the prefill (1 for plain decoding)."""
        rounds = len(self.accepted_per_round)
        return (sum(self.accepted_per_round) + rounds) / rounds if rounds else float("nan")


def _check_inputs(model, input_ids: torch.Tensor, max_new_tokens: int, draft_len: int) -> None:
    if input_ids.dim() != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] == 0:
        raise ValueError(f"speculative decoding takes one sequence, input_ids [1, T] with T >= 1; got shape "
                         f"{tuple(input_ids.shape)} (run the rows of a batch one at a time)")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}; give at least 1")
    if draft_len < 1:
        raise ValueError(f"draft_len={draft_len}; give at least 1 draft token per round")
    check_context(model.config, input_ids.shape[1] + max_new_tokens, "prompt length + max_new_tokens")


def crop_to(cache: DynamicCache, length: int) -> None:
    """Keep the first ``length`` tokens of ``cache`` (transformers' ``crop`` takes the count to remove)."""
    extra = cache.get_seq_length() - length
    if extra < 0:
        raise ValueError(f"cannot crop a cache of {cache.get_seq_length()} tokens to {length}")
    cache.crop(-extra)


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(-1)  # [1, n]: same tie-breaking as transformers' greedy search (torch.argmax)


@torch.no_grad()
def speculative_generate(model, input_ids: torch.Tensor, max_new_tokens: int, draft_routes, draft_len: int = 4,
                         target_routes=None, eos_token_id: int | None = None
                         ) -> tuple[torch.Tensor, SpeculativeStats]:
    """Greedy decoding of ``model`` routed by ``target_routes`` (None: all-big), drafted by the same model
    routed by ``draft_routes``.  ``input_ids`` ``[1, T]``; returns the sequence ``[1, T + n]`` (n =
    ``max_new_tokens``, fewer when ``eos_token_id`` is generated: it ends the sequence) and the run's
    :class:`SpeculativeStats`.  Routes must be deterministic per token (a pattern, a per-position table,
    a router): a random policy would draw different routes on re-scored tokens."""
    _check_inputs(model, input_ids, max_new_tokens, draft_len)
    if model.training:
        raise ValueError("the model is in training mode (dropout, no KV cache in training steps); call model.eval()")
    stats = SpeculativeStats()
    target_cache, draft_cache = DynamicCache(config=model.config), DynamicCache(config=model.config)
    prompt_len = input_ids.shape[1]
    # invariant between rounds: the target cache holds seq[:-1], the draft cache a prefix of seq
    out = model(input_ids, routes=target_routes, cache=target_cache, use_cache=True, logits_to_keep=1)
    stats.verify_calls += 1
    stats.target_tokens += prompt_len
    seq = torch.cat([input_ids, _argmax(out.logits[:, -1:])], dim=1)
    while seq.shape[1] - prompt_len < max_new_tokens and int(seq[0, -1]) != eos_token_id:
        remaining = max_new_tokens - (seq.shape[1] - prompt_len)
        k = min(draft_len, remaining - 1)  # the round also yields the target's own next token
        drafts = []
        for _ in range(k):
            pending = torch.cat([seq, *drafts], dim=1)[:, draft_cache.get_seq_length():]
            out = model(pending, routes=draft_routes, cache=draft_cache, use_cache=True, logits_to_keep=1)
            stats.draft_calls += 1
            stats.draft_tokens += pending.shape[1]
            drafts.append(_argmax(out.logits[:, -1:]))
            if int(drafts[-1]) == eos_token_id:
                break
        stats.drafted += len(drafts)
        proposal = torch.cat([seq[:, -1:], *drafts], dim=1)  # [1, 1 + k']
        logits = model(proposal, routes=target_routes, cache=target_cache, use_cache=True).logits
        stats.verify_calls += 1
        stats.target_tokens += proposal.shape[1]
        choice = _argmax(logits)  # [1, 1 + k']: the target's token after each proposal token
        matches = (choice[0, :-1] == proposal[0, 1:]).long()
        kept = int(matches.cumprod(0).sum())
        stats.accepted += kept
        stats.accepted_per_round.append(kept)
        new = torch.cat([proposal[:, 1:1 + kept], choice[:, kept:kept + 1]], dim=1)
        eos = (new[0] == eos_token_id).nonzero() if eos_token_id is not None else []
        if len(eos):
            new = new[:, :int(eos[0]) + 1]
        old_len = seq.shape[1]
        seq = torch.cat([seq, new], dim=1)
        crop_to(target_cache, seq.shape[1] - 1)
        crop_to(draft_cache, min(draft_cache.get_seq_length(), old_len + kept))
    return seq[:, :prompt_len + max_new_tokens], stats
