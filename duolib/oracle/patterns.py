"""The pattern sets of the oracles: route choices parsed from names or codes, every pattern over them
(optionally with exactly ``k`` big layers), and a given pattern list validated."""

from __future__ import annotations

import numpy as np
import torch

from .. import checks
from ..routing import BIG, ROUTE_NAMES, SKIP, as_pattern, check_codes


def parse_choices(choices) -> tuple[int, ...]:
    """Route codes (sorted) from names / codes: ``"small,big"``, ``("skip", "big")``, ``[1, 2]``.

    Raises ValueError for an empty set or anything outside {skip, small, big}."""
    if isinstance(choices, str):
        choices = [c.strip() for c in choices.replace("+", ",").split(",") if c.strip()]
    items = list(choices)
    if not items:
        raise ValueError("choices is empty; allowed: a non-empty subset of {skip, small, big}")
    codes, bad = set(), []
    for c in items:
        if isinstance(c, str) and c.lower() in ROUTE_NAMES:
            codes.add(ROUTE_NAMES.index(c.lower()))
        elif isinstance(c, (int, np.integer)) and not isinstance(c, bool) and SKIP <= int(c) <= BIG:
            codes.add(int(c))
        else:
            bad.append(c)
    if bad:
        raise ValueError(f"choices {bad!r} are not a subset of {{skip, small, big}} (codes 0, 1, 2)")
    return tuple(sorted(codes))


def enumerate_patterns(num_layers: int, choices=("small", "big"), k: int | None = None) -> torch.Tensor:
    """Every pattern over ``choices`` ``[P, L]`` int8, in lexicographic code order (optionally only
    those with exactly ``k`` big layers).  ``len(choices) ** L`` rows before the ``k`` filter."""
    codes = np.array(parse_choices(choices), dtype=np.int8)
    if num_layers < 1:
        raise ValueError(f"num_layers={num_layers} must be positive")
    n = len(codes) ** num_layers
    index = np.arange(n, dtype=np.int64)
    digits = np.empty((n, num_layers), dtype=np.int8)
    for i in range(num_layers - 1, -1, -1):  # base-len(codes) digits, most significant first
        digits[:, i] = codes[index % len(codes)]
        index //= len(codes)
    if k is not None:
        k = checks.budget("k", k, num_layers)
        digits = digits[(digits == BIG).sum(1) == k]
        if len(digits) == 0:
            raise ValueError(f"no pattern over choices {[ROUTE_NAMES[c] for c in codes]} has exactly k={k} big "
                             f"layers; include 'big' in the choices")
    return torch.from_numpy(digits)


def resolve_patterns(num_layers: int, patterns=None, choices=("small", "big"), k: int | None = None
                     ) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The pattern set ``[P, L]`` int8 and its choices: ``patterns`` if given (validated; rows with
    exactly ``k`` big layers if k is given), else every pattern over ``choices`` (with ``k`` bigs)."""
    if patterns is None:
        codes = parse_choices(choices)
        return enumerate_patterns(num_layers, codes, k), codes
    if isinstance(patterns, str):
        patterns = [patterns]
    if not torch.is_tensor(patterns):
        patterns = [as_pattern(p, num_layers) for p in patterns] if len(patterns) else []
        if not patterns:
            raise ValueError("the pattern set is empty; give at least one pattern of "
                             f"{num_layers} route codes (0 skip, 1 small, 2 big)")
        patterns = torch.stack(patterns)
    if patterns.dim() != 2 or patterns.shape[1] != num_layers:
        raise ValueError(f"patterns must be [num_patterns, {num_layers}]; got shape {tuple(patterns.shape)}")
    if patterns.shape[0] == 0:
        raise ValueError(f"the pattern set is empty; give at least one pattern of {num_layers} route codes")
    check_codes(patterns, "patterns")
    patterns = patterns.to(torch.int8)
    if k is not None:
        k = checks.budget("k", k, num_layers)
        patterns = patterns[(patterns == BIG).sum(1) == k]
        if patterns.shape[0] == 0:
            raise ValueError(f"no given pattern has exactly k={k} big layers")
    return patterns, tuple(sorted(set(patterns.unique().tolist())))
