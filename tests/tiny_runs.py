"""Tiny training settings shared by the test files that train on the synthetic corpus
(the `cache_dir` fixture in conftest.py prepares its token cache once a session)."""

from duolib.train.config import TrainConfig

SYNTH = {"synthetic": {"n_docs": 60}}


def tiny(cache_dir, **kw) -> TrainConfig:
    base = dict(corpus="synthetic", data=SYNTH, cache_dir=str(cache_dir), progress=False, threads=1)
    return TrainConfig.from_profile("tiny", **{**base, **kw})
