"""Stage 3: trained routers.

``base`` (the :class:`Router` base class and the registry of router types, save / load), ``policy`` (the
linear router, forward passes on any routable model), ``train`` (training), ``calibration`` (offsets to the budget), ``distill`` (oracle distillation),
``evaluate``, ``budgets``, ``command`` (``duo route``).  Importing the package registers the built-in types.
"""

from .base import ROUTER_TYPES, Router, load_router, register_router
from .policy import RouterPolicy

__all__ = ["ROUTER_TYPES", "Router", "RouterPolicy", "load_router", "register_router"]
