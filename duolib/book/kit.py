"""The chapters' kit: what the experiment notebooks call, from their first cell (:func:`notebook_setup`,
:func:`run_upstream`) to their models, data and results (:func:`stage1_model`, :func:`book_data`,
:func:`save_results`).  The notebook runner is :mod:`duolib.book.pipeline`."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..data.corpus import prepare
from ..data.run_data import run_data
from ..fileio import atomic_write_text
from ..folders import resolve_folder
from ..profiles import get_profile
from ..train.config import TrainConfig
from ..train.run_folder import load_run
from .chapters import check_results
from .conclusions import install as show_conclusions
from .config import BookConfig
from .jobs import PROFILE_ENV, StepResult
from .param_types import check_kernel_parameters
from .pipeline import AUTO_UPSTREAM_PROFILES, find_root, run_pipeline, upstream
from .plots import use_style

STAGE1_DIR = "stage1"
#: The run folder (inside the book's run folder) of the Stage-1 model trained with skip (notebook 02b).
SKIP_STAGE1_DIR = "stage1-skip"
#: The route family with skip of the skip model's evaluation: each layer big or skipped with probability 1/2.
HALF_SKIP_ROUTES = "random:0.5:0.5"


def resolve_run_dir(run_dir: str | os.PathLike | None, profile: str, root: Path | None = None) -> Path:
    """A notebook's run folder (:func:`duolib.folders.resolve_folder`, from the notebook's checkout): ``None``
    means ``runs/<profile>``; relative paths are taken from the repository root, never from the working
    folder (papermill, Jupyter and `duo book` start kernels in different folders).  A relative path that
    leaves the repository is refused."""
    if run_dir is not None and Path(run_dir).expanduser().is_absolute():
        return Path(run_dir).expanduser()
    root = Path(root).resolve() if root is not None else find_root()
    path = resolve_folder(run_dir, Path("runs") / profile, root)
    if not path.is_relative_to(root):
        raise ValueError(f"run_dir={str(run_dir)!r} leads outside the repository {str(root)!r}: relative run "
                         f"folders are taken from the repository root (e.g. 'runs/{profile}'); "
                         f"give an absolute path to run elsewhere")
    return path


def notebook_setup(profile: str, run_dir: str | os.PathLike | None) -> tuple[str, Path]:
    """Resolve and validate a notebook's ``profile`` and ``run_dir`` (fail in the first cells with a clear
    message), create the run folder, set the plot style; return ``(profile, run_dir)``.

    With ``DUO_PROFILE`` set in the environment, that profile and its folder ``runs/<profile>`` under the
    repository root replace the notebook's parameters (what Binder needs: see ``start``)."""
    check_kernel_parameters(find_root())  # -p seed abc / -p nsequences 2 fail here, before any work
    forced = os.environ.get(PROFILE_ENV)
    if forced:
        try:
            get_profile(forced)
        except ValueError as exc:
            raise ValueError(f"environment variable {PROFILE_ENV}={forced!r}: {exc}") from None
        # the book's own folder for the notebook's profile follows the override; a folder given explicitly is kept
        own = run_dir is None or resolve_run_dir(run_dir, profile) == resolve_run_dir(None, profile)
        target = resolve_run_dir(None if own else run_dir, forced)
        kept = "" if own else f"; run_dir={run_dir!r} was given explicitly, so it is kept"
        print(f"{PROFILE_ENV}={forced} is set: this notebook runs the {forced!r} profile in {target} "
              f"(its parameters: profile={profile!r}, run_dir={run_dir!r}{kept}; unset {PROFILE_ENV} to use them)")
        profile, path = forced, target
    else:
        get_profile(profile)
        path = resolve_run_dir(run_dir, profile)
    path.mkdir(parents=True, exist_ok=True)
    use_style()
    show_conclusions(find_root())  # in Jupyter, the chapter's sentences with their numbers (not raw glue roles)
    return profile, path


def run_upstream(step: str, profile: str, run_dir: str | os.PathLike) -> list[StepResult]:
    """Make sure ``run_dir`` holds the results of every step ``step`` needs (``results/<step>.json``).

    Missing ones are executed first, by :func:`run_pipeline`, when the profile is cheap
    (``AUTO_UPSTREAM_PROFILES``: a chapter opened alone on Binder trains its tiny model itself); for
    the other profiles a missing step is an error naming the command that produces it.  Their executed
    copies go to ``run_dir/upstream/experiments``, never over the book's committed notebooks."""
    run_dir = Path(run_dir)
    missing = [n for n in upstream(step) if not (run_dir / "results" / f"{n}.json").is_file()]
    if not missing:
        return []
    if profile not in AUTO_UPSTREAM_PROFILES:
        raise ValueError(
            f"run folder {str(run_dir)!r} lacks the results of {', '.join(missing)} (results/<step>.json), "
            f"which {step} reads; run them first: duo book --profile {profile} --out {run_dir} "
            f"--skip-build --only {' '.join(missing)}")
    print(f"{step} needs {', '.join(missing)} first; executing them ({profile} profile) into {run_dir}")
    return run_pipeline(profile, root=find_root(), run_dir=run_dir, book_dir=run_dir / "upstream", only=missing)


def book_train_config(profile: str, run_dir: str | os.PathLike, **overrides):
    """The Stage-1 TrainConfig the book uses for ``profile``: token caches live inside ``run_dir``."""
    return TrainConfig.from_profile(profile, cache_dir=str(Path(run_dir) / "cache"), progress=False, **overrides)


def skip_train_config(profile: str, run_dir: str | os.PathLike, p_skip: float | None = None, **overrides):
    """The TrainConfig of the skip-trained Stage-1 model (notebook 02b): Stage 1's (:func:`book_train_config`)
    except its random routing, p(skip) = ``p_skip`` (None: the profile's ``book.skip_p``) and the rest split
    evenly, p(big) = p(small) = (1 - p_skip) / 2 (``TrainConfig.p_big`` is a share of all draws, not of the
    non-skip ones), and its evaluation also under :data:`HALF_SKIP_ROUTES`."""
    p = BookConfig.from_profile(profile).skip_p if p_skip is None else p_skip
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p < 1.0:
        raise ValueError(f"p_skip={p!r} must lie strictly between 0 and 1 (a model trained with skip that also "
                         f"trains its big and small modules)")
    routes = tuple(book_train_config(profile, run_dir).eval_routes)
    if HALF_SKIP_ROUTES not in routes:
        routes += (HALF_SKIP_ROUTES,)
    return book_train_config(profile, run_dir, p_big=(1.0 - p) / 2, p_skip=float(p), eval_routes=routes,
                             **overrides)


def save_results(run_dir: str | os.PathLike, step: str, results: dict) -> Path:
    """Write a notebook's headline numbers to ``run_dir/results/<step>.json`` (read by the scorecard),
    after checking them against the step's type in :mod:`duolib.book.results`."""
    check_results(step, results)
    path = Path(run_dir) / "results" / f"{step}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(results, indent=2, sort_keys=True, default=float))
    return path


def load_results(run_dir: str | os.PathLike) -> dict[str, dict]:
    """Every ``results/<step>.json`` of a run folder, by step name."""
    folder = Path(run_dir) / "results"
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def book_data(profile: str, run_dir: str | os.PathLike, progress: bool = False):
    """The corpus of the book's Stage-1 run (``duolib.data.corpus.Prepared``; cached inside ``run_dir``): once
    that run exists, its recorded data and tokenizer (:func:`duolib.data.run_data.run_data`)."""
    if (Path(run_dir) / STAGE1_DIR / "tokenizer").is_dir():
        return run_data(Path(run_dir) / STAGE1_DIR, progress=progress)
    cfg = book_train_config(profile, run_dir)
    return prepare(cfg.corpus, cfg.duo_config().vocab_size, cfg.cache_dir, progress=progress, **cfg.data)


def stage1_model(run_dir: str | os.PathLike):
    """The Stage-1 model trained by the 02_training notebook (eval mode)."""
    path = Path(run_dir) / STAGE1_DIR
    if not (path / "summary.json").is_file():
        raise ValueError(f"no finished Stage-1 run in {str(path)!r}; run notebooks/02_training.ipynb first")
    return load_run(path).eval()


def skip_stage1_model(run_dir: str | os.PathLike):
    """The Stage-1 model trained with skip in its random routing by the 02b_skip_model notebook (eval mode);
    ValueError if the run is missing or its recorded p_skip is not above 0."""
    path = Path(run_dir) / SKIP_STAGE1_DIR
    if not (path / "summary.json").is_file():
        raise ValueError(f"no finished skip-trained Stage-1 run in {str(path)!r}; run "
                         f"notebooks/02b_skip_model.ipynb first")
    p_skip = trained_p_skip(path)
    if not p_skip > 0:
        raise ValueError(f"the run in {str(path)!r} was trained with p_skip = {p_skip:g}, not with skip; rerun "
                         f"notebooks/02b_skip_model.ipynb (it trains with the profile's book.skip_p)")
    return load_run(path).eval()


def trained_p_skip(path: str | os.PathLike) -> float:
    """The p_skip a Stage-1 run folder was trained with (its ``config.json``)."""
    file = Path(path) / "config.json"
    try:
        return float(json.loads(file.read_text())["config"].get("p_skip", 0.0))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot read the training config of {str(file)!r} ({exc}); retrain that run") from None
