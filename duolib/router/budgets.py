"""What a router aims at (the paper's Stage 3): its options, budgets, the budget penalty and the
annealed softmax temperature of its training (:func:`duolib.router.train.train_router`).

A budget is the average number of big layers per token (the paper's 4, 6, 8 of 12: :data:`PAPER_BUDGETS`)
or a target fraction per option (the paper's skip settings: :data:`SETTINGS`).
"""

from __future__ import annotations

import numbers
from typing import Mapping, Sequence

import torch

from ..routing import BIG, ROUTE_NAMES, SKIP, SMALL

OPTION_CODES = {"skip": SKIP, "small": SMALL, "big": BIG}

#: The paper's router budgets (big layers out of 12) and its skip settings (target fraction per option).
PAPER_BUDGETS = (4, 6, 8)
SETTINGS: dict[str, dict[str, float]] = {
    "small70_big30": {"small": 0.7, "big": 0.3},
    "big50_skip50": {"big": 0.5, "skip": 0.5},
    "big50_small30_skip20": {"big": 0.5, "small": 0.3, "skip": 0.2},
}

#: Defaults of router training [ours: the paper gives neither alpha nor the schedule].
DEFAULT_ALPHA = 10.0
DEFAULT_TAU0 = 1.0
DEFAULT_TAU_MIN = 0.1
DEFAULT_LR = 1e-2


def option_code(option: str | int, unknown: str = "unknown router option") -> int:
    """The route code of a router option: a name (``"skip"``, ``"small"``, ``"big"``, any case) or a code
    (0, 1, 2).  An unknown option raises ``"{unknown} {option!r}; allowed: ..."``."""
    if isinstance(option, str):
        if option.lower() not in OPTION_CODES:
            raise ValueError(f"{unknown} {option!r}; allowed: 'skip', 'small', 'big'")
        return OPTION_CODES[option.lower()]
    if int(option) in (SKIP, SMALL, BIG):
        return int(option)
    raise ValueError(f"{unknown} {option!r}; allowed route codes 0 (skip), 1 (small), 2 (big)")


def setting_fractions(name: str) -> dict[str, float]:
    """The target fraction per option of the skip setting ``name`` (a key of :data:`SETTINGS`)."""
    if name not in SETTINGS:
        raise ValueError(f"unknown setting {name!r}; allowed: {', '.join(SETTINGS)}")
    return SETTINGS[name]


def parse_options(options: Sequence[str | int] | str) -> tuple[int, ...]:
    """Router options as sorted route codes: ``("small", "big")`` -> ``(1, 2)``; also ``"skip,big"``."""
    if isinstance(options, str):
        options = [o.strip() for o in options.split(",") if o.strip()]
    codes = tuple(sorted({option_code(o) for o in options}))
    if len(codes) < 2:
        raise ValueError(f"a router needs at least two options; got {[ROUTE_NAMES[c] for c in codes]}")
    return codes


def budget_targets(num_layers: int, options: Sequence[int], budget: float | None = None,
                   option_budget: Mapping[str | int, float] | str | None = None) -> dict[int, float]:
    """Target mean probability per penalised option: ``{code: fraction}``.

    ``budget``: average number of big layers per token, in ``0..num_layers`` (penalises P(big) only).
    ``option_budget``: target fraction per option (names or codes, or a name of :data:`SETTINGS`),
    summing to 1; options of the router that it omits get target 0.  Give exactly one of the two.
    """
    options = parse_options(options)
    if (budget is None) == (option_budget is None):
        raise ValueError("give exactly one of budget (big layers per token) and option_budget "
                         f"(fraction per option, e.g. {SETTINGS['small70_big30']})")
    if budget is not None:
        if isinstance(budget, bool) or not isinstance(budget, numbers.Real) or not 0 <= budget <= num_layers:
            raise ValueError(f"budget={budget!r} is outside 0..{num_layers}: it is the average number of big layers "
                             f"per token, allowed from 0 to num_hidden_layers={num_layers}")
        if BIG not in options:
            raise ValueError(f"budget={budget} counts big layers but the router's options "
                             f"{[ROUTE_NAMES[c] for c in options]} have no 'big'; use option_budget")
        return {BIG: float(budget) / num_layers}
    if isinstance(option_budget, str):
        option_budget = setting_fractions(option_budget)
    targets = {code: 0.0 for code in options}
    for key, frac in option_budget.items():
        code = option_code(key, "option_budget names unknown option")
        if code not in options:
            raise ValueError(f"option_budget names {ROUTE_NAMES[code]!r} but the router's options are "
                             f"{[ROUTE_NAMES[c] for c in options]}")
        if not 0.0 <= float(frac) <= 1.0:
            raise ValueError(f"option_budget[{key!r}]={frac} must be a fraction in [0, 1]")
        targets[code] = float(frac)
    total = sum(targets.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"option_budget {dict(option_budget)} sums to {total:g}; the fractions of the options "
                         f"must sum to 1")
    return targets


def budget_penalty(probs: torch.Tensor, targets: Mapping[int, float]) -> torch.Tensor:
    """``sum over options c of mean_b (mean_{t,l} probs[b, t, l, c] - target_c)^2`` for probs ``[B, T, L, 3]``.

    The per-sequence mean over tokens and layers is the paper's "mean over layers of P(big)"
    taken for the whole sequence (the penalty replaces per-layer load balancing)."""
    penalty = probs.new_zeros(())
    for code, target in targets.items():
        per_seq = probs[..., code].float().mean(dim=(1, 2))  # [B]
        penalty = penalty + (per_seq - target).pow(2).mean()
    return penalty


def temperature(step: int, steps: int, tau0: float = DEFAULT_TAU0, tau_min: float = DEFAULT_TAU_MIN) -> float:
    """Softmax temperature at ``step`` (0-based) of ``steps``: exponential decay from tau0 to tau_min.

    ``tau(step) = max(tau_min, tau0 * (tau_min / tau0) ** (step / (steps - 1)))``: tau0 at the first
    step, tau_min at the last.  [ours] The paper only says the temperature is annealed toward hard
    choices; its printed schedule is ambiguous (neither the direction of the exponent nor the end
    value is unambiguous), so we use this explicit exponential decay, monotone and bounded below.
    """
    if tau0 <= 0 or tau_min <= 0 or tau_min > tau0:
        raise ValueError(f"need 0 < tau_min <= tau0; got tau0={tau0}, tau_min={tau_min}")
    if steps <= 1:
        return float(tau_min)
    frac = min(1.0, max(0.0, step / (steps - 1)))
    return float(max(tau_min, tau0 * (tau_min / tau0) ** frac))


def check_settings(settings, num_layers: int) -> dict[str, dict[str, float]]:
    """Skip settings as ``{name: {option: fraction}}``.

    ``settings``: names of :data:`duolib.router.budgets.SETTINGS`, or a mapping name -> fractions per option
    (``{"mine": {"big": 0.5, "skip": 0.5}}``) that must sum to 1.  ValueError names the bad value."""
    if isinstance(settings, str):
        settings = [settings]
    items = settings.items() if isinstance(settings, Mapping) else [(s, s) for s in settings]
    out = {}
    for name, spec in items:
        if isinstance(spec, str):
            if spec not in SETTINGS:
                raise ValueError(f"unknown skip setting {spec!r}; allowed: {', '.join(SETTINGS)} (or a mapping "
                                 f"name -> {{option: fraction}} summing to 1)")
            spec = SETTINGS[spec]
        if not isinstance(spec, Mapping) or not spec:
            raise ValueError(f"setting {name!r}: {spec!r} is not a mapping option -> fraction")
        try:
            budget_targets(num_layers, tuple(spec), option_budget=dict(spec))
        except ValueError as err:
            raise ValueError(f"setting {name!r}: {err}") from None
        out[str(name)] = {str(k): float(v) for k, v in spec.items()}
    return out
