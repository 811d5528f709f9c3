"""duolib: the open implementation of Duo-LLM (adaptive computation with big / small / skip FFN routes).

The package's face: ``from duolib import DuoConfig, DuoForCausalLM, RandomRoutes, retrofit_model, ...``.
Names load on first use (PEP 562), so ``import duolib`` and ``duo --help`` do not import torch or
transformers, and still register the ``duo`` model type with transformers' Auto classes (AutoConfig,
AutoModel, AutoModelForCausalLM, ``pipeline``): see ``_register_with_transformers``.
"""

import importlib
import importlib.abc
import sys
import types

from .faces import lazy_face

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
    **dict.fromkeys(["RouterPolicy"], "router.policy"),
    **dict.fromkeys(["Router", "load_router", "register_router"], "router.base"),
    **dict.fromkeys(["BudgetReduction", "register_reduction"], "oracle.registry"),
    **dict.fromkeys(["train_router"], "router.train"),
    **dict.fromkeys(["train_distilled_router"], "router.distill"),
    **dict.fromkeys(["TrainConfig"], "train.config"),
    **dict.fromkeys(["OracleConfig"], "oracle.config"),
    **dict.fromkeys(["RouterConfig"], "router.config"),
    **dict.fromkeys(["BookConfig"], "book.config"),
}

__all__ = sorted(_FACE)
__getattr__, __dir__ = lazy_face(globals(), _FACE)


# ---- "duo" with transformers' Auto classes, without importing transformers or torch here --------------------
# ``import duolib`` must keep ``duo --help`` free of torch, and importing duolib.model as soon as transformers'
# auto mappings load would run inside transformers' own module imports (modeling_layers imports the auto
# mappings; duolib.layers imports modeling_layers): a cycle.  So the mappings get *names*, the way transformers
# lists its own models: "duo" -> "DuoConfig" / "DuoModel" / "DuoForCausalLM", looked up in the module
# ``transformers.models.duo``, which is this package's :class:`_DuoModels` and imports duolib's classes only
# when an Auto class asks for one.
_AUTO_NAMES = {
    "transformers.models.auto.auto_mappings": {"CONFIG_MAPPING_NAMES": "DuoConfig"},
    "transformers.models.auto.modeling_auto": {"MODEL_MAPPING_NAMES": "DuoModel",
                                               "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES": "DuoForCausalLM"},
}
_DUO_CLASSES = {"DuoConfig": ".config", "DuoModel": ".model", "DuoForCausalLM": ".model"}


class _DuoModels(types.ModuleType):
    def __getattr__(self, name: str):
        if name not in _DUO_CLASSES:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        return getattr(importlib.import_module(_DUO_CLASSES[name], __name__), name)


def _add_names(module) -> None:
    sys.modules.setdefault("transformers.models.duo", _DuoModels("transformers.models.duo"))
    for mapping, cls in _AUTO_NAMES[module.__name__].items():
        getattr(module, mapping).setdefault("duo", cls)


class _AfterExec(importlib.abc.Loader):
    """Runs the wrapped loader, then adds duo's names to the module it executed."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        _add_names(module)


class _AutoNamesFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in _AUTO_NAMES:
            return None
        for finder in sys.meta_path:
            if finder is not self and (spec := getattr(finder, "find_spec", lambda *a: None)(name, path, target)):
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _AfterExec(spec.loader)
                return spec
        return None


def _register_with_transformers() -> None:
    loaded = [sys.modules[name] for name in _AUTO_NAMES if name in sys.modules]
    if "transformers.models.auto.modeling_auto" in sys.modules:
        # the auto mappings were built before duolib: their config-name index lacks "duo", so register classes
        importlib.import_module(".model", __name__)
        return
    for module in loaded:
        _add_names(module)
    if not any(isinstance(f, _AutoNamesFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AutoNamesFinder())


_register_with_transformers()
