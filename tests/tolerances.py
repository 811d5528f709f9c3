"""The one place that says how closely two different code paths must agree.

Two implementations of the same arithmetic (transformers' ``trust_remote_code`` copy vs duolib, a
static vs a dynamic cache, a retrofitted all-big model vs the original, a trie batch vs another trie
batch) agree only up to rounding, and the rounding depends on the CPU's kernels (AVX2 vs AVX-512 vs
AMX pick different blockings and reduction orders).  So they are compared with
``torch.testing.assert_close`` at the dtype's defaults (float32: rtol 1.3e-6, atol 1e-5), never
bit for bit.  Bitwise equality stays where it is the property itself: a resumed run vs an
uninterrupted one, the same computation run twice, a serialisation round trip, integer data.
"""

from __future__ import annotations

import torch


def assert_paths_close(actual, expected, msg: str | None = None) -> None:
    """``actual`` (one code path) equals ``expected`` (another) up to the dtype's default tolerance."""
    torch.testing.assert_close(actual, expected, msg=(lambda m: f"{msg}: {m}") if msg else None)


def holds(check, actual, expected) -> bool:
    """Whether the assertion ``check(actual, expected)`` passes (for conditions that combine several)."""
    try:
        check(actual, expected)
    except AssertionError:
        return False
    return True


def paths_close(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    """:func:`assert_paths_close` as a bool."""
    return holds(assert_paths_close, actual, expected)


#: The oracle engine (a trie over shared prefixes, batched and reduced in its own order) against the brute
#: force that runs every pattern separately: per-token losses agree within this many nats.  Thousands of
#: reordered float32 operations per loss; the engine's claim ("exact") is stated to this bound.
ENGINE_ATOL = 1e-4


def assert_engine_close(actual, expected, msg: str | None = None) -> None:
    """Per-token losses of the oracle engine equal the brute force's within :data:`ENGINE_ATOL` nats."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=ENGINE_ATOL,
                               msg=(lambda m: f"{msg}: {m}") if msg else None)


def engine_close(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    """:func:`assert_engine_close` as a bool."""
    return holds(assert_engine_close, actual, expected)


#: One run trained two ways (two DDP ranks vs one process, gradient accumulation vs one batch): the gradient sums
#: are reduced in another order and the gap grows with the steps.  After the few steps the tests train, losses
#: agree to TRAIN_LOSS_RTOL and weights to TRAIN_WEIGHT_RTOL (atol 1e-5).
TRAIN_LOSS_RTOL = 1e-4
TRAIN_WEIGHT_RTOL = 1e-3

#: A compiled forward (inductor fuses kernels and reorders reductions) against eager.
COMPILED_RTOL, COMPILED_ATOL = 1e-4, 1e-5
