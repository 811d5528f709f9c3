"""duolib: the open implementation of Duo-LLM (adaptive computation with big / small / skip FFN routes).

The package's face: ``from duolib import DuoConfig, DuoForCausalLM, RandomRoutes, retrofit_model, ...``.
Names load on first use (PEP 562), so ``import duolib`` and ``duo --help`` do not import torch or
transformers; importing :mod:`duolib.model` registers the ``duo`` model type with transformers.
"""

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_FACE = {
    **dict.fromkeys(["DuoConfig"], "config"),
    **dict.fromkeys(["DuoCausalLMOutput", "DuoForCausalLM", "DuoModel"], "model"),
    **dict.fromkeys(["PROFILES", "get_profile"], "profiles"),
    **dict.fromkeys(["BIG", "ROUTE_NAMES", "SKIP", "SMALL", "FixedRoutes", "PositionRoutes", "RandomRoutes",
                     "RoutingPolicy", "RoutingTrace", "TokenRoutes", "pattern_to_str"], "routing"),
    **dict.fromkeys(["retrofit_model"], "retrofit"),
    **dict.fromkeys(["SpeculativeStats", "speculative_generate"], "speculative"),
    **dict.fromkeys(["RouterPolicy", "load_router"], "router.policy"),
    **dict.fromkeys(["train_distilled_router", "train_router"], "router.train"),
}

__all__ = sorted(_FACE)


def __getattr__(name: str):
    if name in _FACE:
        value = getattr(importlib.import_module(f".{_FACE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_FACE))
