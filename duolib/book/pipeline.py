"""The book pipeline, the notebook runner: execute the experiment notebooks with papermill, in dependency order
(what the notebooks themselves call is :mod:`duolib.book.kit`).

Each notebook in ``notebooks/`` is one experiment with a cell tagged ``parameters``
(``profile``, ``run_dir``, ``seed`` and its own knobs).  :func:`run_pipeline` executes them for
one profile and writes the executed copies where the book reads them (``book/experiments/``).

Caching: an executed notebook records, in its metadata, a key made of its source cells, its
parameters and the keys of the steps it needs.  When the key is unchanged the step is skipped
("an unchanged step is not recomputed") if ``run_dir`` also holds that step's stamp
(``run_dir/.pipeline/<step>.key``, written after the step ran there): the executed notebooks committed
to the repository therefore never stand in for a run folder that lacks their artefacts, and a fresh clone
reruns everything.  ``force=True`` reruns everything.  Heavy artefacts
(tokenizer, token caches, the trained model) additionally live in ``run_dir`` with their own
caches, so e.g. editing the oracle notebook reruns the oracle but not Stage-1 training.

Parallel steps (:mod:`duolib.book.jobs`): with ``jobs > 1`` independent notebooks run at the same time,
each in its own kernel process; a step starts once every step it needs has finished, ready steps start in
``STEPS`` order (those marked ``first`` before the others), and a step marked ``alone`` (the timing
notebook) runs with no other, after every step listed before it.  Every notebook computes the same
numbers either way (its work does not depend on what runs beside it; oracle forward passes give the
same bits at any thread count), so serial and parallel books agree.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..moves import moved
from ..profiles import get_profile
from .config import BookConfig
from .jobs import METADATA_KEY, Job, Step, StepResult, resolve_jobs, run_jobs
from .chapters import STEPS
from ..folders import checkout_root, claim, resolve_folder
from .seeds import SEEDS_DIR, seed_dir, seed_list

#: Names that moved out of this module in this release (an import of one names its new module).
__getattr__ = moved(__name__, {"resolve_run_dir": "duolib.book.kit.resolve_run_dir",
    "notebook_setup": "duolib.book.kit.notebook_setup", "run_upstream": "duolib.book.kit.run_upstream",
    "book_train_config": "duolib.book.kit.book_train_config",
    "skip_train_config": "duolib.book.kit.skip_train_config", "save_results": "duolib.book.kit.save_results",
    "load_results": "duolib.book.kit.load_results", "book_data": "duolib.book.kit.book_data",
    "stage1_model": "duolib.book.kit.stage1_model", "skip_stage1_model": "duolib.book.kit.skip_stage1_model",
    "trained_p_skip": "duolib.book.kit.trained_p_skip", "STAGE1_DIR": "duolib.book.kit.STAGE1_DIR",
    "SKIP_STAGE1_DIR": "duolib.book.kit.SKIP_STAGE1_DIR", "HALF_SKIP_ROUTES": "duolib.book.kit.HALF_SKIP_ROUTES"})


# Profiles cheap enough that a chapter run alone may execute the chapters it depends on itself.
AUTO_UPSTREAM_PROFILES = ("tiny",)


def replica_name(step: str, seed: int) -> str:
    """The name of training seed ``seed``'s replica of ``step`` (the step itself for seed 0)."""
    return step if seed == 0 else f"{step}@seed{seed}"


def seed_steps(n_seeds: int) -> list[Step]:
    """``STEPS`` with every ``replicate`` step repeated for the training seeds ``1 .. n_seeds - 1``, each replica
    right after its step; a replica needs its seed's replicas of the replicated steps it needs, and a step
    that is not replicated waits for every replica of the steps it needs (the scorecard reads all seeds)."""
    by_name = {s.name: s for s in STEPS}
    extra = list(range(1, len(seed_list(n_seeds))))
    out = []
    for step in STEPS:
        needs = tuple(step.needs)
        if not step.replicate:
            needs += tuple(replica_name(n, s) for n in step.needs if by_name[n].replicate for s in extra)
        out.append(Step(step.name, needs, step.params, step.alone, step.first, step.replicate, {}, step.name))
        if step.replicate:
            out += [Step(replica_name(step.name, s),
                         tuple(replica_name(n, s) if by_name[n].replicate else n for n in step.needs),
                         {**step.params, **step.replica_params}, step.alone, step.first, True, {}, step.name)
                    for s in extra]
    return out


def step_names() -> list[str]:
    return [s.name for s in STEPS]


def upstream(step: str) -> list[str]:
    """Every step whose artefacts ``step`` reads, directly or through others, in execution order."""
    by_name = {s.name: s for s in STEPS}
    if step not in by_name:
        raise ValueError(f"unknown step {step!r}; allowed: {step_names()}")
    needed, todo = set(), list(by_name[step].needs)
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo.extend(by_name[name].needs)
    return [s.name for s in STEPS if s.name in needed]


def notebook_key(source: Path, params: dict, upstream: list[str]) -> str:
    """Hash of the notebook's cell sources, its parameters, the knobs of its profile and its upstream keys.

    (Changes to duolib itself are not part of the key: ``duo book --force`` reruns after them.)"""
    nb = json.loads(Path(source).read_text(encoding="utf-8"))
    cells = [[c.get("cell_type"), "".join(c.get("source", []))] for c in nb.get("cells", [])]
    profile = get_profile(params["profile"]) if "profile" in params else None
    blob = json.dumps([cells, params, profile, upstream], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stored_key(executed: Path) -> str | None:
    if not executed.is_file():
        return None
    try:
        meta = json.loads(executed.read_text(encoding="utf-8")).get("metadata", {})
    except json.JSONDecodeError:
        return None
    return meta.get(METADATA_KEY, {}).get("key")


def run_pipeline(
    profile: str = "default",
    root: Path | None = None,
    run_dir: Path | None = None,
    book_dir: Path | None = None,
    only: list[str] | None = None,
    force: bool = False,
    seed: int = 0,
    jobs: int | str = 1,
    progress: bool = True,
) -> list[StepResult]:
    """Execute the notebooks of ``STEPS`` for ``profile``; return what ran and what was cached (``STEPS`` order).

    root: the repository (holds ``notebooks/``; default :func:`find_root`); run_dir: artefacts (default
    ``root/runs/<profile>``; a relative one is taken from ``root``, :func:`duolib.folders.resolve_folder`); book_dir: the book sources, executed notebooks go to ``book_dir/experiments``
    (default ``root/book``); jobs: notebooks run at the same time (the module docstring); ``"auto"``: the
    usable cores not busy with other work at the start (:func:`resolve_jobs`); progress: the bar over the
    notebooks (``duo book --no-progress`` turns it off).
    """
    get_profile(profile)  # validates the name
    jobs = resolve_jobs(jobs)
    root = Path(root).resolve() if root else find_root()
    run_dir = resolve_folder(run_dir, Path("runs") / profile, root)
    out_dir = Path(book_dir or root / "book").resolve() / "experiments"
    unknown = sorted(set(only or []) - set(step_names()))
    if unknown:
        raise ValueError(f"unknown step(s) {unknown}; allowed: {step_names()}")
    if only and profile in AUTO_UPSTREAM_PROFILES:  # what the chosen steps' run_upstream would execute
        missing = {n for step in only for n in upstream(step) if not (run_dir / "results" / f"{n}.json").is_file()}
        only = [n for n in step_names() if n in only or n in missing]

    with claim(run_dir, "duo book"):  # one writer of the run folder at a time
        out_dir.mkdir(parents=True, exist_ok=True)  # after the claim: out_dir may lie inside a new run folder
        return _run_steps(profile, root, run_dir, out_dir, only, force, seed, jobs, progress)


def _run_steps(profile: str, root: Path, run_dir: Path, out_dir: Path, only, force: bool, seed: int,
               jobs: int, progress: bool = True) -> list[StepResult]:
    from tqdm.auto import tqdm

    keys: dict[str, str] = {}
    results: dict[str, StepResult] = {}
    todo: list[Job] = []
    steps = seed_steps(BookConfig.from_profile(profile).seeds)
    for step in steps:
        source = root / "notebooks" / f"{step.notebook}.ipynb"
        if only and step.notebook not in only and not source.is_file():
            continue
        train_seed = step_seed(step)
        folder = seed_dir(run_dir, train_seed)
        params = {"profile": profile, "run_dir": _run_dir_param(folder, root), "seed": seed + train_seed,
                  **step.params}
        keys[step.name] = notebook_key(source, params, [keys.get(n, "") for n in step.needs])
        output = out_dir / f"{step.name}.ipynb" if train_seed == 0 else folder / "experiments" / f"{step.notebook}.ipynb"
        if only and step.notebook not in only:
            continue
        stamp = folder / ".pipeline" / f"{step.notebook}.key"
        if not force and stored_key(output) == keys[step.name] == _read(stamp):
            results[step.name] = StepResult(step.name, "cached", 0.0, output)
        else:
            output.parent.mkdir(parents=True, exist_ok=True)
            todo.append(Job(step, source, output, params, keys[step.name], stamp))
    with tqdm(total=len(todo), desc=f"book ({profile}, {jobs} at a time)", unit="notebook",
              disable=not progress) as bar:
        for result in run_jobs(todo, jobs, root):
            results[result.name] = result
            bar.update(1)
            bar.write(f"  {result.name}: ran in {result.seconds:.1f} s")
    return [results[s.name] for s in steps if s.name in results]


def step_seed(step: Step) -> int:
    """The training seed of a step of :func:`seed_steps` (0 for the book's own run)."""
    return int(step.name.rsplit("@seed", 1)[1]) if "@seed" in step.name else 0


def step_times(run_dir: str | os.PathLike) -> list[dict]:
    """The last run of each step in ``run_dir`` and of each seed's replica found under it (:func:`seed_steps`
    order): step, seconds, started, finished (Unix times), from the files the pipeline writes next to its
    stamps; steps never run by the pipeline are left out."""
    rows = []
    replicas = sorted(int(p.name[4:]) for p in (Path(run_dir) / SEEDS_DIR).glob("seed*") if p.name[4:].isdigit())
    for step in seed_steps(1 + max(replicas, default=0)):
        path = seed_dir(run_dir, step_seed(step)) / ".pipeline" / f"{step.notebook}.time.json"
        if path.is_file():
            row = json.loads(path.read_text(encoding="utf-8"))
            if set(row) != {"step", "seconds", "started", "finished"} or row["step"] != step.name:
                raise ValueError(f"{path} is not a step timing written by the pipeline; delete it and rerun the step")
            rows.append(row)
    return rows


def _run_dir_param(run_dir: Path, root: Path) -> str:
    """The ``run_dir`` a notebook is given: relative to the repository root when the run folder lies inside
    it (so the committed notebooks show ``runs/default``, not this machine's path; see
    :func:`resolve_run_dir`)."""
    return str(run_dir.relative_to(root)) if run_dir.is_relative_to(root) else str(run_dir)


def _read(path: Path) -> str | None:
    return path.read_text().strip() if path.is_file() else None


def find_root(start: str | os.PathLike | None = None) -> Path:
    """The repository root: the nearest folder holding ``_config.yml``, ``book/_toc.yml`` and ``notebooks/``.

    Searched from ``start`` (default: the current folder) upwards, then from this package's location
    (an editable install lives in the repository)."""
    here, package = Path(start or Path.cwd()).resolve(), Path(__file__).resolve().parent
    found = checkout_root(here) or checkout_root(package)
    if found is not None:
        return found
    raise ValueError(f"no duolib repository (_config.yml, book/_toc.yml, notebooks/) above {str(here)!r} or "
                     f"{str(package)!r}; run from the repository, or give an absolute run_dir")


