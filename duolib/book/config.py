"""``BookConfig``: the sizes of the book's experiments that the train / oracle / router sections do not cover."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import checks
from ..config import DuoConfig
from ..profiles import get_profile
from ..stage_config import StageConfig


@dataclass
class BookConfig(StageConfig):
    """Profile section ``book`` (every choice is ours [ours]).

    compare_steps / compare_model: training steps and DuoConfig overrides of the dense comparison's models
    (08_dense); retrofit_steps: 09_retrofit's step unit; synthetic_steps / synthetic_layers / synthetic_lr: the
    synthetic-corpus model of 06 (None: the profile's layers and lr); heatmap_bins: position bins of the
    route heatmaps; bench_repeats: repeats of every timing; skip_p: p(skip) of the second Stage-1 model
    (02b; the rest split evenly between big and small); seeds: training seeds of every chapter that reads
    a trained model (:mod:`duolib.book.seeds`)."""

    SECTION = "book"

    profile: str = "default"
    compare_steps: int = 20
    compare_model: dict = field(default_factory=dict)
    retrofit_steps: int = 20
    synthetic_steps: int = 30
    synthetic_layers: int | None = None
    synthetic_lr: float | None = None
    heatmap_bins: int = 8
    bench_repeats: int = 2
    skip_p: float = 0.2
    seeds: int = 1

    def validate(self) -> None:
        for name in ("compare_steps", "retrofit_steps", "synthetic_steps", "heatmap_bins", "bench_repeats", "seeds"):
            checks.whole(name, getattr(self, name))
        # the vocabulary is the book corpus's tokenizer: only the network's sizes may change
        allowed = sorted(set(get_profile(self.profile)["model"]) - {"vocab_size"})
        if not isinstance(self.compare_model, dict) or set(self.compare_model) - set(allowed):
            raise ValueError(f"compare_model={self.compare_model!r} must be a dict of model sizes overriding the "
                             f"{self.profile!r} profile's model, with keys among {allowed} (e.g. "
                             f"{{'num_hidden_layers': 4}})")
        try:
            DuoConfig.preset(self.profile, **self.compare_model)
        except (TypeError, ValueError) as err:
            raise ValueError(f"compare_model={self.compare_model!r}: {err}") from None
        if self.synthetic_layers is not None:
            checks.whole("synthetic_layers", self.synthetic_layers)
        if self.synthetic_lr is not None:
            checks.positive("synthetic_lr", self.synthetic_lr)
        if not checks.probability("skip_p", self.skip_p) < 1:
            raise ValueError(f"skip_p={self.skip_p!r} must be below 1 (the model still has to train its FFNs)")
