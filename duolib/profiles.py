"""Experiment profiles: every size and budget knob of the project, in one place.

``tiny`` runs in seconds (tests, nbval, Binder), ``default`` is the CPU book (12 layers like the
paper, so its oracle spaces are the paper's 2^12 / 3^12), ``paper`` is the paper's 1.4B model for
GPU users.  Each profile has a ``model`` section (the :class:`~duolib.DuoConfig` fields) and a
``train`` section (Stage-1 hyper-parameters, which the paper does not give: our choices).
"""

from __future__ import annotations

import copy

PROFILES: dict[str, dict[str, dict]] = {
    "tiny": {
        "model": dict(
            vocab_size=512,
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            big_ffn_size=256,
            small_ffn_size=16,
            max_position_embeddings=128,
        ),
        "train": dict(steps=40, batch_size=8, seq_len=64, lr=3e-3, warmup_steps=4, eval_every=20),
    },
    "default": {
        "model": dict(
            vocab_size=4096,
            hidden_size=128,
            num_hidden_layers=12,
            num_attention_heads=4,
            big_ffn_size=512,
            small_ffn_size=32,
            max_position_embeddings=256,
        ),
        "train": dict(steps=3000, batch_size=16, seq_len=128, lr=2e-3, warmup_steps=100, eval_every=250),
    },
    "paper": {
        # d 2560, 12 layers, big 4d, small big/16, 32k vocabulary, tied embeddings: 1.399B parameters.
        "model": dict(
            vocab_size=32000,
            hidden_size=2560,
            num_hidden_layers=12,
            num_attention_heads=20,
            big_ffn_size=10240,
            small_ffn_size=640,
            max_position_embeddings=2048,
        ),
        "train": dict(steps=143_000, batch_size=1024, seq_len=2048, lr=3e-4, warmup_steps=2000, eval_every=1000),
    },
}


def get_profile(name: str) -> dict[str, dict]:
    """A deep copy of profile ``name`` (``tiny``, ``default`` or ``paper``)."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; allowed: {', '.join(PROFILES)}")
    return copy.deepcopy(PROFILES[name])
