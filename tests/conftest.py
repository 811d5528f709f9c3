"""Shared test settings."""

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread avoids OpenMP oversubscription
    (measured 5-10x faster than two under contention) and keeps CPU results deterministic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """The synthetic corpus's token cache (tiny vocabulary), prepared once for every test file."""
    from duolib.data.corpus import prepare
    from tiny_runs import SYNTH

    path = tmp_path_factory.mktemp("duo_cache")
    prepare("synthetic", 512, path, synthetic=SYNTH["synthetic"], progress=False)
    return path


@pytest.fixture(scope="session")
def finished_run(cache_dir, tmp_path_factory):
    """One finished 10-step tiny run (checkpoints at 5 and 10) shared by the files that damage copies of
    it (tests/test_hostile.py, tests/test_trust.py); never changed itself."""
    from duolib.train.loop import train
    from tiny_runs import tiny

    run = tmp_path_factory.mktemp("finished") / "run"
    train(tiny(cache_dir, steps=10, eval_every=10, checkpoint_every=5), run)
    return run


# Files that run for minutes (tiny books, notebooks, many trainings) are collected first: with `make test`'s
# `-n auto --dist loadfile` the scheduler hands them out first, and the short files fill the other workers
# while they run, instead of one long file finishing alone at the end.
SLOW_FILES = ("test_pipeline.py", "test_pipeline_runs.py", "test_binder_conclusions.py", "test_readme.py",
              "test_binder.py", "test_hostile.py", "test_book_pages.py", "test_trust.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's tests stay together
