"""Running the book's notebooks: one step's papermill job (atomic output, code cells hidden by default, its
key and timing stamps written after it ran) and the scheduler that runs ready jobs side by side, each in
its own kernel process (:mod:`duolib.book.pipeline` builds the jobs from its step table)."""

from __future__ import annotations

import json
import re
import os
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from ..fileio import atomic_write_text
from .conclusions import drop_conclusion_outputs

METADATA_KEY = "duolib"
#: Cell tags that decide how a code cell shows in the book (myst-nb); a code cell of an executed notebook
#: that has none of them gets ``hide-input``: the reader sees prose, figures and tables first, and the
#: code behind a toggle.  Papermill's ``injected-parameters`` cell is removed from the page by :func:`tidy_for_book`
#: (the executed notebook keeps it: it records the run).
PRESENTATION_TAGS = ("hide-input", "remove-input", "hide-cell", "remove-cell", "hide-output", "remove-output",
                     "injected-parameters")
# Binder (the `start` script) sets this so that "Run all" in any committed chapter, whose injected
# parameters say profile="default", runs the tiny profile instead: minutes, not an hour.
PROFILE_ENV = "DUO_PROFILE"


@dataclass(frozen=True)
class Step:
    """One notebook of the book; ``needs`` are the steps whose artefacts it reads; ``alone``: nothing else
    may run beside it (it measures speed); ``first``: when ready, it starts before the other ready steps
    (a long step on the critical path, so shorter ones fill the other core beside it); ``replicate``: the
    step reads a trained model, so the pipeline runs it once per training seed (:mod:`duolib.book.seeds`);
    ``replica_params``: parameters given to the step's replicas only (e.g. to leave out sections that no claim
    reads); ``notebook``: the notebook it executes when not ``name`` (a seed's replica of a step)."""

    name: str
    needs: tuple[str, ...] = ()
    params: dict = field(default_factory=dict, hash=False, compare=False)
    alone: bool = False
    first: bool = False
    replicate: bool = False
    replica_params: dict = field(default_factory=dict, hash=False, compare=False)
    notebook: str = ""


@dataclass
class StepResult:
    name: str
    status: str  # "ran" or "cached"
    seconds: float
    output: Path


def execute_notebook(source: Path, output: Path, params: dict, key: str, root: Path) -> None:
    """papermill ``source`` -> ``output`` (atomically), run in the notebook's own folder."""
    import nbformat
    import papermill

    tmp = output.with_name(f".tmp-{output.name}")
    # The kernel inherits this process's environment: the pipeline's own parameters must win over a
    # DUO_PROFILE override, or the notebooks would write into another run folder than the stamps.
    forced = os.environ.pop(PROFILE_ENV, None)
    try:
        papermill.execute_notebook(
            str(source), str(tmp), parameters=params, kernel_name="python3", cwd=str(source.parent),
            progress_bar=False, report_mode=False,
        )
        nb = tidy_for_book(hide_code_by_default(nbformat.read(tmp, as_version=4)))
        nb.metadata[METADATA_KEY] = {"key": key, "profile": params["profile"]}
        paths = nb.metadata.get("papermill", {})  # this machine's paths -> the final names, relative where possible
        paths.update(input_path=_shown(source, root), output_path=_shown(output, root))
        nbformat.write(nb, tmp)
        os.replace(tmp, output)  # nothing half-written is ever read by the book
    finally:
        tmp.unlink(missing_ok=True)
        if forced is not None:
            os.environ[PROFILE_ENV] = forced


#: stderr lines of nested kernels (a chapter that runs its upstream chapters starts kernels of its own)
KERNEL_NOISE = re.compile(r"^.*(Kernel is running over TCP without encryption|KeyboardInterrupt caught in kernel"
                          r"|jupyter_client/connect\.py|warn\(\s*$|Message signing is disabled).*\n?", re.M)


def tidy_for_book(nb):
    """An executed notebook as the book shows it: papermill's injected parameters cell removed from the page
    (``remove-cell``; the notebook keeps it, for Binder and ``duo book``'s cache), nested kernels' stderr
    noise dropped, and the conclusions displayed for Jupyter readers dropped (the page renders that prose
    itself).  Returns ``nb`` (changed in place)."""
    for cell in nb.cells:
        tags = list(cell.metadata.get("tags", []))
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = tags + ["remove-cell"]
        if cell.cell_type == "code":
            outputs = []
            for out in cell.get("outputs", []):
                if out.get("output_type") == "stream" and out.get("name") == "stderr":
                    out["text"] = KERNEL_NOISE.sub("", out["text"])
                    if not out["text"].strip():
                        continue
                outputs.append(out)
            cell.outputs = outputs
    return drop_conclusion_outputs(nb)


def hide_code_by_default(nb):
    """Give every code cell without a presentation tag (:data:`PRESENTATION_TAGS`) the ``hide-input``
    tag; the tags a notebook sets itself are kept.  Returns ``nb`` (changed in place)."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tags = list(cell.metadata.get("tags", []))
        if not set(tags) & set(PRESENTATION_TAGS):
            cell.metadata["tags"] = tags + ["hide-input"]
    return nb


def resolve_jobs(jobs: int | str) -> int:
    """A positive number of notebooks at a time; ``"auto"``: the usable CPUs minus those busy with other work
    right now (:func:`busy_cpus`), at least 1."""
    if jobs == "auto":
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, cpus - round(busy_cpus()))
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs={jobs!r}: give a positive number of notebooks at a time or 'auto'")
    return jobs


def busy_cpus(interval: float = 1.0) -> float:
    """CPUs busy with work over the next ``interval`` seconds (Linux ``/proc/stat``); elsewhere the 1-minute
    load average.  A sample of now, not the load average: that one still counts, for a minute, work that has
    just ended (the virtualenv install that ``make book`` runs first).  Work at a raised nice level does not
    count: it yields the CPU to the notebooks."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            first = f.readline()
        time.sleep(interval)
        with open("/proc/stat", encoding="ascii") as f:
            second = f.readline()
        share = busy_share(first, second)
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return (os.cpu_count() or 1) * share  # /proc/stat's first line counts every CPU of the machine


def busy_share(first: str, second: str) -> float:
    """The share of CPU time spent on un-niced work between two samples of ``/proc/stat``'s ``cpu`` line
    (user nice system idle iowait irq softirq steal [guest guest_nice]; guest time is already in user / nice)."""
    def split(line: str) -> tuple[int, int]:
        values = [int(v) for v in line.split()[1:9]]
        return sum(values), values[1] + values[3] + values[4]  # nice, idle and iowait leave the CPU to us

    total0, free0 = split(first)
    total1, free1 = split(second)
    return min(1.0, max(0.0, 1 - (free1 - free0) / max(1, total1 - total0)))


@dataclass
class Job:
    step: Step
    source: Path
    output: Path
    params: dict
    key: str
    stamp: Path


def run_job(job: Job, root: Path) -> StepResult:
    began, start = time.time(), time.perf_counter()
    execute_notebook(job.source, job.output, job.params, job.key, root)
    seconds = time.perf_counter() - start
    job.stamp.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(job.stamp, job.key)
    timing = {"step": job.step.name, "seconds": seconds, "started": began, "finished": began + seconds}
    atomic_write_text(job.stamp.with_suffix(".time.json"), json.dumps(timing))
    return StepResult(job.step.name, "ran", seconds, job.output)


def run_jobs(todo: list[Job], jobs: int, root: Path):
    """Yield each job's result as it finishes: at most ``jobs`` at a time, each after the jobs it needs,
    ready jobs ``first`` ones first, then in list order, an ``alone`` job with nothing beside it (so, as no
    step needs a later one and no ``alone`` step is ``first``, after every job listed before it).  One job: in this process.  After a
    failure no job starts; the running ones finish, then the first error is raised."""
    if jobs == 1:
        for job in todo:
            yield run_job(job, root)
        return
    import multiprocessing

    pending, waiting_on = sorted(todo, key=lambda job: not job.step.first), {job.step.name for job in todo}
    running, error = {}, None
    with ThreadPoolExecutor(jobs) as threads:  # each thread waits on one kernel process (papermill)
        while (pending and error is None) or running:
            for job in list(pending) if error is None else []:
                blocked = any(n in waiting_on for n in job.step.needs)
                alone_now = any(j.step.alone for j in running.values())
                if blocked or alone_now or len(running) >= jobs or (job.step.alone and running):
                    continue
                pending.remove(job)
                running[threads.submit(run_in_process, job, root, multiprocessing.get_context("spawn"))] = job
            if not running:
                raise RuntimeError(f"steps {[j.step.name for j in pending]} wait on steps that will not run")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                job = running.pop(future)
                if future.exception() is not None:
                    error = error or future.exception()
                    continue
                waiting_on.discard(job.step.name)
                yield future.result()
    if error is not None:
        raise error


def run_in_process(job: Job, root: Path, context) -> StepResult:
    """:func:`run_job` in a fresh process (papermill's kernel client is not made for threads)."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(run_job, job, root).result()


def _shown(path: Path, root: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
