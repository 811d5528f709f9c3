"""Route codes, routing policies and routing traces.

Every token, at every layer, has its FFN slot served by one of three routes::

    SKIP = 0   identity residual, no FFN compute
    SMALL = 1  the small SwiGLU FFN
    BIG = 2    the big SwiGLU FFN

A *pattern* is one route per layer (length L).  The model accepts, as ``routes``:

- a pattern (list / tuple / 1-D tensor of L codes, or a string such as ``"BBSS-..."`` with
  ``B``/``S``/``-`` for big / small / skip): every token takes that pattern;
- a tensor ``[batch, seq, L]`` of codes, one pattern per token;
- a :class:`RoutingPolicy`, asked layer by layer (fixed, random, per-position, trained routers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

SKIP, SMALL, BIG = 0, 1, 2
ROUTE_NAMES = ("skip", "small", "big")
_CHAR_CODES = {"-": SKIP, "S": SMALL, "B": BIG}


def check_codes(codes: torch.Tensor, what: str = "routes") -> None:
    """Raise ValueError if ``codes`` holds anything but SKIP, SMALL, BIG."""
    if codes.dtype.is_floating_point or codes.dtype == torch.bool:
        raise ValueError(f"{what} must hold integer route codes 0 (skip), 1 (small), 2 (big); got dtype {codes.dtype}")
    if codes.numel() and (codes.min() < SKIP or codes.max() > BIG):
        bad = codes[(codes < SKIP) | (codes > BIG)].unique().tolist()
        raise ValueError(f"{what} contain route codes {bad}; allowed: 0 (skip), 1 (small), 2 (big)")


def as_pattern(pattern: Sequence[int] | str | torch.Tensor, num_layers: int) -> torch.Tensor:
    """A validated pattern as a 1-D long tensor of length ``num_layers``."""
    if isinstance(pattern, str):
        unknown = sorted(set(pattern) - set(_CHAR_CODES))
        if unknown:
            raise ValueError(f"pattern {pattern!r} has characters {unknown}; allowed: 'B' big, 'S' small, '-' skip")
        pattern = [_CHAR_CODES[c] for c in pattern]
    codes = torch.as_tensor(pattern)
    if codes.dim() != 1:
        raise ValueError(f"a pattern must be 1-D (one route per layer); got shape {tuple(codes.shape)}")
    if codes.numel() != num_layers:
        raise ValueError(f"pattern has length {codes.numel()} but the model has {num_layers} layers")
    check_codes(codes, "pattern")
    return codes.long()


def pattern_to_str(pattern: Sequence[int] | torch.Tensor) -> str:
    """``[2, 1, 0]`` -> ``"BS-"``."""
    chars = {v: k for k, v in _CHAR_CODES.items()}
    return "".join(chars[int(c)] for c in pattern)


class RoutingPolicy:
    """Chooses routes layer by layer during a forward pass.

    ``route_layer`` gets the layer index, the normalised hidden state entering the FFN slot
    ``[batch, seq, d]`` and the absolute positions ``[batch, seq]``, and returns either hard codes
    ``[batch, seq]`` (long) or soft probabilities ``[batch, seq, 3]`` over (skip, small, big)
    (float; the model then mixes the module outputs, as router training does).
    """

    def route_layer(self, layer_idx: int, hidden_states: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def uniform_code(self, layer_idx: int) -> int | None:
        """The one code every token takes at ``layer_idx`` when the policy knows it without looking at the
        tokens (the model then runs that module on all rows, with no routing tensor to read back), else None."""
        return None


class FixedRoutes(RoutingPolicy):
    """Every token takes the same pattern."""

    def __init__(self, pattern: Sequence[int] | str | torch.Tensor, num_layers: int | None = None):
        n = len(pattern) if num_layers is None else num_layers
        self.pattern = as_pattern(pattern, n)
        self.codes = [int(c) for c in self.pattern]

    def route_layer(self, layer_idx, hidden_states, position_ids):
        return torch.full(hidden_states.shape[:2], self.codes[layer_idx], dtype=torch.long, device=hidden_states.device)

    def uniform_code(self, layer_idx: int) -> int:
        return self.codes[layer_idx]

    def __repr__(self):
        return f"FixedRoutes({pattern_to_str(self.pattern)!r})"


def random_route_codes(u: torch.Tensor, p_big: float, p_skip: float = 0.0) -> torch.Tensor:
    """The random-route rule: route codes (long, shape of ``u``) from uniform draws ``u`` in [0, 1):
    big if ``u < p_big``, skip if ``p_big <= u < p_big + p_skip``, small otherwise."""
    codes = torch.full_like(u, SMALL, dtype=torch.long)
    codes[u < p_big] = BIG
    codes[(u >= p_big) & (u < p_big + p_skip)] = SKIP
    return codes


def _seed64(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def training_routes(seed: int, step: int, rows: Iterable[int], seq_len: int, num_layers: int,
                    p_big: float, p_skip: float = 0.0, stream: int = 0) -> torch.Tensor:
    """Random routes ``[len(rows), seq_len, num_layers]`` of the given global batch rows at ``step``.

    Row ``r`` draws ``u ~ U[0, 1)^(seq_len x L)`` from a generator seeded by ``(seed, stream, step, r)``:
    big if ``u < p_big``, skip if ``p_big <= u < p_big + p_skip``, small otherwise (the rule of
    :class:`~duolib.routing.RandomRoutes`).  Independent of how rows are spread over processes.
    ``stream`` separates training (0) from evaluation (1) draws.
    """
    out = []
    for r in rows:
        g = torch.Generator().manual_seed(_seed64(seed, stream, step, r))
        out.append(random_route_codes(torch.rand((seq_len, num_layers), generator=g), p_big, p_skip))
    return torch.stack(out)


class RandomRoutes(RoutingPolicy):
    """Stage-1 random routing: each token, at each layer, independently big with probability
    ``p_big``, skip with ``p_skip``, small otherwise.  Draws come from ``generator`` (seeded for
    reproducibility) on the CPU, then move to the hidden state's device."""

    def __init__(self, p_big: float = 0.5, p_skip: float = 0.0, generator: torch.Generator | None = None,
                 seed: int | None = None):
        if not (0.0 <= p_big <= 1.0 and 0.0 <= p_skip <= 1.0 and p_big + p_skip <= 1.0 + 1e-9):
            raise ValueError(f"p_big={p_big}, p_skip={p_skip}: each must lie in [0, 1] and their sum must be <= 1")
        self.p_big, self.p_skip = float(p_big), float(p_skip)
        if generator is None:
            generator = torch.Generator()
            if seed is not None:
                generator.manual_seed(seed)
        self.generator = generator

    def route_layer(self, layer_idx, hidden_states, position_ids):
        u = torch.rand(hidden_states.shape[:2], generator=self.generator, device=self.generator.device)
        return random_route_codes(u, self.p_big, self.p_skip).to(hidden_states.device)

    def __repr__(self):
        return f"RandomRoutes(p_big={self.p_big}, p_skip={self.p_skip})"


class PositionRoutes(RoutingPolicy):
    """Routes by absolute position: ``table[position]`` is that position's pattern ``[n_positions, L]``.

    Deterministic per token, so it works with the KV cache; budget schedules along the sequence
    (e.g. 6 big layers early falling to 2) are tables of this kind.
    """

    def __init__(self, table: torch.Tensor):
        table = torch.as_tensor(table)
        if table.dim() != 2:
            raise ValueError(f"table must be [n_positions, num_layers]; got shape {tuple(table.shape)}")
        check_codes(table, "table")
        self.table = table.long()

    def route_layer(self, layer_idx, hidden_states, position_ids):
        if int(position_ids.max()) >= self.table.shape[0]:
            raise ValueError(
                f"position {int(position_ids.max())} is beyond the routing table ({self.table.shape[0]} positions)"
            )
        column = self.table[:, layer_idx].to(hidden_states.device)
        return column[position_ids].expand(hidden_states.shape[:2])


class TokenRoutes(RoutingPolicy):
    """Explicit per-token routes ``[batch, seq, L]``.  If ``seq`` covers the whole sequence while
    the model runs on a suffix (KV-cache decoding), rows are picked by absolute position."""

    def __init__(self, routes: torch.Tensor):
        check_codes(routes)
        if routes.dim() != 3:
            raise ValueError(f"per-token routes must be [batch, seq, num_layers]; got shape {tuple(routes.shape)}")
        self.routes = routes.long()

    def route_layer(self, layer_idx, hidden_states, position_ids):
        batch, seq = hidden_states.shape[:2]
        per_layer = self.routes[..., layer_idx].to(hidden_states.device)  # [B, S]
        if per_layer.shape[1] == seq:
            return per_layer
        return torch.gather(per_layer, 1, position_ids.expand(batch, seq))


class CheckpointReplay(RoutingPolicy):
    """``policy`` as gradient-checkpointed layers see it: when the backward pass recomputes a layer,
    a random policy draws from its generator's state of the first run (restored afterwards), so the
    recomputation takes the same routes and later draws are those of a plain run.  Global-RNG draws
    are replayed by ``torch.utils.checkpoint`` itself; deterministic policies pass through."""

    def __init__(self, policy: RoutingPolicy):
        self.policy, self.states = policy, {}

    def uniform_code(self, layer_idx: int) -> int | None:
        return self.policy.uniform_code(layer_idx)

    def route_layer(self, layer_idx, hidden_states, position_ids):
        generator = getattr(self.policy, "generator", None)
        if not isinstance(generator, torch.Generator):
            return self.policy.route_layer(layer_idx, hidden_states, position_ids)
        if layer_idx not in self.states:
            self.states[layer_idx] = generator.get_state()
            return self.policy.route_layer(layer_idx, hidden_states, position_ids)
        now = generator.get_state()
        generator.set_state(self.states[layer_idx])
        try:
            return self.policy.route_layer(layer_idx, hidden_states, position_ids)
        finally:
            generator.set_state(now)


def check_token_ids(input_ids: torch.Tensor, vocab_size: int) -> None:
    """ValueError for an empty batch or a token id outside ``0..vocab_size-1``.  The id range is checked
    on CPU tensors only: on an accelerator it would wait for the device at every forward pass."""
    if input_ids.numel() == 0:
        raise ValueError(f"input_ids is empty (shape {tuple(input_ids.shape)}); give at least one token per sequence")
    # a compiled graph cannot branch on token values (torch.compile(fullgraph=True) would fail); eager calls check
    if input_ids.device.type == "cpu" and not torch.compiler.is_compiling():
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"input_ids holds token id {hi if hi >= vocab_size else lo}, outside the model's "
                             f"vocabulary 0..{vocab_size - 1}; tokenise with the model's own tokenizer")


def make_policy(routes, batch_size: int, seq_len: int, num_layers: int, default: RoutingPolicy) -> RoutingPolicy:
    """Turn the ``routes`` argument of ``forward`` into a policy, validating shapes and codes."""
    if routes is None:
        return default
    if isinstance(routes, FixedRoutes) and len(routes.pattern) != num_layers:
        raise ValueError(f"FixedRoutes pattern {pattern_to_str(routes.pattern)!r} has {len(routes.pattern)} routes but "
                         f"the model has {num_layers} layers; give one route per layer")
    if isinstance(routes, RoutingPolicy):
        return routes
    if isinstance(routes, str) or (not torch.is_tensor(routes) and not hasattr(routes, "shape")):
        return FixedRoutes(routes, num_layers)
    routes = torch.as_tensor(routes)
    if routes.dim() == 1:
        return FixedRoutes(routes, num_layers)
    if routes.dim() != 3:
        raise ValueError(
            f"routes tensor must be a pattern [num_layers] or per-token [batch, seq, num_layers]; "
            f"got shape {tuple(routes.shape)}"
        )
    if routes.shape[0] != batch_size or routes.shape[2] != num_layers or routes.shape[1] < seq_len:
        raise ValueError(
            f"routes tensor has shape {tuple(routes.shape)} but the input needs [{batch_size}, {seq_len}, {num_layers}] "
            f"(batch, seq, num_layers)"
        )
    return TokenRoutes(routes)


@dataclass
class RoutingTrace:
    """The routes a forward pass actually took.

    routes: ``[batch, seq, L]`` long codes (for soft routing: the argmax option).
    probs:  ``[batch, seq, L, 3]`` option probabilities when a policy routed softly, else None.
    """

    routes: torch.Tensor
    probs: torch.Tensor | None = None

    def fraction(self, code: int = BIG) -> torch.Tensor:
        """Fraction of tokens taking ``code``, per layer ``[L]``."""
        return (self.routes == code).float().mean(dim=(0, 1))

    def layers_per_token(self, code: int = BIG) -> torch.Tensor:
        """Number of layers taking ``code``, per token ``[batch, seq]``."""
        return (self.routes == code).sum(-1)
