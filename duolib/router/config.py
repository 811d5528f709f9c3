"""``RouterConfig``: the knobs of Stage 3 (``duo route`` and the book's router chapter), one profile section."""

from __future__ import annotations

from dataclasses import dataclass

from .. import checks
from ..config import DuoConfig
from ..stage_config import StageConfig
from .budgets import check_settings


@dataclass
class RouterConfig(StageConfig):
    """Router training and evaluation (profile section ``router``; every choice is ours [ours]).

    budgets: big layers per token of the routers with {small, big} options (the paper's 4 / 6 / 8 of 12);
    settings: skip settings (:data:`duolib.router.budgets.SETTINGS` names, or ``{name: {option: fraction}}``);
    steps / batch_size / seq_len: training; lr; alpha: the budget-penalty weight; tau0 -> tau_min: the
    exponential temperature schedule; eval_sequences: holdout windows of the evaluation; distill_steps /
    distill_windows: the oracle-distilled router's training steps and labelled windows."""

    SECTION = "router"

    profile: str = "default"
    budgets: tuple[int, ...] = (2,)
    settings: tuple = ()
    steps: int = 100
    batch_size: int = 8
    seq_len: int = 64
    lr: float = 1e-2
    alpha: float = 10.0
    tau0: float = 1.0
    tau_min: float = 0.1
    eval_sequences: int = 16
    distill_steps: int = 100
    distill_windows: int = 8

    def validate(self) -> None:
        model = DuoConfig.preset(self.profile)
        L = model.num_hidden_layers
        self.budgets = checks.budgets("budget", self.budgets, L)
        check_settings(self.settings, L)
        for name in ("steps", "batch_size", "eval_sequences", "distill_steps", "distill_windows"):
            checks.whole(name, getattr(self, name))
        checks.whole("seq_len", self.seq_len, 2)  # the context of the model routed is checked where it is loaded
        for name in ("lr", "alpha", "tau0", "tau_min"):
            checks.positive(name, getattr(self, name))
