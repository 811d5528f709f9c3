"""Stage 1: random-routing training.

``loop`` (:func:`train`), ``config`` (:class:`TrainConfig`), ``run_folder`` (a run's files), ``checkpoint``
(exact resume), ``evaluate``, ``baselines`` (dense and freeze-big models), ``build`` (model and optimiser),
``inputs``, ``distributed``, ``model_card``, ``command`` (``duo train``).
"""

from .config import TrainConfig
from .loop import TrainResult, train
from .run_folder import load_run, read_metrics

__all__ = ["TrainConfig", "TrainResult", "load_run", "read_metrics", "train"]
