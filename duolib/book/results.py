"""The shape of each notebook's saved results (``run_dir/results/<step>.json``), as TypedDicts.

:func:`duolib.book.pipeline.save_results` checks a notebook's results against its type before writing
them, and :mod:`duolib.book.scorecard` reads them in these shapes.  Budgets ``k`` and p values are JSON
strings (``"4"``, ``"0.5"``); perplexities are floats.  Keys beyond the declared ones are kept.
"""

from typing import NotRequired, TypedDict, get_type_hints, is_typeddict

PerBudget = dict[str, float]  # budget k (big layers, as a string) -> perplexity or rate


class OracleHoldout(TypedDict):
    all_big: float
    all_small: float
    oracle: PerBudget
    fixed: PerBudget
    best100: PerBudget
    best100_per_token: PerBudget


class OracleResults(TypedDict):
    """03_oracle: perplexities at exactly k big layers, per holdout."""
    num_layers: int
    holdouts: dict[str, OracleHoldout]


class ScheduleHoldout(TypedDict):
    falling: float
    rising: float
    constant: float


class ScheduleResults(TypedDict):
    """04_schedules: perplexity of each budget schedule, per holdout."""
    holdouts: dict[str, ScheduleHoldout]


class OracleRoutesHoldout(TypedDict):
    big_centre: PerBudget  # mean relative depth 0..1 of the oracle's big layers at k (0.5 = even)
    skip_fraction: list[float]  # per layer, in the {big, skip} study


class OracleRoutesResults(TypedDict):
    """05_oracle_routes."""
    holdouts: dict[str, OracleRoutesHoldout]


class DifficultyHoldout(TypedDict):
    spearman_loss_difficulty: float
    high_loss_low_gain_fraction: float


class DifficultyResults(TypedDict):
    """06_difficulty; ``synthetic.mean_difficulty`` holds easy / compute / noise means (None: no such token)."""
    holdouts: dict[str, DifficultyHoldout]
    synthetic: NotRequired[dict[str, dict[str, float | None]]]


class RouterHoldout(TypedDict):
    router: PerBudget  # perplexity at average budget k
    distilled: NotRequired[PerBudget]
    mean_big_layers: NotRequired[PerBudget]


class RouterResults(TypedDict):
    """07_routers."""
    holdouts: dict[str, RouterHoldout]
    late_big_fraction: PerBudget  # share of big decisions in the second half of the layers
    early_position_big_ratio: float  # big rate of the first tenth of positions over the rest
    skip_late_fraction: float  # share of skips in the second half of the layers


class DenseResults(TypedDict):
    """08_dense: perplexities at p(big)."""
    duo: dict[str, float]
    dense: dict[str, float]
    joint_small: float  # all-small perplexity after joint training
    freeze_small: float  # ... after freeze-big-then-train-small
    stage1: NotRequired[dict[str, float]]
    compare_steps: NotRequired[int]


# step name -> the type of its results (what the scorecard reads)
RESULT_TYPES: dict[str, type] = {
    "03_oracle": OracleResults,
    "04_schedules": ScheduleResults,
    "05_oracle_routes": OracleRoutesResults,
    "06_difficulty": DifficultyResults,
    "07_routers": RouterResults,
    "08_dense": DenseResults,
}


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


def check_results(step: str, results: dict) -> None:
    """ValueError naming the missing keys if ``results`` does not have the shape of ``step``'s type."""
    kind = RESULT_TYPES.get(step)
    if kind is None:
        return
    missing = missing_keys(results, kind)
    if missing:
        raise ValueError(f"results of {step} lack {', '.join(missing)} (the shape is {kind.__name__} in "
                         f"duolib/book/results.py; the scorecard reads it)")
