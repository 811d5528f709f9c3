"""Data: offline corpora, byte-level BPE tokenizers, memmap token caches and stateless batches.

``corpus`` (corpora, :func:`prepare`), ``tokenizer`` (BPE, token caches), ``batches`` (stateless training
batches, holdout windows), ``split`` (train / holdout split), ``run_data`` (a trained run's data with its own
tokenizer; the run folder's end-to-end check), ``clusters`` (the work or file of each holdout window),
``synthetic`` (a labelled synthetic language), ``document``.
"""

from .batches import holdout_sequences, sample_batch
from .corpus import Prepared, load_documents, prepare
from .run_data import run_data, verify_run
from .tokenizer import load_tokenizer, train_tokenizer

__all__ = ["Prepared", "holdout_sequences", "load_documents", "load_tokenizer", "prepare", "run_data",
           "sample_batch", "train_tokenizer", "verify_run"]
