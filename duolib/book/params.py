"""Notebook parameters: one call validates a notebook's papermill parameters and fills the defaults.

``validate_params(notebook, profile, **values)`` returns the resolved values in the order given, e.g.::

    budgets, steps = validate_params("07_routers", profile, budgets=budgets, steps=steps)

Each chapter's resolver is the function of this module that its :class:`~duolib.book.chapters.Chapter`
names (``params="routers"``: :func:`routers`).  ``None`` means the profile's default; a bad value raises ValueError naming the parameter and what is
allowed, before the notebook computes anything.
"""

from __future__ import annotations

from .. import checks
from ..config import DuoConfig
from ..router.budgets import check_settings
from ..router.config import RouterConfig
from ..train.config import P_GRID
from .chapters import CHAPTERS
from .config import BookConfig


def routers(profile: str, budgets=None, settings=None, steps=None, distill_budget=None) -> dict:
    cfg = RouterConfig.from_profile(profile, budgets=budgets, settings=settings, steps=steps)
    L = DuoConfig.preset(profile).num_hidden_layers
    distill = cfg.budgets[len(cfg.budgets) // 2] if distill_budget is None else distill_budget
    return dict(budgets=cfg.budgets, settings=check_settings(cfg.settings, L),
                distill_budget=checks.budgets("distill_budget", distill, L)[0], steps=cfg.steps)


def dense(profile: str, compare_steps=None, p_values=None, compare_model=None) -> dict:
    book = BookConfig.from_profile(profile, compare_steps=compare_steps, compare_model=compare_model)
    p_values = tuple(P_GRID if p_values is None else p_values)
    for p in p_values:
        checks.probability("p_values: each p(big)", p)
    if len(p_values) < 2:
        raise ValueError(f"p_values={p_values!r}: give at least two p(big) values to draw a curve")
    return dict(compare_steps=book.compare_steps, p_values=p_values, compare_model=book.compare_model)


def retrofit(profile: str, model_name=None, opt_layers=None, pretrain_steps=None, small_steps=None,
             router_steps=None, budget=None) -> dict:
    unit = BookConfig.from_profile(profile).retrofit_steps
    out = {name: checks.whole(name, unit * (2 if name == "pretrain_steps" else 1) if value is None else value,
                              0 if name == "pretrain_steps" else 1)
           for name, value in {"pretrain_steps": pretrain_steps, "small_steps": small_steps,
                               "router_steps": router_steps}.items()}
    if model_name is not None and not isinstance(model_name, str):
        raise ValueError(f"model_name={model_name!r} must be a Hugging Face model name or folder, or None")
    out["model_name"] = model_name
    if model_name is None:  # the layer count is known before anything is built
        L = max(4, DuoConfig.preset(profile).num_hidden_layers // 3) if opt_layers is None else opt_layers
        out["opt_layers"] = checks.whole("opt_layers", L)
        out["budget"] = checks.budgets("budget", L // 2 if budget is None else budget, L)[0]
    else:  # known once the model is loaded
        out["opt_layers"], out["budget"] = opt_layers, budget
    return out


def performance(profile: str, repeats=None, wide=None, k=None) -> dict:
    repeats = checks.whole("repeats", BookConfig.from_profile(profile).bench_repeats if repeats is None else repeats)
    wide = profile != "tiny" if wide is None else wide
    if not isinstance(wide, bool):
        raise ValueError(f"wide={wide!r} must be True, False or None")
    L = DuoConfig.preset(profile).num_hidden_layers
    return dict(repeats=repeats, wide=wide, k=checks.budgets("k", round(L / 3) if k is None else k, L)[0])


def validate_params(notebook: str, profile: str, **values) -> tuple:
    """The notebook's parameters ``values`` checked and with defaults filled, in the order given."""
    rules = {c.name: c.params for c in CHAPTERS if c.params}  # chapter -> its resolver here (CHAPTERS declares it)
    if notebook not in rules:
        raise ValueError(f"no parameter rules for notebook {notebook!r}; known: {', '.join(rules)}")
    resolved = globals()[rules[notebook]](profile, **values)
    return tuple(resolved[name] for name in values)
