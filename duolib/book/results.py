"""The shape of each notebook's saved results (``run_dir/results/<step>.json``), as TypedDicts.

:func:`duolib.book.kit.save_results` checks a notebook's results against its type (declared with its
chapter in :data:`duolib.book.chapters.CHAPTERS`) before writing them, and :mod:`duolib.book.scorecard` reads them in these shapes.  Budgets ``k`` and p values are JSON
strings (``"4"``, ``"0.5"``); perplexities are floats.  Keys beyond the declared ones are kept.
"""

from typing import NotRequired, TypedDict, get_type_hints, is_typeddict

PerBudget = dict[str, float]  # budget k (big layers, as a string) -> perplexity or rate
Interval = dict[str, float]  # {"value", "low", "high"}: a 95% window-bootstrap interval (duolib.book.evidence)


class SkipModelResults(TypedDict):
    """02b_skip_model: final holdout perplexities of the skip-trained Stage-1 model, per holdout and route
    family (big, small, random, half_skip, unigram)."""
    model: str  # its run folder inside the book's run folder
    p_skip: float
    p_big: float
    holdouts: dict[str, dict[str, float]]


class OracleHoldout(TypedDict):
    all_big: float
    all_small: float
    oracle: PerBudget
    fixed: PerBudget
    best_of_random: PerBudget
    best_of_random_per_token: PerBudget
    ci: NotRequired[dict]  # duolib.book.evidence.oracle_intervals
    chars_per_token: NotRequired[float]


class OracleResults(TypedDict):
    """03_oracle: perplexities at exactly k big layers, per holdout."""
    num_layers: int
    holdouts: dict[str, OracleHoldout]


class ScheduleHoldout(TypedDict):
    falling: float
    rising: float
    constant: float
    shuffled: NotRequired[float]  # the control: falling's budgets at permuted positions
    ci: NotRequired[dict[str, Interval]]  # duolib.book.evidence.schedule_intervals


class ScheduleResults(TypedDict):
    """04_schedules: perplexity of each budget schedule, per holdout."""
    holdouts: dict[str, ScheduleHoldout]


class OracleRoutesHoldout(TypedDict):
    big_centre: PerBudget  # mean relative depth 0..1 of the oracle's big layers at k (0.5 = even)
    big_centre_ci: NotRequired[dict[str, Interval]]


class SkipStudyHoldout(TypedDict):
    """duolib.book.analysis.skip_study of one model on one holdout."""
    skip_fraction: list[float]  # per layer, share of tokens whose {big, skip} oracle pattern skips it
    skip_fraction_ci: list[Interval]
    oracle: float  # perplexities, shared semantics, n_skip layers skipped
    fixed: float
    early_exit: float
    all_big: float
    fixed_pattern: NotRequired[str]


class SkipStudy(TypedDict):
    model: str  # the model's run folder inside the book's run folder
    p_skip: float  # skip probability it was trained with
    n_skip: int
    holdouts: dict[str, SkipStudyHoldout]


class OracleRoutesResults(TypedDict):
    """05_oracle_routes: the big layers' centre of the Stage-1 model (C6) and the {big, skip} study of each
    model (``skip_study.no_skip``: notebook 02's, ``skip_study.skip_trained``: notebook 02b's; C7 reads the
    latter)."""
    holdouts: dict[str, OracleRoutesHoldout]
    skip_study: dict[str, SkipStudy]


class DifficultyHoldout(TypedDict):
    spearman_loss_difficulty: float
    high_loss_low_gain_fraction: float
    spearman_ci: NotRequired[Interval]


class DifficultyResults(TypedDict):
    """06_difficulty; ``synthetic.mean_difficulty`` holds easy / compute / noise means (None: no such token)."""
    holdouts: dict[str, DifficultyHoldout]
    synthetic: NotRequired[dict[str, dict[str, float | None]]]


class RouterHoldout(TypedDict):
    router: PerBudget  # perplexity at average budget k
    distilled: NotRequired[PerBudget]
    mean_big_layers: NotRequired[PerBudget]
    c2: NotRequired[dict[str, dict]]  # per budget: duolib.book.evidence.router_evidence


class RouterResults(TypedDict):
    """07_routers."""
    holdouts: dict[str, RouterHoldout]
    late_big_fraction: PerBudget  # share of big decisions in the second half of the layers
    early_position_big_ratio: float  # big rate of the first tenth of positions over the rest
    skip_late_fraction: float  # share of skips in the second half of the layers
    p_skip: NotRequired[float]
    late_big_fraction_ci: NotRequired[dict[str, Interval]]
    early_position_big_ratio_ci: NotRequired[Interval]
    skip_late_fraction_ci: NotRequired[Interval]  # the skip router of the model trained without skip
    skip_model: NotRequired[dict]  # C8 skip part: model (run folder), p_skip, skip_late_fraction_ci, ...
    routers_flattened: NotRequired[bool]  # every router's loss and penalty flattened (router.evaluate.history_flatness)
    budgets_within: NotRequired[bool]  # every realised budget within router_study.BUDGET_TOL_LAYERS of its target
    distilled_minus_router_ci: NotRequired[dict[str, Interval]]  # per holdout, mean loss (nats)


class DenseResults(TypedDict):
    """08_dense: perplexities at p(big)."""
    duo: dict[str, float]
    dense: dict[str, float]
    joint_small: float  # all-small perplexity after joint training
    freeze_small: float  # ... after freeze-big-then-train-small
    stage1: NotRequired[dict[str, float]]
    compare_steps: NotRequired[int]
    steps: NotRequired[dict[str, int]]  # duo / dense / freeze (both stages): C10 needs them equal
    unigram: NotRequired[float]  # pooled unigram perplexity of the evaluation windows
    gap_ci: NotRequired[dict[str, Interval]]  # Duo / dense - 1 at each p(big)
    approach_ci: NotRequired[Interval]  # gap at the lowest p(big) minus gap at the highest (paired)
    compare_model: NotRequired[dict[str, int]]  # model overrides of the comparison's models
    freeze_excess_ci: NotRequired[Interval]  # all-small: freeze / joint - 1


def missing_keys(value, kind, where: str = "") -> list[str]:
    """The declared keys ``value`` lacks (dotted paths), recursing through TypedDicts and dicts of them."""
    if is_typeddict(kind):
        if not isinstance(value, dict):
            return [where or "."]
        hints = get_type_hints(kind)
        out = [f"{where}{k}" for k in sorted(kind.__required_keys__) if k not in value]
        for k, sub in hints.items():
            if k in value:
                out += missing_keys(value[k], sub, f"{where}{k}.")
        return out
    if getattr(kind, "__origin__", None) is dict and isinstance(value, dict):
        sub = kind.__args__[1]
        return [m for k, v in value.items() for m in missing_keys(v, sub, f"{where}{k}.")]
    return []
