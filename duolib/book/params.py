"""Notebook parameters: one call validates a notebook's papermill parameters and fills the defaults.

``validate_params(notebook, profile, **values)`` returns the resolved values in the order given, e.g.::

    budgets, steps = validate_params("07_routers", profile, budgets=budgets, steps=steps)

Each chapter's resolver is the function of this module that its :class:`~duolib.book.chapters.Chapter`
names (``params="routers"``: :func:`routers`).  ``None`` means the profile's default; a bad value raises ValueError naming the parameter and what is
allowed, before the notebook computes anything.
"""

from __future__ import annotations

import numbers

from ..config import DuoConfig
from ..profiles import get_profile
from ..train.config import P_GRID
from .chapters import CHAPTERS
from .experiments import check_budget_list, check_settings


def positive_count(name: str, value, what: str) -> int:
    """``value`` as a positive int (a count of ``what``); ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive whole number of {what}")
    return int(value)


def routers(profile: str, budgets=None, settings=None, steps=None, distill_budget=None) -> dict:
    knobs = get_profile(profile)["router"]
    L = get_profile(profile)["model"]["num_hidden_layers"]
    budgets = check_budget_list(knobs["budgets"] if budgets is None else budgets, L)
    return dict(
        budgets=budgets,
        settings=check_settings(knobs["settings"] if settings is None else settings, L),
        distill_budget=check_budget_list(budgets[len(budgets) // 2] if distill_budget is None else distill_budget,
                                         L, "distill_budget")[0],
        steps=positive_count("steps", knobs["steps"] if steps is None else steps, "router training steps"),
    )


def dense(profile: str, compare_steps=None, p_values=None, compare_model=None) -> dict:
    book = get_profile(profile)["book"]
    compare_steps = positive_count("compare_steps", book["compare_steps"] if compare_steps is None else compare_steps,
                                   "training steps")
    compare_model = book["compare_model"] if compare_model is None else compare_model
    # the vocabulary is the book corpus's tokenizer: only the network's sizes may change
    allowed = sorted(set(get_profile(profile)["model"]) - {"vocab_size"})
    if not isinstance(compare_model, dict) or set(compare_model) - set(allowed):
        raise ValueError(f"compare_model={compare_model!r} must be a dict of model sizes overriding the {profile!r} "
                         f"profile's model, with keys among {allowed} (e.g. {{'num_hidden_layers': 4}})")
    try:
        DuoConfig.preset(profile, **compare_model)
    except (TypeError, ValueError) as err:
        raise ValueError(f"compare_model={compare_model!r}: {err}") from None
    p_values = tuple(P_GRID if p_values is None else p_values)
    for p in p_values:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ValueError(f"p_values holds {p!r}: each p(big) must be a probability in [0, 1]")
    if len(p_values) < 2:
        raise ValueError(f"p_values={p_values!r}: give at least two p(big) values to draw a curve")
    return dict(compare_steps=compare_steps, p_values=p_values, compare_model=compare_model)


def retrofit(profile: str, model_name=None, opt_layers=None, pretrain_steps=None, small_steps=None,
              router_steps=None, budget=None) -> dict:
    book = get_profile(profile)["book"]
    out = {}
    for name, value in {"pretrain_steps": pretrain_steps, "small_steps": small_steps,
                        "router_steps": router_steps}.items():
        value = book["retrofit_steps"] * (2 if name == "pretrain_steps" else 1) if value is None else value
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "pretrain_steps" else 1):
            raise ValueError(f"{name}={value!r} must be a whole number of training steps (at least 1; 0 allowed "
                             f"for pretrain_steps)")
        out[name] = value
    if model_name is not None and not isinstance(model_name, str):
        raise ValueError(f"model_name={model_name!r} must be a Hugging Face model name or folder, or None")
    out["model_name"] = model_name
    if model_name is None:  # the layer count is known before anything is built
        L = max(4, get_profile(profile)["model"]["num_hidden_layers"] // 3) if opt_layers is None else opt_layers
        if isinstance(L, bool) or not isinstance(L, int) or L < 1:
            raise ValueError(f"opt_layers={opt_layers!r} must be a positive whole number of layers")
        out["opt_layers"] = L
        out["budget"] = check_budget_list(L // 2 if budget is None else budget, L)[0]
    else:  # known once the model is loaded
        out["opt_layers"], out["budget"] = opt_layers, budget
    return out


def performance(profile: str, repeats=None, wide=None, k=None) -> dict:
    repeats = get_profile(profile)["book"]["bench_repeats"] if repeats is None else repeats
    repeats = positive_count("repeats", repeats, "timed repeats")
    wide = profile != "tiny" if wide is None else wide
    if not isinstance(wide, bool):
        raise ValueError(f"wide={wide!r} must be True, False or None")
    L = get_profile(profile)["model"]["num_hidden_layers"]
    return dict(repeats=repeats, wide=wide, k=check_budget_list(round(L / 3) if k is None else k, L, "k")[0])


def validate_params(notebook: str, profile: str, **values) -> tuple:
    """The notebook's parameters ``values`` checked and with defaults filled, in the order given."""
    rules = {c.name: c.params for c in CHAPTERS if c.params}  # chapter -> its resolver here (CHAPTERS declares it)
    if notebook not in rules:
        raise ValueError(f"no parameter rules for notebook {notebook!r}; known: {', '.join(rules)}")
    resolved = globals()[rules[notebook]](profile, **values)
    return tuple(resolved[name] for name in values)
