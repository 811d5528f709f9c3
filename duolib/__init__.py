"""duolib: the open implementation of Duo-LLM (adaptive computation with big / small / skip FFN routes)."""

from transformers import AutoConfig, AutoModelForCausalLM

from .config import DuoConfig
from .model import DuoCausalLMOutput, DuoForCausalLM, DuoModel
from .profiles import PROFILES, get_profile
from .routing import (
    BIG,
    ROUTE_NAMES,
    SKIP,
    SMALL,
    FixedRoutes,
    PositionRoutes,
    RandomRoutes,
    RoutingPolicy,
    RoutingTrace,
    TokenRoutes,
    pattern_to_str,
)

from . import retrofit  # callable module: duolib.retrofit(model, small_ffn_size=None, init="importance")
from .router import RouterPolicy, load_router
from .router_train import train_distilled_router, train_router

__version__ = "0.1.0"

AutoConfig.register("duo", DuoConfig, exist_ok=True)
AutoModelForCausalLM.register(DuoConfig, DuoForCausalLM, exist_ok=True)

__all__ = [
    "BIG", "SMALL", "SKIP", "ROUTE_NAMES", "DuoConfig", "DuoForCausalLM", "DuoModel", "DuoCausalLMOutput",
    "RoutingPolicy", "FixedRoutes", "RandomRoutes", "PositionRoutes", "TokenRoutes", "RoutingTrace",
    "pattern_to_str", "PROFILES", "get_profile",
    "retrofit", "RouterPolicy", "train_router", "train_distilled_router", "load_router",
]
