"""duolib.utils threads: the measured thread-count choice, its fallback to one thread, and the settings it accepts."""

import pytest
import torch

from duolib import utils as threads
from duolib.train.config import TrainConfig


def test_calibration_keeps_more_threads_only_when_clearly_faster(monkeypatch):
    """A fake clock makes 2 threads 2x faster, then only 5% faster: 2 is kept, then 1 (the fallback)."""
    for speed, expected in ((2.0, 2), (1.05, 1)):
        now = [0.0]

        def fn():
            now[0] += 1.0 / (speed if torch.get_num_threads() == 2 else 1.0)

        monkeypatch.setattr(threads.time, "perf_counter", lambda: now[0])
        before = torch.get_num_threads()
        out = threads.calibrate_threads(fn, candidates=(1, 2), rounds=2)
        assert out["threads"] == expected and out["seconds"][1] == pytest.approx(1.0)
        assert torch.get_num_threads() == before  # restored


def test_apply_threads_settings():
    before = torch.get_num_threads()
    try:
        assert threads.apply_threads(1) == 1
        assert threads.apply_threads(None) == 1  # unchanged
        assert threads.apply_threads("auto") in threads.candidate_counts()
    finally:
        torch.set_num_threads(before)
    for bad in (0, -1, "two", True, 1.5):
        with pytest.raises(ValueError, match="positive number of threads or 'auto'"):
            threads.check_threads(bad)
    with pytest.raises(ValueError, match="threads=0"):
        TrainConfig.from_profile("tiny", threads=0).validate()
    TrainConfig.from_profile("tiny", threads="auto").validate()
