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


def paths_close(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    """:func:`assert_paths_close` as a bool."""
    try:
        assert_paths_close(actual, expected)
    except AssertionError:
        return False
    return True
