"""``OracleConfig``: the knobs of Stage 2 (``duo oracle`` and the book's oracle chapters), one profile section."""

from __future__ import annotations

from dataclasses import dataclass

from .. import checks
from ..config import DuoConfig
from ..stage_config import StageConfig
from ..utils import check_threads
from .patterns import parse_choices
from .reductions import SEMANTICS


@dataclass
class OracleConfig(StageConfig):
    """The oracle's holdout slice and reductions (profile section ``oracle``; every choice is ours [ours]).

    n_sequences / seq_len: windows per holdout and their length; choices: the routes enumerated
    ("small,big", "skip,big", ...); semantics: "shared" (a route changes later tokens' context) or
    "fixed-context"; difficulty_k: the budget of the difficulty table (None: half the layers); n_random: N of
    the best-of-N random control; beam_widths / beam_k: the beam table's widths and budget (None: half the
    layers); threads: the oracle notebooks' torch threads (None, a count or "auto"); fixed_context_sequences:
    windows of the fixed-context reading (None: half the slice, at least 1); placebo_windows: windows the
    placebo oracle scores (None: all); skip_beam_widths: beam widths of the {skip, big} frontier on the
    skip-trained model; three_way_positions / three_way_widths: scored tokens per window and beam widths of
    the {skip, small, big} frontier (its exhaustive search costs 3^L leaves per token).  Budgets are checked
    against the profile's model."""

    SECTION = "oracle"

    profile: str = "default"
    n_sequences: int = 2
    seq_len: int = 16
    choices: str = "small,big"
    semantics: str = "shared"
    difficulty_k: int | None = None
    n_random: int = 100
    beam_widths: tuple[int, ...] = (1, 2, 4)
    beam_k: int | None = None
    threads: int | str | None = None
    fixed_context_sequences: int | None = None
    placebo_windows: int | None = None
    skip_beam_widths: tuple[int, ...] = (1, 2, 4)
    three_way_positions: int = 8
    three_way_widths: tuple[int, ...] = (1, 4, 16)

    @classmethod
    def from_profile(cls, profile: str = "default", **overrides) -> "OracleConfig":
        """As :meth:`StageConfig.from_profile`; the profile's own fixed-context and placebo window counts are
        capped at a smaller ``n_sequences`` override (an explicit count above it is refused)."""
        if overrides.get("n_sequences") is not None:
            base = super().from_profile(profile)
            for name in ("fixed_context_sequences", "placebo_windows"):
                own = getattr(base, name)
                if overrides.get(name) is None and own is not None:
                    overrides[name] = min(own, overrides["n_sequences"]) if isinstance(overrides["n_sequences"],
                                                                                       int) else own
        return super().from_profile(profile, **overrides)

    def validate(self) -> None:
        model = DuoConfig.preset(self.profile)
        L, positions = model.num_hidden_layers, model.max_position_embeddings
        checks.whole("n_sequences", self.n_sequences)
        checks.whole("seq_len", self.seq_len, 2, positions)
        parse_choices(self.choices)
        checks.one_of("semantics", self.semantics, SEMANTICS)
        if self.difficulty_k is not None:
            checks.budget("difficulty_k", self.difficulty_k, L)
        checks.whole("n_random", self.n_random)
        self.beam_widths = checks.whole_list("beam_widths", self.beam_widths)
        if self.beam_k is not None:
            checks.budget("beam_k", self.beam_k, L)
        check_threads(self.threads)
        if self.fixed_context_sequences is not None:
            checks.whole("fixed_context_sequences", self.fixed_context_sequences, 1, self.n_sequences)
        if self.placebo_windows is not None:
            checks.whole("placebo_windows", self.placebo_windows, 1, self.n_sequences)
        self.skip_beam_widths = checks.whole_list("skip_beam_widths", self.skip_beam_widths)
        checks.whole("three_way_positions", self.three_way_positions)  # capped at seq_len - 1 when resolved
        self.three_way_widths = checks.whole_list("three_way_widths", self.three_way_widths)

    # the values the book reads, with the defaults above resolved
    def resolved(self) -> dict:
        """Every field with its None default resolved against the profile's model, plus ``num_layers``: the
        settings notebook 03 records in ``book.json`` for 04-07."""
        L = DuoConfig.preset(self.profile).num_hidden_layers
        d = self.to_dict()
        d.pop("profile")
        d["beam_widths"] = list(self.beam_widths)
        d["skip_beam_widths"], d["three_way_widths"] = list(self.skip_beam_widths), list(self.three_way_widths)
        d["three_way_positions"] = min(self.three_way_positions, self.seq_len - 1)
        d["difficulty_k"] = L // 2 if self.difficulty_k is None else self.difficulty_k
        d["beam_k"] = L // 2 if self.beam_k is None else self.beam_k
        d["fixed_context_sequences"] = (max(1, self.n_sequences // 2) if self.fixed_context_sequences is None
                                        else self.fixed_context_sequences)
        d["placebo_windows"] = self.n_sequences if self.placebo_windows is None else self.placebo_windows
        d["num_layers"] = L
        return d
